"""Versioned PostgreSQL schema, applied under an advisory lock.

Migration N is applied once, recorded in ``taskhook_migrations``. Several replicas starting
at once each take the same transaction-level advisory lock first: one applies what is
missing, the others wait and then find nothing left to do.
"""

from __future__ import annotations

from typing import Any

from receiver.storage import sqlite_schema
from receiver.storage.dialect import to_postgres

MIGRATION_LOCK = 0x7461736B686F6F6B  # "taskhook"

# The same versioned schema as SQLite's, translated (BIGSERIAL keys, DOUBLE PRECISION, BYTEA):
# one list of migrations, so the two backends cannot drift apart.
MIGRATIONS: tuple[str, ...] = tuple(to_postgres(script).sql for script in sqlite_schema.MIGRATIONS)


async def migrate(conn: Any) -> int:
    """Apply pending migrations on an asyncpg connection; return the resulting version."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK)
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS taskhook_migrations ("
            " version INTEGER PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
        )
        version = int(
            await conn.fetchval("SELECT coalesce(max(version), 0) FROM taskhook_migrations")
        )
        for number, script in enumerate(MIGRATIONS, start=1):
            if number <= version:
                continue
            await conn.execute(script)
            await conn.execute("INSERT INTO taskhook_migrations (version) VALUES ($1)", number)
            version = number
    return version
