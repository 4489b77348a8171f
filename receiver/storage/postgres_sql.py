"""The PostgreSQL backend's statements, and what counts as "the database is unavailable".

The queue's statements are `receiver.storage.queue`'s, translated; the store path is written
for PostgreSQL: one autocommitted statement per step, so an ack waits for one round trip and
one commit.
"""

from __future__ import annotations

import os

import asyncpg

from receiver.storage import queue
from receiver.storage.compiled import postgres_sql
from receiver.storage.rows import COLUMNS, INSERT_COLUMNS

# Plan each execution with its parameters and the table as it is now. asyncpg prepares and
# caches statements per connection, and PostgreSQL then settles on a generic plan made
# from the statistics of the moment: a claim prepared while `deliveries` was empty kept a
# plan that took seconds once the table held thousands of rows (measured).
SESSION = {"plan_cache_mode": "force_custom_plan"}


def session_settings() -> dict[str, str]:
    """SESSION, and a name telling this process's sessions apart in pg_stat_activity and
    pg_locks (which replica holds what)."""
    return SESSION | {"application_name": f"taskhook:{os.getpid()}"}


# What "the database cannot take or give data now" looks like: each is a state of the server
# or of the way to it, not of the request, and passes (a retry later can succeed), so it is
# answered 503 + Retry-After. Anything else (a syntax error, a constraint) is a bug and stays
# loud.
UNAVAILABLE: tuple[type[BaseException], ...] = (
    OSError,  # connection refused or reset
    TimeoutError,  # no connection free in time, or a statement past command_timeout
    asyncpg.PostgresConnectionError,  # 08: connection lost, refused by the server
    asyncpg.InterfaceError,  # the client's side of a connection that went away
    asyncpg.InsufficientResourcesError,  # 53: disk full, out of memory, too many connections
    asyncpg.OperatorInterventionError,  # 57: shutdown, terminated, cannot connect now
    asyncpg.ReadOnlySQLTransactionError,  # 25006: a read-only replica, or read-only by setting
    asyncpg.TransactionRollbackError,  # 40: serialization failure, deadlock: retry
    asyncpg.PostgresSystemError,  # 58: I/O error on the server
    asyncpg.IdleInTransactionSessionTimeoutError,  # 25P03: the server ended a stalled session
    asyncpg.LockNotAvailableError,  # 55P03: a lock not had within lock_timeout
    # asyncpg's own state error on a connection the server ended while it was idle, before
    # the client noticed (seen when sessions are terminated: a failover, a restart).
    asyncpg.exceptions.InternalClientError,
)

_COUNT = INSERT_COLUMNS.count(",") + 1
_PLACEHOLDERS = ",".join(f"${i}" for i in range(1, _COUNT + 1))
# One statement, autocommitted: the delivery and, when it is pending, its place in the queue
# (`queue.ENQUEUE`, whose conflict arm locks the lane's head row).
# The lane's lock is taken before the row (and its seq) exists, and held to the commit: one
# task's deliveries commit in seq order, so a head handing its task on never finds a later
# delivery committed while an earlier one is still on its way (per-task order across
# replicas).
INSERT = f"""
    WITH lane AS (
        SELECT pg_advisory_xact_lock(hashtextextended($2 || '/' || ${_COUNT + 1}, 0))
    ), ins AS (
        INSERT INTO deliveries ({INSERT_COLUMNS}) SELECT {_PLACEHOLDERS} FROM lane
        ON CONFLICT (source, dedup_key) WHERE duplicate_of IS NULL DO NOTHING
        RETURNING seq, source, status, next_attempt_at
    ), head AS (
        INSERT INTO dispatch_heads (source, lane, seq, next_attempt_at)
        SELECT source, ${_COUNT + 1}, seq, next_attempt_at FROM ins WHERE status = 'received'
        ON CONFLICT (source, lane) DO UPDATE SET seq = dispatch_heads.seq WHERE false
    )
    SELECT seq FROM ins
"""


