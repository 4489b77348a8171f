"""The SQLite backend's write operations: synchronous functions the `Writer` runs inside its
group-committed transaction, on the event-loop thread (so each is a few statements).

A duplicate receipt costs its original one counter update; it is kept as a row of its own
(its own headers and time, no body) only while the original has fewer than
`max_duplicate_rows` such rows (`duplicate_rows`, which the pruner lowers as it deletes old
ones). The writer serializes every op, so reading the original's count and then updating it
cannot race here (PostgreSQL does both in one statement).
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Sequence
from typing import Any

import orjson
from sqlalchemy import TextClause

from receiver.records import (
    DeliveryOutcome,
    DeliveryRecord,
    DeliveryStatus,
    HandlerRun,
    NewDelivery,
    StoreResult,
)
from receiver.storage import queue
from receiver.storage.compiled import many, sqlite_sql
from receiver.storage.rows import (
    COLUMNS,
    INSERT_COLUMNS,
    MAX_HEADER_BYTES,
    UPSERT_RUNS,
    header_block,
    insert_params,
    row_to_record,
    run_rows,
)

_PLACEHOLDERS = ",".join("?" * (INSERT_COLUMNS.count(",") + 1))
_INSERT = (
    f"INSERT INTO deliveries ({INSERT_COLUMNS}) VALUES ({_PLACEHOLDERS}) "
    "ON CONFLICT (source, dedup_key) WHERE duplicate_of IS NULL DO NOTHING"
)
_INSERT_DUPLICATE = f"INSERT INTO deliveries ({INSERT_COLUMNS}) VALUES ({_PLACEHOLDERS})"
_FIND_ORIGINAL = (
    "SELECT seq, id, status, last_error, duplicate_rows FROM deliveries "
    "WHERE source = ? AND dedup_key = ? AND duplicate_of IS NULL"
)
_COUNT_DUPLICATE = (
    "UPDATE deliveries SET duplicate_count = duplicate_count + 1, "
    "duplicate_rows = duplicate_rows + ?, "
    "last_duplicate_at = max(coalesce(last_duplicate_at, ?), ?) WHERE seq = ?"
)
PROBE = "UPDATE taskhook_probe SET probed_at = ? WHERE id = 1"
# Room for a delivery: pages the file may have to grow by (a full disk, or max_page_count
# reached, refuses them, where rewriting the probe's one row would still fit).
_PROBE_ROOM = "INSERT INTO taskhook_probe (id, probed_at, room) VALUES (2, ?, zeroblob(8192))"
KEY = "installation_key"
READ_KEY = "SELECT value FROM taskhook_meta WHERE name = ?"
ADD_KEY = "INSERT INTO taskhook_meta (name, value) VALUES (?, ?) ON CONFLICT (name) DO NOTHING"


def store_in(
    conn: sqlite3.Connection,
    delivery: NewDelivery,
    *,
    max_duplicate_rows: int = 10,
    max_header_bytes: int = MAX_HEADER_BYTES,
) -> StoreResult:
    """Insert `delivery`, or count its duplicate receipt, inside the caller's transaction."""
    headers = header_block(delivery.headers, max_header_bytes)
    cur = conn.execute(_INSERT, insert_params(delivery, headers))
    if cur.rowcount == 1:
        if delivery.status is DeliveryStatus.RECEIVED:
            lane = delivery.task_id if delivery.task_id is not None else delivery.id
            assert cur.lastrowid is not None
            queue.enqueue_in(conn, delivery.source, lane, cur.lastrowid, delivery.received_at)
        return StoreResult(
            delivery.id, duplicate=False, status=delivery.status, error=delivery.error
        )
    seq, first_id, first_status, first_error, rows = conn.execute(
        _FIND_ORIGINAL, (delivery.source, delivery.dedup_key)
    ).fetchone()
    keep = rows < max_duplicate_rows
    at = delivery.received_at
    conn.execute(_COUNT_DUPLICATE, (int(keep), at, at, seq))
    if keep:
        conn.execute(_INSERT_DUPLICATE, insert_params(delivery, headers, duplicate_of=first_id))
    return StoreResult(
        first_id, duplicate=True, status=DeliveryStatus(first_status), error=first_error
    )


def claim(
    conn: sqlite3.Connection, *, owner: str, limit: int, now: float, lease_seconds: float
) -> list[DeliveryRecord]:
    seqs = [
        r[0] for r in conn.execute(sqlite_sql(queue.CLAIM_CANDIDATES).sql, (now, now, owner, limit))
    ]
    if not seqs:
        return []
    conn.executemany(
        sqlite_sql(queue.LEASE).sql, [(owner, now + lease_seconds, seq) for seq in seqs]
    )
    marks = ",".join("?" * len(seqs))  # a claim's limit is far under SQLite's 999 parameters
    rows = conn.execute(
        f"SELECT {COLUMNS} FROM deliveries WHERE seq IN ({marks}) ORDER BY seq", seqs
    ).fetchall()
    return [row_to_record(row) for row in rows]


