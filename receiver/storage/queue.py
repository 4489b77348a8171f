"""The dispatch queue: one row per task lane that has pending work, naming its head.

A lane is a task of a source (or a lone delivery that names no task). Only its head — the
earliest pending delivery — may be claimed, which is what keeps one task's deliveries in
receipt order while different tasks run concurrently. Keeping the heads in their own small
table makes a claim cost O(heads), not O(backlog): deliveries waiting behind a head in
backoff are never read by a claim (shared/PERF-NOTES.md, issue of 2026-12-01).

Who may change the table:
- the intake, when it stores a pending delivery: it becomes its lane's head if the lane has
  none (`ENQUEUE`);
- `finish`, when an attempt at a head ends: the lane goes to its earliest pending delivery
  (`PROMOTE`), which is the same one, due later, when it is to be retried;
- `requeue`, when an older delivery is pending again: it takes the lane back (`REQUEUE`).

On PostgreSQL, `ENQUEUE`'s conflict arm takes the existing head row's lock (``DO UPDATE ...
WHERE false`` locks without writing), so a head that is ending concurrently waits for the
new delivery to commit and then hands the lane to it; without the lock a delivery could
commit just after the hand-over looked for it, and its lane would have no head.

Each statement is written once, with named parameters, and compiled per dialect by
SQLAlchemy (`receiver.storage.compiled`); every name appears once, in the order callers give
values, so both drivers take the same positional arguments.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import text
from sqlalchemy.sql.elements import TextClause

from receiver.records import Owner
from receiver.storage.compiled import sqlite_sql

ENQUEUE = text(
    "INSERT INTO dispatch_heads (source, lane, seq, next_attempt_at) "
    "VALUES (:source, :lane, :seq, :due) "
    "ON CONFLICT (source, lane) DO UPDATE SET seq = dispatch_heads.seq WHERE 1 = 0"
)
PROMOTE = text(
    "INSERT INTO dispatch_heads (source, lane, seq, next_attempt_at) "
    "SELECT source, task_id, seq, next_attempt_at FROM deliveries "
    "WHERE source = :source AND task_id = :task_id AND status IN ('received', 'failed') "
    "ORDER BY seq LIMIT 1 "
    "ON CONFLICT (source, lane) DO NOTHING"
)
# An older delivery takes its lane back from a head that is not in flight; a head that is
# requeued itself (a failed delivery retried now) is due now.
REQUEUE = text(
    "INSERT INTO dispatch_heads (source, lane, seq, next_attempt_at) "
    "VALUES (:source, :lane, :seq, :due) "
    "ON CONFLICT (source, lane) DO UPDATE SET seq = excluded.seq, "
    "next_attempt_at = excluded.next_attempt_at, lease_owner = NULL, lease_expires_at = NULL "
    "WHERE dispatch_heads.lease_owner IS NULL AND dispatch_heads.seq >= excluded.seq"
)
# A delivery due again (`requeue`): never one whose attempt is in flight (its head leased),
# and not one whose body retention removed (nothing to run).
REQUEUE_DELIVERY = text("""
    UPDATE deliveries SET status = 'received', next_attempt_at = :due, attempts = 0,
           lease_owner = NULL, lease_expires_at = NULL, events_derived =
           CASE WHEN status = 'quarantined' THEN 0 ELSE events_derived END, updated_at = :now
    WHERE id = :id AND status IN ('failed', 'dead', 'quarantined') AND body IS NOT NULL
      AND NOT EXISTS (SELECT 1 FROM dispatch_heads AS h
                      WHERE h.seq = deliveries.seq AND h.lease_owner IS NOT NULL)
    RETURNING seq, source, COALESCE(task_id, id)
""")
RETRY_LATER = text(
    "UPDATE dispatch_heads SET next_attempt_at = :due, lease_owner = NULL, "
    "lease_expires_at = NULL WHERE seq = :seq"
)
DEQUEUE = text("DELETE FROM dispatch_heads WHERE seq = :seq")
# A finish counts only while its owner still holds the lease: after a takeover (or after the
# taker has finished) a stalled owner's late word changes nothing. On PostgreSQL the check
# locks the head row (`{lock}`), so a claim committing meanwhile is seen, not overwritten.
FINISH_TEMPLATE = """
    UPDATE deliveries SET status = :status, attempts = :attempts, next_attempt_at = :due,
           last_error = :error, last_traceback = :traceback, lease_owner = NULL,
           lease_expires_at = NULL,
           processed_at = CASE WHEN :status_again = 'processed' THEN :now ELSE processed_at END,
           updated_at = :now_again
    WHERE id = :id AND EXISTS (
        SELECT 1 FROM dispatch_heads AS h
        WHERE h.seq = deliveries.seq AND h.lease_owner = :owner {lock})
    RETURNING seq, source, task_id