_NAMES = [c.strip() for c in INSERT_COLUMNS.split(",")]
#: Where `insert_params` puts duplicate_of: DUPLICATE takes the other values, from $4 on.
DUPLICATE_OF = _NAMES.index("duplicate_of")
_FIRST = 4  # $1..$3: the bound on duplicate rows, the source, the dedup key
_AT = _FIRST + _NAMES.index("received_at")  # (before duplicate_of: not shifted)
# A duplicate row's values: its own, but duplicate_of the id of the original found.
_VALUES = ", ".join(
    "counted.id" if i == DUPLICATE_OF else f"${_FIRST + i - (i > DUPLICATE_OF)}"
    for i in range(len(_NAMES))
)
# A duplicate receipt, in one autocommitted statement run after the insert found the original
# (committed: the unique index waited for it). Replicas race here: the original's row lock
# (FOR UPDATE, and the UPDATE) orders them, and each reads the count the one before it left,
# so the count is exact and at most the bound of duplicate rows is kept.
DUPLICATE = f"""
    WITH original AS (
        SELECT seq, duplicate_rows < $1 AS keep FROM deliveries
        WHERE source = $2 AND dedup_key = $3 AND duplicate_of IS NULL
        FOR UPDATE
    ), counted AS (
        UPDATE deliveries AS d SET duplicate_count = d.duplicate_count + 1,
               duplicate_rows = d.duplicate_rows + CASE WHEN original.keep THEN 1 ELSE 0 END,
               last_duplicate_at = GREATEST(d.last_duplicate_at, ${_AT})
        FROM original WHERE d.seq = original.seq
        RETURNING d.id, d.status, d.last_error, original.keep
    ), kept AS (
        INSERT INTO deliveries ({INSERT_COLUMNS})
        SELECT {_VALUES} FROM counted WHERE counted.keep
    )
    SELECT id, status, last_error FROM counted
"""
CLAIM = f"""
    WITH ready AS (
        SELECT h.seq FROM dispatch_heads AS h
        WHERE h.next_attempt_at <= $1
          AND (h.lease_owner IS NULL OR (h.lease_expires_at <= $1 AND h.lease_owner <> $3))
        ORDER BY h.seq
        LIMIT $2
        FOR UPDATE SKIP LOCKED
    ), leased AS (
        UPDATE dispatch_heads AS h SET lease_owner = $3, lease_expires_at = $4
        FROM ready WHERE h.seq = ready.seq
        RETURNING h.seq
    )
    SELECT {COLUMNS} FROM deliveries WHERE seq IN (SELECT seq FROM leased) ORDER BY seq
"""
FINISH = postgres_sql(queue.FINISH_LOCKING).sql
REQUEUE = postgres_sql(queue.REQUEUE_DELIVERY).sql
GET = f"SELECT {COLUMNS} FROM deliveries WHERE id = $1"
DEAD = "SELECT id FROM deliveries WHERE status = 'dead' ORDER BY seq"
SUCCEEDED = (
    "SELECT event_id, handler FROM handler_runs WHERE status = 'ok' AND event_id = ANY($1::text[])"
)
RELEASE = (
    "UPDATE dispatch_heads SET lease_owner = NULL, lease_expires_at = NULL "
    "WHERE lease_owner = $1 AND ($2::text[] IS NULL OR seq IN "
    "(SELECT seq FROM deliveries WHERE id = ANY($2::text[])))"
)
KNOWN = (
    "SELECT dedup_key FROM deliveries WHERE source = $1 AND duplicate_of IS NULL "
    "AND dedup_key = ANY($2::text[])"
)
LOAD_CURSOR = "SELECT cursor FROM reconcile_cursors WHERE source = $1"
SAVE_CURSOR = (
    "INSERT INTO reconcile_cursors (source, cursor, updated_at) VALUES ($1,$2,$3) "
    "ON CONFLICT (source) DO UPDATE SET cursor = excluded.cursor, "
    "updated_at = excluded.updated_at"
)
PROBE = "UPDATE taskhook_probe SET probed_at = $1 WHERE id = 1"
READ_KEY = "SELECT value FROM taskhook_meta WHERE name = $1"
ADD_KEY = "INSERT INTO taskhook_meta (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING"


class Queue:
    """`queue`'s statements as SQLAlchemy compiles them for PostgreSQL."""

    requeue = postgres_sql(queue.REQUEUE).sql
    beat = postgres_sql(queue.BEAT).sql
    renew = postgres_sql(queue.RENEW).sql
    owners = postgres_sql(queue.OWNERS).sql
    release = postgres_sql(queue.RELEASE).sql
    retire = postgres_sql(queue.RETIRE).sql
    retire_if_silent = postgres_sql(queue.RETIRE_IF_SILENT).sql
