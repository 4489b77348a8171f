"""The core schema compiled from `receiver.storage.tables` against the migrated one.

A database created from ``ddl(dialect)`` must be indistinguishable, as each database
describes itself, from one brought up to date by that backend's migrations, and running the
DDL again must change nothing.

SQLite is compared through PRAGMA table_list / table_xinfo (declared type exactly, hence its
affinity too; notnull; default; pk), index_list / index_xinfo (names, columns, uniqueness,
origin, partial) plus each partial index's WHERE clause from sqlite_master with whitespace
collapsed, foreign_key_list, whether the table is AUTOINCREMENT, and each table's row count.
PostgreSQL is compared through information_schema.columns, pg_indexes (whose definitions
PostgreSQL itself canonicalises), pg_constraint, information_schema.sequences and row counts.
Normalisation on PostgreSQL: the migrations' bookkeeping tables (``taskhook_components``) are
left out; no type spelling needed normalising (both spell DOUBLE PRECISION, BYTEA, BIGSERIAL).
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import sqlalchemy as sa

from receiver.storage import sqlite_schema
from receiver.storage.postgres import PostgresStorage
from receiver.storage.tables import core_tables, ddl
from tests.pg import fresh_database

CORE = {
    "deliveries",
    "events",
    "delivery_events",
    "handler_runs",
    "reconcile_cursors",
    "dispatch_heads",
    "dispatch_owners",
    "taskhook_probe",
    "taskhook_meta",
}

# --- SQLite -------------------------------------------------------------------------------


def _connect(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(path, isolation_level=None)


def _run_ddl(path: Path, statements: list[str] | None = None) -> None:
    conn = _connect(path)
    try:
        for statement in ddl("sqlite") if statements is None else statements:
            conn.execute(statement)
    finally:
        conn.close()


def _run_migrations(path: Path) -> None:
    conn = _connect(path)
    try:
        assert sqlite_schema.migrate(conn) == len(sqlite_schema.MIGRATIONS)
    finally:
        conn.close()


def _squash(sql: str) -> str:
    sql = re.sub(r"\s+", " ", sql).strip()
    return re.sub(r"\(\s+", "(", re.sub(r"\s+([),])", r"\1", sql))


def _where(sql: str | None) -> str | None:
    match = re.search(r"\bWHERE\b(.*)$", sql or "", re.I | re.S)
    return _squash(match.group(1)) if match else None


def describe_sqlite(path: Path) -> dict[str, dict[str, Any]]:
    conn = _connect(path)
    try:
        q = conn.execute
        out: dict[str, dict[str, Any]] = {}
        for name, sql in q("SELECT name, sql FROM sqlite_master WHERE type = 'table'"):
            indexes = {}
            for _, index, unique, origin, partial in q(f'PRAGMA index_list("{name}")'):
                (index_sql,) = q(
                    "SELECT sql FROM sqlite_master WHERE name = ?", (index,)
                ).fetchone()
                keys = q(f'PRAGMA index_xinfo("{index}")').fetchall()
                indexes[index] = (unique, origin, partial, keys, _where(index_sql))
            out[name] = {
                "table": q(f'PRAGMA table_list("{name}")').fetchall(),
                "columns": q(f'PRAGMA table_xinfo("{name}")').fetchall(),
                "indexes": indexes,
                "foreign_keys": q(f'PRAGMA foreign_key_list("{name}")').fetchall(),
                "autoincrement": bool(re.search(r"\bAUTOINCREMENT\b", sql, re.I)),
                "rows": q(f'SELECT count(*) FROM "{name}"').fetchone()[0],  # noqa: S608
            }
        return out
    finally:
        conn.close()


def _schema_version(path: Path) -> tuple[int, list[tuple[Any, ...]]]:
    conn = _connect(path)
    try:
        version = conn.execute("PRAGMA schema_version").fetchone()[0]
        return version, conn.execute("SELECT * FROM sqlite_master ORDER BY name").fetchall()
    finally:
        conn.close()


@pytest.fixture
def compiled_db(tmp_path: Path) -> Path:
    path = tmp_path / "compiled.db"
    _run_ddl(path)
    return path


@pytest.fixture
def migrated_db(tmp_path: Path) -> Path:
    path = tmp_path / "migrated.db"
    _run_migrations(path)
    return path


def test_sqlite_compiled_schema_is_the_migrated_schema(
    compiled_db: Path, migrated_db: Path
) -> None:
    compiled, migrated = describe_sqlite(compiled_db), describe_sqlite(migrated_db)
    assert set(migrated) == CORE | {"sqlite_sequence"}
    assert set(compiled) == set(migrated)
    for name in sorted(migrated):
        assert compiled[name] == migrated[name], name
    assert migrated["deliveries"]["autoincrement"]
    assert migrated["taskhook_probe"]["rows"] == 1
    assert sum(1 for i in migrated["deliveries"]["indexes"].values() if i[2]) == 5  # partial


@pytest.mark.parametrize(
    ("before", "after"),
    [
        (" WHERE duplicate_of IS NULL", ""),  # a partial index made total
        ("'received', 'failed'", "'received'"),  # a partial index's predicate changed
        ("attempts INTEGER DEFAULT 1", "attempts INTEGER DEFAULT 2"),
        ("event_id TEXT, ", "event_id TEXT NOT NULL, "),
        (" AUTOINCREMENT", ""),
        ("received_at REAL", "received_at FLOAT"),  # same affinity, another declared type
        ("CREATE UNIQUE INDEX IF NOT EXISTS dispatch_heads_seq", "CREATE INDEX dispatch_heads_seq"),
        ("FOREIGN KEY(event_id) REFERENCES events (event_id)", "UNIQUE (event_id)"),
    ],
)
def test_sqlite_comparison_notices_a_difference(
    tmp_path: Path, migrated_db: Path, before: str, after: str
) -> None:
    statements = ddl("sqlite")
    changed = [s.replace(before, after, 1) for s in statements]
    assert changed != statements, "the mutation must apply"
    _run_ddl(tmp_path / "mutated.db", changed)
    assert describe_sqlite(tmp_path / "mutated.db") != describe_sqlite(migrated_db)


def test_sqlite_ddl_twice_is_a_no_op(compiled_db: Path, migrated_db: Path) -> None:
    for path in (compiled_db, migrated_db):  # again, and over the migrated schema
        before, described = _schema_version(path), describe_sqlite(path)
        _run_ddl(path)
        assert _schema_version(path) == before
        assert describe_sqlite(path) == described


def _insert_deliveries(path: Path) -> tuple[list[int], dict[str, Any]]:
    deliveries = core_tables().deliveries
    engine = sa.create_engine(f"sqlite:///{path}")
    try:
        with engine.begin() as conn:

            def insert(n: int) -> int:
                row = {"id": f"d{n}", "source": "s", "kind": "k", "received_at": 1.5}
                row |= {"headers": "{}", "dedup_key": f"k{n}", "status": "received"}
                stmt = sa.insert(deliveries).values(row).returning(deliveries.c.seq)
                return int(conn.execute(stmt).scalar_one())

            seqs = [insert(1), insert(2)]
            conn.execute(sa.delete(deliveries).where(deliveries.c.seq == seqs[-1]))
            seqs.append(insert(3))  # AUTOINCREMENT: the deleted highest seq is not reused
            first = conn.execute(sa.select(deliveries).where(deliveries.c.seq == seqs[0]))
            return seqs, dict(first.mappings().one())
    finally:
        engine.dispose()


def test_sqlite_insert_returns_autoincrementing_seq(compiled_db: Path, migrated_db: Path) -> None:
    seqs, row = _insert_deliveries(compiled_db)
    assert seqs == [1, 2, 3]
    assert row["content_type"] == "" and row["attempts"] == 0 and row["next_attempt_at"] == 0
    assert _insert_deliveries(migrated_db) == (seqs, row)  # same defaults, same sequence


# --- PostgreSQL ---------------------------------------------------------------------------

BOOKKEEPING = {"taskhook_migrations", "taskhook_components"}

_PG_QUERIES = {
    "columns": """
        SELECT table_name, ordinal_position, column_name, data_type, udt_name, is_nullable,
               column_default, numeric_precision, is_identity
        FROM information_schema.columns WHERE table_schema = 'public'""",
    "indexes": "SELECT tablename, indexname, indexdef FROM pg_indexes WHERE schemaname = 'public'",
    "constraints": """
        SELECT c.relname, k.conname, k.contype::text, pg_get_constraintdef(k.oid)
        FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid
        JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'public'""",
    "sequences": """
        SELECT sequence_name, data_type, start_value, increment
        FROM information_schema.sequences WHERE sequence_schema = 'public'""",
    "relations": """
        SELECT c.relname, c.relkind::text FROM pg_class c
        JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'public'""",
}


async def describe_pg(url: str) -> dict[str, Any]:
    conn = await asyncpg.connect(url)
    try:
        out: dict[str, Any] = {}
        for key, sql in _PG_QUERIES.items():
            rows = [tuple(r) for r in await conn.fetch(sql)]
            out[key] = sorted(r for r in rows if not str(r[0]).startswith(tuple(BOOKKEEPING)))
        tables = {r[0] for r in out["relations"] if r[1] == "r"}
        count = 'SELECT count(*) FROM "{}"'  # table names from the catalog
        out["rows"] = {t: await conn.fetchval(count.format(t)) for t in tables}
        out["probe"] = [tuple(r) for r in await conn.fetch("SELECT * FROM taskhook_probe")]
        out["serial"] = await conn.fetchval("SELECT pg_get_serial_sequence('deliveries', 'seq')")
        return out
    finally:
        await conn.close()


async def _pg_run_ddl(url: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        async with conn.transaction():
            for statement in ddl("postgresql"):
                await conn.execute(statement)
    finally:
        await conn.close()


async def _pg_migrate(url: str) -> None:
    """The schema as the backend makes it: the core's history (`core_schema`)."""
    storage = PostgresStorage(url)
    await storage.open()
    try:
        assert storage.versions == {"core": 1}
    finally:
        await storage.close()


@pytest.fixture
def other_pg_url() -> Iterator[str]:
    with fresh_database() as url:
        yield url


async def test_postgres_compiled_schema_is_the_migrated_schema(
    pg_url: str, other_pg_url: str
) -> None:
    await _pg_run_ddl(pg_url)
    await _pg_migrate(other_pg_url)
    compiled, migrated = await describe_pg(pg_url), await describe_pg(other_pg_url)
    assert set(migrated["rows"]) == CORE
    for key in migrated:
        assert compiled[key] == migrated[key], key
    assert migrated["probe"] == [(1, 0.0, None)]
    assert migrated["serial"] == "public.deliveries_seq_seq"
    assert sum(" WHERE " in r[2] for r in migrated["indexes"]) == 6  # partial (dedup: unique)

    for url in (pg_url, other_pg_url):  # again, and over the migrated schema
        described = await describe_pg(url)
        await _pg_run_ddl(url)
        assert await describe_pg(url) == described