"""
# Parameters are named once each, in the order the callers give them (positionally).
FINISH = text(FINISH_TEMPLATE.format(lock=""))
FINISH_LOCKING = text(FINISH_TEMPLATE.format(lock="FOR UPDATE"))
# Heads in receipt order (seq), as one process would take them: across tasks too, deliveries
# are applied in the order they were stored, as far as concurrency allows, and a ledger's
# cross-task rules (a unique_id handed over) depend on that. A claim reads heads only (those
# in backoff are skipped), never the deliveries waiting behind them.
CLAIM_CANDIDATES = text("""
    SELECT h.seq FROM dispatch_heads AS h
    WHERE h.next_attempt_at <= :now
      AND (h.lease_owner IS NULL OR (h.lease_expires_at <= :now_again AND h.lease_owner != :owner))
    ORDER BY h.seq
    LIMIT :limit
""")
LEASE = text(
    "UPDATE dispatch_heads SET lease_owner = :owner, lease_expires_at = :until WHERE seq = :seq"
)
RENEW = text(
    "UPDATE dispatch_heads SET lease_expires_at = :until WHERE lease_owner = :owner RETURNING seq"
)
_RELEASE = (
    "UPDATE dispatch_heads SET lease_owner = NULL, lease_expires_at = NULL "
    "WHERE lease_owner = :owner"
)
RELEASE = text(_RELEASE)
RELEASE_ONE = text(f"{_RELEASE} AND seq = (SELECT seq FROM deliveries WHERE id = :id)")
BEAT = text(
    "INSERT INTO dispatch_owners (owner, host, pid, started_at, heartbeat_at) "
    "VALUES (:owner, :host, :pid, :started_at, :heartbeat_at) "
    "ON CONFLICT (owner) DO UPDATE SET heartbeat_at = excluded.heartbeat_at"
)
OWNERS = text("SELECT owner, host, pid, heartbeat_at FROM dispatch_owners ORDER BY owner")
RETIRE = text("DELETE FROM dispatch_owners WHERE owner = :owner")
# Forget an owner found silent only if it is still as silent as it was seen: one that beat
# again meanwhile keeps its row and its leases.
RETIRE_IF_SILENT = text(
    "DELETE FROM dispatch_owners WHERE owner = :owner AND heartbeat_at = :heartbeat_at "
    "RETURNING owner"
)
BACKLOG = text("SELECT count(*) FROM deliveries WHERE status IN ('received', 'failed')")


def enqueue_in(conn: Any, source: str, lane: str, seq: int, due: float) -> None:
    """Make a newly stored pending delivery its lane's head, unless the lane has one."""
    conn.execute(sqlite_sql(ENQUEUE).sql, (source, lane, seq, due))


def finish_in(
    conn: Any,
    *,
    delivery_id: str,
    owner: str,
    status: str,
    attempts: int,
    next_attempt_at: float,
    error: str | None,
    traceback: str | None,
    now: float,
) -> bool:
    """Record how an attempt ended and move the lane on; False when another owner's lease
    stands (its attempt counts, not this one)."""
    rows = conn.execute(sqlite_sql(FINISH).sql, (
        status, attempts, next_attempt_at, error, traceback, status, now, now, delivery_id,
        owner,
    )).fetchall()  # fmt: skip
    if not rows:
        return False
    seq, source, task_id = rows[0]
    for statement, params in lane_steps(seq, source, task_id, status, next_attempt_at):
        conn.execute(sqlite_sql(statement).sql, params)
    return True


def lane_steps(
    seq: int, source: str, task_id: str | None, status: str, next_attempt_at: float
) -> list[tuple[TextClause, tuple[Any, ...]]]:
    """How a lane moves on once an attempt at its head is recorded (both backends run these).

    A lane of its own is retried later or emptied; a task's lane goes to its earliest
    pending delivery: this one again when it is to be retried, unless an older one was
    requeued meanwhile.
    """
    if task_id is None:
        if status in ("received", "failed"):
            return [(RETRY_LATER, (next_attempt_at, seq))]
        return [(DEQUEUE, (seq,))]
    return [(DEQUEUE, (seq,)), (PROMOTE, (source, task_id))]


def requeue_in(conn: Any, seq: int, source: str, lane: str, now: float) -> None:
    conn.execute(sqlite_sql(REQUEUE).sql, (source, lane, seq, now))


def release_owners_in(conn: Any, owners: list[Owner]) -> int:
    """Free every lease of `owners` (processes found silent) and forget them, each only if
    it has not beaten since it was seen."""
    released = 0
    for owner in owners:
        silent = (owner.owner, owner.heartbeat_at)
        if conn.execute(sqlite_sql(RETIRE_IF_SILENT).sql, silent).fetchall():
            released += max(0, conn.execute(sqlite_sql(RELEASE).sql, (owner.owner,)).rowcount)
    return released
