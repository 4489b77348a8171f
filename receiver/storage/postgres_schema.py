"""Versioned PostgreSQL schema, applied under an advisory lock.

Migration N is applied once, recorded in ``taskhook_migrations``. Several replicas starting
at once each take the same transaction-level advisory lock first: one applies what is
missing, the others wait and then find nothing left to do.
"""

from __future__ import annotations

from typing import Any

MIGRATION_LOCK = 0x7461736B686F6F6B  # "taskhook"

MIGRATIONS: tuple[str, ...] = (
    # 1: deliveries, their events and handler runs
    """
    CREATE TABLE deliveries (
        seq               BIGSERIAL PRIMARY KEY,
        id                TEXT NOT NULL UNIQUE,
        source            TEXT NOT NULL,
        kind              TEXT NOT NULL,
        received_at       DOUBLE PRECISION NOT NULL,
        headers           TEXT NOT NULL,
        body              BYTEA,
        content_type      TEXT NOT NULL DEFAULT '',
        dedup_key         TEXT NOT NULL,
        sender_delivery_id TEXT,
        task_id           TEXT,
        key_index         INTEGER,
        key_fingerprint   TEXT,
        status            TEXT NOT NULL,
        duplicate_of      TEXT,
        replayed          INTEGER NOT NULL DEFAULT 0,
        attempts          INTEGER NOT NULL DEFAULT 0,
        next_attempt_at   DOUBLE PRECISION NOT NULL DEFAULT 0,
        lease_owner       TEXT,
        lease_expires_at  DOUBLE PRECISION,
        last_error        TEXT,
        last_traceback    TEXT,
        events_derived    INTEGER NOT NULL DEFAULT 0,
        processed_at      DOUBLE PRECISION,
        updated_at        DOUBLE PRECISION
    );
    -- Dedup lives in the database, so it holds across replicas.
    CREATE UNIQUE INDEX deliveries_dedup ON deliveries(source, dedup_key)
        WHERE duplicate_of IS NULL;
    CREATE INDEX deliveries_pending ON deliveries(seq)
        WHERE status IN ('received', 'failed');
    CREATE INDEX deliveries_task ON deliveries(source, task_id, seq)
        WHERE status IN ('received', 'failed');
    CREATE INDEX deliveries_status ON deliveries(status, seq);
    CREATE INDEX deliveries_by_task ON deliveries(task_id, seq);

    CREATE TABLE events (
        event_id    TEXT PRIMARY KEY,
        name        TEXT NOT NULL,
        task_id     TEXT,
        delivery_id TEXT NOT NULL,
        payload     TEXT NOT NULL
    );
    CREATE TABLE delivery_events (
        delivery_id TEXT NOT NULL,
        position    INTEGER NOT NULL,
        event_id    TEXT NOT NULL REFERENCES events(event_id),
        PRIMARY KEY (delivery_id, position)
    );
    CREATE TABLE handler_runs (
        event_id    TEXT NOT NULL,
        handler     TEXT NOT NULL,
        delivery_id TEXT NOT NULL,
        status      TEXT NOT NULL,
        attempts    INTEGER NOT NULL DEFAULT 1,
        last_error  TEXT,
        traceback   TEXT,
        updated_at  DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (event_id, handler)
    );
    """,
    # 2: deliveries synthesized by reconciliation pollers, and where each poller got to
    """
    ALTER TABLE deliveries ADD COLUMN reconciled INTEGER NOT NULL DEFAULT 0;
    CREATE TABLE reconcile_cursors (
        source     TEXT PRIMARY KEY,
        cursor     TEXT NOT NULL,
        updated_at DOUBLE PRECISION NOT NULL
    );
    """,
)


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