def record_runs(conn: sqlite3.Connection, runs: Sequence[HandlerRun]) -> None:
    upsert = sqlite_sql(UPSERT_RUNS)
    conn.executemany(upsert.sql, many(upsert, run_rows(runs, time.time())))


def finish(outcome: DeliveryOutcome, owner: str, conn: sqlite3.Connection) -> bool:
    record_runs(conn, outcome.runs)
    return queue.finish_in(
        conn,
        delivery_id=outcome.delivery_id,
        owner=owner,
        status=outcome.status.value,
        attempts=outcome.attempts,
        next_attempt_at=outcome.next_attempt_at,
        error=outcome.error,
        traceback=outcome.traceback,
        now=time.time(),
    )


# Which of a batch's deliveries this owner still leases: the lease check of `queue.FINISH`,
# asked once for the batch (the writer runs alone, so nothing changes in between).
_HELD = (
    "SELECT d.id, d.seq, d.source, d.task_id FROM deliveries AS d "
    "JOIN dispatch_heads AS h ON h.seq = d.seq "
    "WHERE h.lease_owner = ? AND d.id IN (SELECT value FROM json_each(?))"
)
_SET_OUTCOME = (
    "UPDATE deliveries SET status = ?, attempts = ?, next_attempt_at = ?, last_error = ?, "
    "last_traceback = ?, lease_owner = NULL, lease_expires_at = NULL, "
    "processed_at = CASE WHEN ? = 'processed' THEN ? ELSE processed_at END, updated_at = ? "
    "WHERE id = ?"
)


def finish_many(
    outcomes: Sequence[DeliveryOutcome], owner: str, conn: sqlite3.Connection
) -> list[bool]:
    """`finish` of a batch with one statement per kind of change, not three per delivery."""
    record_runs(conn, [run for o in outcomes for run in o.runs])
    ids = orjson.dumps([o.delivery_id for o in outcomes]).decode()
    held = {row[0]: row[1:] for row in conn.execute(_HELD, (owner, ids))}
    now = time.time()
    counted = [o for o in outcomes if o.delivery_id in held]
    conn.executemany(_SET_OUTCOME, [
        (o.status.value, o.attempts, o.next_attempt_at, o.error, o.traceback, o.status.value,
         now, now, o.delivery_id) for o in counted
    ])  # fmt: skip
    steps: dict[TextClause, list[tuple[Any, ...]]] = {}
    for o in counted:
        seq, source, task_id = held[o.delivery_id]
        for statement, params in queue.lane_steps(
            seq, source, task_id, o.status.value, o.next_attempt_at
        ):
            steps.setdefault(statement, []).append(params)
    # Every lane's head is dequeued before any lane is promoted: as `lane_steps` in turn.
    for statement in sorted(steps, key=lambda st: st is queue.PROMOTE):
        conn.executemany(sqlite_sql(statement).sql, steps[statement])
    return [o.delivery_id in held for o in outcomes]


def requeue(delivery_id: str, now: float, conn: sqlite3.Connection) -> bool:
    """Make a delivery due again; not one whose body retention removed (nothing to run)."""
    rows = conn.execute(sqlite_sql(queue.REQUEUE_DELIVERY).sql, (now, now, delivery_id)).fetchall()
    if not rows:
        return False
    seq, source, lane = rows[0]
    queue.requeue_in(conn, seq, source, lane, now)
    return True


def beat(
    conn: sqlite3.Connection, owner_beat: tuple[str, str, int, float], lease_until: float
) -> set[int]:
    owner, host, pid, now = owner_beat
    conn.execute(sqlite_sql(queue.BEAT).sql, (owner, host, pid, now, now))
    return {r[0] for r in conn.execute(sqlite_sql(queue.RENEW).sql, (lease_until, owner))}


def probe(conn: sqlite3.Connection) -> None:
    """The readiness write (`receiver.storage.probe`); the room it checks is given back."""
    now = time.time()
    conn.execute(PROBE, (now,))
    conn.execute("SAVEPOINT room")
    conn.execute(_PROBE_ROOM, (now,))
    conn.execute("ROLLBACK TO room")
    conn.execute("RELEASE room")


def installation_key(conn: sqlite3.Connection) -> bytes:
    """This database's random key: made by the first caller, the same for every later one."""
    conn.execute(ADD_KEY, (KEY, os.urandom(32)))
    return bytes(conn.execute(READ_KEY, (KEY,)).fetchone()[0])
