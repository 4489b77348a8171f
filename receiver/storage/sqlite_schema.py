"""The SQLite schema of earlier releases: migration N brought ``PRAGMA user_version`` from
N-1 to N. Version 4 is the schema `tables` describes (the core's history, `core_schema`,
starts there); a database of an older release is brought to it by these scripts first."""

from __future__ import annotations

import sqlite3

MIGRATIONS: tuple[str, ...] = (
    # 1: deliveries, their events and handler runs
    """
    CREATE TABLE deliveries (
        seq               INTEGER PRIMARY KEY AUTOINCREMENT,
        id                TEXT NOT NULL UNIQUE,
        source            TEXT NOT NULL,
        kind              TEXT NOT NULL,
        received_at       REAL NOT NULL,
        headers           TEXT NOT NULL,
        body              BLOB,
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
        next_attempt_at   REAL NOT NULL DEFAULT 0,
        lease_owner       TEXT,
        lease_expires_at  REAL,
        last_error        TEXT,
        last_traceback    TEXT,
        events_derived    INTEGER NOT NULL DEFAULT 0,
        processed_at      REAL,
        updated_at        REAL
    );
    -- Dedup lives in the database: one original per (source, dedup_key), and duplicates are
    -- recorded as their own rows pointing at it.
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
    -- An event id can come from several deliveries (an audit repeated by later snapshots).
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
        updated_at  REAL NOT NULL,
        PRIMARY KEY (event_id, handler)
    );
    """,
    # 2: deliveries synthesized by reconciliation pollers, and where each poller got to
    """
    ALTER TABLE deliveries ADD COLUMN reconciled INTEGER NOT NULL DEFAULT 0;
    CREATE TABLE reconcile_cursors (
        source     TEXT PRIMARY KEY,
        cursor     TEXT NOT NULL,
        updated_at REAL NOT NULL
    );
    """,
    # 3: the dispatch queue as a table of task heads (claims cost O(batch), not O(backlog)),
    # the dispatching processes' heartbeats (fast takeover), and operator actions as deliveries.
    """
    ALTER TABLE deliveries ADD COLUMN operator TEXT;
    CREATE TABLE dispatch_heads (
        source           TEXT NOT NULL,
        lane             TEXT NOT NULL,
        seq              BIGINT NOT NULL,
        next_attempt_at  REAL NOT NULL,
        lease_owner      TEXT,
        lease_expires_at REAL,
        PRIMARY KEY (source, lane)
    );
    CREATE UNIQUE INDEX dispatch_heads_seq ON dispatch_heads(seq);
    CREATE INDEX dispatch_heads_due ON dispatch_heads(next_attempt_at, seq);
    CREATE INDEX dispatch_heads_owner ON dispatch_heads(lease_owner)
        WHERE lease_owner IS NOT NULL;
    INSERT INTO dispatch_heads (source, lane, seq, next_attempt_at)
        SELECT d.source, COALESCE(d.task_id, d.id), d.seq, d.next_attempt_at
        FROM deliveries AS d
        WHERE d.status IN ('received', 'failed') AND NOT EXISTS (
            SELECT 1 FROM deliveries AS e
            WHERE e.source = d.source AND e.task_id = d.task_id AND e.seq < d.seq
              AND e.status IN ('received', 'failed'));
    CREATE TABLE dispatch_owners (
        owner        TEXT PRIMARY KEY,
        host         TEXT NOT NULL,
        pid          INTEGER NOT NULL,
        started_at   REAL NOT NULL,
        heartbeat_at REAL NOT NULL
    );
    """,
    # 4: bounded growth and truthful readiness. A duplicate receipt is counted on its original
    # (rows of its own only up to `retention.max_duplicate_rows`, `duplicate_rows` of them
    # kept now); the pruner finds bodies it may remove, and old duplicate rows, through
    # partial indexes that a new pending delivery (the intake's insert) never enters; /readyz
    # writes the one-row probe table; the installation's own values (its random key) live in
    # taskhook_meta.
    """
    ALTER TABLE deliveries ADD COLUMN duplicate_count INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE deliveries ADD COLUMN last_duplicate_at REAL;
    ALTER TABLE deliveries ADD COLUMN duplicate_rows INTEGER NOT NULL DEFAULT 0;
    UPDATE deliveries SET duplicate_count = agg.n, duplicate_rows = agg.n,
           last_duplicate_at = agg.last
    FROM (SELECT duplicate_of AS original, count(*) AS n, max(received_at) AS last
          FROM deliveries WHERE duplicate_of IS NOT NULL GROUP BY duplicate_of) AS agg
    WHERE deliveries.id = agg.original;
    CREATE INDEX deliveries_prunable ON deliveries(status, updated_at, seq)
        WHERE body IS NOT NULL AND status IN ('processed', 'dead', 'quarantined');
    CREATE INDEX deliveries_duplicates ON deliveries(status, received_at, seq)
        WHERE status = 'duplicate';
    CREATE TABLE taskhook_probe (
        id        INTEGER PRIMARY KEY,
        probed_at REAL NOT NULL,
        room      BLOB
    );
    INSERT INTO taskhook_probe (id, probed_at) VALUES (1, 0);
    CREATE TABLE taskhook_meta (
        name  TEXT PRIMARY KEY,
        value BLOB NOT NULL
    );
    """,
)


def migrate(conn: sqlite3.Connection) -> int:
    """Apply pending migrations in one exclusive transaction; return the resulting version."""
    conn.execute("BEGIN EXCLUSIVE")
    try:
        version = int(conn.execute("PRAGMA user_version").fetchone()[0])
        for number, script in enumerate(MIGRATIONS, start=1):
            if number <= version:
                continue
            for statement in script.split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute(f"PRAGMA user_version={number}")
            version = number
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return version


def upgrade_legacy(conn: sqlite3.Connection) -> None:
    """Bring a database of a release before the previous one to version 4 (the schema
    `core_schema` adopts); a new database is left to `core_schema`."""
    version = int(conn.execute("PRAGMA user_version").fetchone()[0])
    if 0 < version < len(MIGRATIONS):
        migrate(conn)
