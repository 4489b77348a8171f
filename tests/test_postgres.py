"""The PostgreSQL backend's own parts: migrations under concurrency, `taskhook migrate`, and
statements compiled for each dialect by SQLAlchemy (known answers)."""

from __future__ import annotations

import asyncio
import re
import subprocess
from pathlib import Path

import pytest
from sqlalchemy import text

from receiver.storage.compiled import for_dialect
from receiver.storage.postgres import PostgresStorage
from tests.pg import fetch
from tests.test_cli import TASKHOOK, clean_env


async def test_replicas_starting_at_once_migrate_once(pg_url: str) -> None:
    storages = [PostgresStorage(pg_url) for _ in range(6)]
    await asyncio.gather(*(s.open() for s in storages))  # none fails on a race
    versions = text("SELECT component, version FROM taskhook_components ORDER BY 1")
    try:
        assert [tuple(r) for r in await storages[0].query(versions)] == [("core", 1)]
        before = await storages[0].query(text("SELECT updated_at FROM taskhook_components"))
        await storages[1].open()  # and again later: nothing left to do
        after = await storages[0].query(text("SELECT updated_at FROM taskhook_components"))
        assert before == after
    finally:
        await asyncio.gather(*(s.close() for s in storages))


def test_taskhook_migrate_creates_every_table(tmp_path: Path, pg_url: str) -> None:
    config = tmp_path / "taskhook.toml"
    config.write_text(
        f'entry_points = false\nhandlers = ["handlers.ledger"]\n[database]\nurl = "{pg_url}"\n'
    )
    done = subprocess.run([*TASKHOOK, "migrate", "--config", str(config)], env=clean_env(),
                          capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "schema up to date" in done.stdout and "@" not in done.stdout
    tables = {r[0] for r in fetch(pg_url, "SELECT tablename FROM pg_tables")}
    assert {"deliveries", "events", "handler_runs", "reconcile_cursors", "ledger_tasks",
            "ledger_history", "ledger_counts", "taskhook_components",
            "taskhook_series", "ui_revoked_sessions"} <= tables  # fmt: skip
    versions = dict(fetch(pg_url, "SELECT component, version FROM taskhook_components"))
    assert versions == {"core": 1, "ledger": 3, "series": 1, "ui": 1}


@pytest.mark.parametrize(
    ("source", "sqlite", "postgres"),
    [
        # What a regular-expression translation got wrong: a parameter mark in a comment, a
        # type name in a string literal, casts. The library's compiler knows the grammar.
        ("SELECT a FROM t -- is it? no\nWHERE b = :b AND c = :c",
         "SELECT a FROM t -- is it? no\nWHERE b = ? AND c = ?",
         "SELECT a FROM t -- is it? no\nWHERE b = $1 AND c = $2"),
        ("SELECT 'REAL ?' FROM t WHERE a = :a", "SELECT 'REAL ?' FROM t WHERE a = ?",
         "SELECT 'REAL ?' FROM t WHERE a = $1"),
        ("INSERT INTO t (a) VALUES (:a) ON CONFLICT DO NOTHING RETURNING a",
         "INSERT INTO t (a) VALUES (?) ON CONFLICT DO NOTHING RETURNING a",
         "INSERT INTO t (a) VALUES ($1) ON CONFLICT DO NOTHING RETURNING a"),
        ("UPDATE t SET a = :x WHERE b = :y OR c = :x", "UPDATE t SET a = ? WHERE b = ? OR c = ?",
         "UPDATE t SET a = $1 WHERE b = $2 OR c = $1"),
    ],
)  # fmt: skip
def test_statements_compile_per_dialect(source: str, sqlite: str, postgres: str) -> None:
    statement = text(source)
    lite, pg = for_dialect("sqlite", statement), for_dialect("postgresql", statement)
    assert (lite.sql, pg.sql) == (sqlite, postgres)
    params = {"a": 1, "b": 2, "c": 3, "x": 4, "y": 5}
    named = re.findall(r"(?<!:):(\w+)", source)
    assert lite.args(params) == [params[n] for n in named]  # each mark, in order
    assert pg.args(params) == [params[n] for n in dict.fromkeys(named)]  # each $n once


def test_rebuild_on_postgres_equals_the_live_ledger(tmp_path: Path, pg_url: str) -> None:
    from tests.test_replay import cli, produce, write_config

    config = write_config(tmp_path, "prod")
    config.write_text(
        config.read_text().replace(f'url = "sqlite:///{tmp_path / "prod"}.db"', f'url = "{pg_url}"')
    )
    assert pg_url in config.read_text()
    produce(config)
    tasks = ("SELECT task_id, status, unique_id, customer_review_status, task, response, audits, "
             "created_at FROM ledger_tasks ORDER BY task_id")  # fmt: skip
    history = (
        "SELECT task_id, kind, name, event_id, detail FROM ledger_history ORDER BY task_id, seq"
    )
    live = fetch(pg_url, tasks), fetch(pg_url, history)
    assert len(live[0]) == 6
    done = cli(config, "rebuild")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "rebuilt: 10 deliveries" in done.stdout
    assert (fetch(pg_url, tasks), fetch(pg_url, history)) == live
