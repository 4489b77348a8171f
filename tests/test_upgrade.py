"""A database made by the previous release is upgraded in place and keeps its data.

The previous release's schema is built here from its own DDL (the core's `taskhook_migrations`
/ ``user_version`` 4, the ledger's tables created IF NOT EXISTS with a global generation row);
the app then opens it: the core is adopted at version 1, the ledger migrates to version 3
(per-filter counts seeded from the tasks it has, completed_at filled in), and what was there
is still served.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from receiver.storage import sqlite_schema
from receiver.storage.sqlite import sqlite_path
from receiver.storage.tables import ddl
from tests.conftest import BACKENDS, READ_KEY, AppFactory, client_for
from tests.pg import fetch

# handlers/ledger/store.py's SCHEMA in the previous release (SQLite dialect).
OLD_LEDGER = """
CREATE TABLE IF NOT EXISTS ledger_tasks (
    task_id TEXT PRIMARY KEY, source TEXT NOT NULL, status TEXT NOT NULL, type TEXT,
    project TEXT, batch TEXT, unique_id TEXT, claimed_unique_id TEXT,
    customer_review_status TEXT, created_at TEXT NOT NULL, updated_at TEXT, task TEXT NOT NULL,
    response TEXT, version TEXT NOT NULL, audits TEXT NOT NULL, last_delivery_id TEXT,
    ledger_updated_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS ledger_tasks_status ON ledger_tasks(status, created_at, task_id);
CREATE INDEX IF NOT EXISTS ledger_tasks_last_delivery ON ledger_tasks(last_delivery_id);
CREATE TABLE IF NOT EXISTS ledger_task_tags (
    tag TEXT NOT NULL, created_at TEXT NOT NULL, task_id TEXT NOT NULL,
    PRIMARY KEY (tag, created_at, task_id)
);
CREATE TABLE IF NOT EXISTS ledger_unique_ids (
    unique_id TEXT PRIMARY KEY, task_id TEXT NOT NULL, bound_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS ledger_history (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, task_id TEXT NOT NULL, delivery_id TEXT,
    kind TEXT NOT NULL, name TEXT, event_id TEXT, detail TEXT NOT NULL, at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS ledger_meta (
    id INTEGER PRIMARY KEY CHECK (id = 1), generation INTEGER NOT NULL
);
INSERT INTO ledger_meta (id, generation) VALUES (1, 7) ON CONFLICT DO NOTHING
"""
# The same, as the previous release ran it on PostgreSQL.
OLD_LEDGER_PG = OLD_LEDGER.replace(
    "INTEGER PRIMARY KEY AUTOINCREMENT", "BIGSERIAL PRIMARY KEY"
).replace("REAL", "DOUBLE PRECISION")
TASK = {"task_id": "old-1", "status": "completed", "type": "imageannotation", "project": "p1",
        "created_at": "2024-01-02T03:04:05Z", "tags": ["t1"], "unique_id": "u-1",
        "completed_at": "2024-01-02T05:00:00Z"}  # fmt: skip
DELIVERY = ("dlv_old", "refonte", "refonte", 1.7e9, "{}", b'{"old": true}', "application/json",
            "k-old", "old-1", "processed", 1)  # fmt: skip
TASK_ROW = ("old-1", "refonte", "completed", "imageannotation", "p1", None, "u-1", None, None,
            "2024-01-02T03:04:05.000000Z", None, json.dumps(TASK), "null",
            '{"updated_at": null, "audit_count": 0, "newest_audit": null, '
            '"completed_at": null, "status": "completed"}', "[]", "dlv_old", 1.7e9)  # fmt: skip
INSERT_DELIVERY = (
    "INSERT INTO deliveries (id, source, kind, received_at, headers, body, content_type, "
    "dedup_key, task_id, status, events_derived) VALUES ({})"
)
INSERT_TASK = "INSERT INTO ledger_tasks VALUES ({})"


def _statements(script: str) -> list[str]:
    return [s for s in script.split(";") if s.strip()]


def old_sqlite(url: str) -> None:
    conn = sqlite3.connect(sqlite_path(url), isolation_level=None)
    try:
        sqlite_schema.migrate(conn)  # the core: user_version 4
        for statement in _statements(OLD_LEDGER):
            conn.execute(statement)
        conn.execute(INSERT_DELIVERY.format(",".join("?" * len(DELIVERY))), DELIVERY)
        conn.execute(INSERT_TASK.format(",".join("?" * len(TASK_ROW))), TASK_ROW)
        conn.execute("INSERT INTO ledger_unique_ids VALUES ('u-1', 'old-1', 1.7e9)")
        conn.execute("INSERT INTO ledger_task_tags VALUES ('t1', ?, 'old-1')", (TASK_ROW[9],))
    finally:
        conn.close()


async def old_postgres(url: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        # The core as the previous release left it: its tables (identical to `tables`' by
        # tests/test_tables.py) and its migration record at version 4.
        for statement in ddl("postgresql", if_not_exists=False):
            await conn.execute(statement)
        await conn.execute(
            "CREATE TABLE taskhook_migrations (version INTEGER PRIMARY KEY, "
            "applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
        )
        await conn.execute("INSERT INTO taskhook_migrations (version) VALUES (1), (2), (3), (4)")
        for statement in _statements(OLD_LEDGER_PG):
            await conn.execute(statement)
        marks = ",".join(f"${i}" for i in range(1, len(DELIVERY) + 1))
        await conn.execute(INSERT_DELIVERY.format(marks), *DELIVERY)
        marks = ",".join(f"${i}" for i in range(1, len(TASK_ROW) + 1))
        await conn.execute(INSERT_TASK.format(marks), *TASK_ROW)
        await conn.execute("INSERT INTO ledger_unique_ids VALUES ('u-1', 'old-1', 1.7e9)")
        await conn.execute("INSERT INTO ledger_task_tags VALUES ('t1', $1, 'old-1')", TASK_ROW[9])
    finally:
        await conn.close()


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture
def previous_release(db_url: str) -> str:
    if db_url.startswith("sqlite:"):
        old_sqlite(db_url)
    else:
        asyncio.run(old_postgres(db_url))
    return db_url


def tables(url: str) -> set[Any]:
    if url.startswith("sqlite:"):
        return {r[0] for r in fetch(url, "SELECT name FROM sqlite_master WHERE type = 'table'")}
    return {r[0] for r in fetch(url, "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}


def test_a_previous_release_database_upgrades_and_keeps_its_data(
    previous_release: str, build_app: AppFactory
) -> None:
    url = previous_release

    async def serve() -> None:
        app = build_app(handlers=["handlers.ledger"])
        async with app.started(), client_for(app) as client:
            auth = {"authorization": f"Bearer {READ_KEY}"}
            shown = (await client.get("/v1/task/old-1", headers=auth)).json()
            assert (shown["status"], shown["unique_id"]) == ("completed", "u-1")
            path = "/v1/tasks?project=p1&status=completed"
            listed = (await client.get(path, headers=auth)).json()
            assert listed["total"] == 1 and [d["task_id"] for d in listed["docs"]] == ["old-1"]
            tagged = (await client.get("/v1/tasks?tag=t1", headers=auth)).json()
            assert tagged["total"] == 1
            path = "/v1/tasks?project=p1&completed_after=2024-01-02 04:00:00.000000"
            assert (await client.get(path, headers=auth)).json()["total"] == 1
            old = await app.storage.get_delivery("dlv_old")
            assert old is not None and old.body == b'{"old": true}' and old.events_derived

    async def reopen() -> None:
        async with build_app(handlers=["handlers.ledger"]).started():
            pass

    asyncio.run(serve())
    versions = dict(fetch(url, "SELECT component, version FROM taskhook_components"))
    assert versions == {"core": 1, "ledger": 3, "series": 1, "ui": 1}
    # Version 3's column, filled from each task's own snapshot.
    assert fetch(url, "SELECT completed_at FROM ledger_tasks") == [("2024-01-02T05:00:00.000000Z",)]
    assert "ledger_meta" not in tables(url) and "ledger_counts" in tables(url)
    assert fetch(url, "SELECT status, project, n FROM ledger_counts") == [("completed", "p1", 1)]
    # Opening it again changes nothing.
    asyncio.run(reopen())
    assert dict(fetch(url, "SELECT component, version FROM taskhook_components")) == versions


async def test_a_database_newer_than_this_release_is_refused(
    db_url: str, build_app: AppFactory, tmp_path: Path
) -> None:
    async with build_app(handlers=["handlers.ledger"]).started():
        pass
    statement = "UPDATE taskhook_components SET version = 99 WHERE component = 'ledger'"
    if db_url.startswith("sqlite:"):
        with sqlite3.connect(sqlite_path(db_url)) as conn:
            conn.execute(statement)
    else:
        conn = await asyncpg.connect(db_url)
        await conn.execute(statement)
        await conn.close()
    with pytest.raises(Exception, match="version 99, newer than this release knows"):
        async with build_app(handlers=["handlers.ledger"]).started():
            pass
