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

from receiver.records import (
    DeliveryOutcome,
    DeliveryRecord,
    DeliveryStatus,
    HandlerRun,
    NewDelivery,
    StoreResult,
)
from receiver.storage import queue
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
    seqs = [r[0] for r in conn.execute(queue.CLAIM_CANDIDATES, (now, now, owner, limit))]
    if not seqs:
        return []
    conn.executemany(queue.LEASE, [(owner, now + lease_seconds, seq) for seq in seqs])
    marks = ",".join("?" * len(seqs))  # a claim's limit is far under SQLite's 999 parameters
    rows = conn.execute(
        f"SELECT {COLUMNS} FROM deliveries WHERE seq IN ({marks}) ORDER BY seq", seqs
    ).fetchall()
    return [row_to_record(row) for row in rows]


def record_runs(conn: sqlite3.Connection, runs: Sequence[HandlerRun]) -> None:
    conn.executemany(UPSERT_RUNS, run_rows(runs, time.time()))


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


def requeue(delivery_id: str, now: float, conn: sqlite3.Connection) -> bool:
    """Make a delivery due again; not one whose body retention removed (nothing to run)."""
    rows = conn.execute(queue.REQUEUE_DELIVERY, (now, now, delivery_id)).fetchall()
    if not rows:
        return False
    seq, source, lane = rows[0]
    queue.requeue_in(conn, seq, source, lane, now)
    return True


def beat(
    conn: sqlite3.Connection, owner_beat: tuple[str, str, int, float], lease_until: float
) -> set[int]:
    owner, host, pid, now = owner_beat
    conn.execute(queue.BEAT, (owner, host, pid, now, now))
    return {r[0] for r in conn.execute(queue.RENEW, (lease_until, owner))}


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
