"""The PostgreSQL backend's own parts: migrations under concurrency, `taskhook migrate`, and
the SQLite-dialect translation plugins rely on (known answers)."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

import pytest

from receiver.storage.dialect import to_postgres
from receiver.storage.postgres import PostgresStorage
from receiver.storage.postgres_schema import MIGRATIONS
from tests.pg import fetch
from tests.test_cli import TASKHOOK, clean_env


async def test_replicas_starting_at_once_migrate_once(pg_url: str) -> None:
    storages = [PostgresStorage(pg_url) for _ in range(6)]
    await asyncio.gather(*(s.open() for s in storages))  # none fails on a race
    try:
        rows = await storages[0].query("SELECT version FROM taskhook_migrations ORDER BY 1")
        assert [r[0] for r in rows] == list(range(1, len(MIGRATIONS) + 1))
        await storages[1].open()  # and again later: nothing left to do
        rows = await storages[0].query("SELECT count(*) FROM taskhook_migrations")
        assert rows[0][0] == len(MIGRATIONS)
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
            "ledger_history", "taskhook_migrations"} <= tables  # fmt: skip


@pytest.mark.parametrize(
    ("sqlite", "postgres", "names"),
    [
        ("SELECT a FROM t WHERE b = ? AND c = ?", "SELECT a FROM t WHERE b = $1 AND c = $2", ()),
        ("INSERT OR IGNORE INTO t (a) VALUES (?)",
         "INSERT INTO t (a) VALUES ($1) ON CONFLICT DO NOTHING", ()),
        ("UPDATE t SET a = :x WHERE b = :y OR c = :x", "UPDATE t SET a = $1 WHERE b = $2 OR c = $1",
         ("x", "y")),
        ("SELECT '?:not' FROM t WHERE a = ?", "SELECT '?:not' FROM t WHERE a = $1", ()),
        ("SELECT a::text FROM t WHERE b = ?", "SELECT a::text FROM t WHERE b = $1", ()),
        ("CREATE TABLE t (seq INTEGER PRIMARY KEY AUTOINCREMENT, at REAL, b BLOB)",
         "CREATE TABLE t (seq BIGSERIAL PRIMARY KEY, at DOUBLE PRECISION, b BYTEA)", ()),
        ("SELECT real_name FROM t", "SELECT real_name FROM t", ()),
    ],
)  # fmt: skip
def test_sqlite_dialect_known_answers(sqlite: str, postgres: str, names: tuple[str, ...]) -> None:
    translated = to_postgres(sqlite)
    assert translated.sql == postgres
    assert translated.names == names
    assert translated.args({"x": 1, "y": 2} if names else [7]) == ([1, 2] if names else [7])


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
