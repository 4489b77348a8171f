"""Finishing a batch of attempts on PostgreSQL in a few statements, not three per delivery.

The same rules as `queue.finish_in` (a finish counts only while its owner holds the lease,
then the lane moves on: `queue.lane_steps`), set-based over arrays: one UPDATE for the
deliveries, one DELETE for their heads, one INSERT promoting each task lane's next pending
delivery, one UPDATE for lone lanes to be retried.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from receiver.records import DeliveryOutcome
from receiver.storage.postgres_tx import record_runs

# The heads are locked (FOR UPDATE) before the check, as `postgres_sql.FINISH` does: a claim
# committing meanwhile is seen, not overwritten.
_FINISH = """
    WITH o AS (
        SELECT * FROM unnest($1::text[], $2::text[], $3::int[], $4::float8[], $5::text[],
                             $6::text[]) AS o(id, status, attempts, due, error, tb)
    ), held AS (
        SELECT h.seq FROM dispatch_heads AS h JOIN deliveries AS d ON d.seq = h.seq
        JOIN o ON o.id = d.id
        WHERE h.lease_owner = $7
        ORDER BY h.seq
        FOR UPDATE OF h
    )
    UPDATE deliveries AS d SET status = o.status, attempts = o.attempts,
           next_attempt_at = o.due, last_error = o.error, last_traceback = o.tb,
           lease_owner = NULL, lease_expires_at = NULL,
           processed_at = CASE WHEN o.status = 'processed' THEN $8 ELSE d.processed_at END,
           updated_at = $8
    FROM o, held WHERE d.id = o.id AND d.seq = held.seq
    RETURNING d.id, d.seq, d.source, d.task_id, d.status, d.next_attempt_at
"""
_DEQUEUE = "DELETE FROM dispatch_heads WHERE seq = ANY($1::bigint[])"
_PROMOTE = """
    INSERT INTO dispatch_heads (source, lane, seq, next_attempt_at)
    SELECT DISTINCT ON (d.source, d.task_id) d.source, d.task_id, d.seq, d.next_attempt_at
    FROM deliveries AS d
    JOIN unnest($1::text[], $2::text[]) AS l(source, task_id)
      ON d.source = l.source AND d.task_id = l.task_id
    WHERE d.status IN ('received', 'failed')
    ORDER BY d.source, d.task_id, d.seq
    ON CONFLICT (source, lane) DO NOTHING
"""
_RETRY_LATER = """
    UPDATE dispatch_heads AS h SET next_attempt_at = r.due, lease_owner = NULL,
           lease_expires_at = NULL
    FROM unnest($1::bigint[], $2::float8[]) AS r(seq, due) WHERE h.seq = r.seq
"""


async def finish_all(conn: Any, outcomes: Sequence[DeliveryOutcome], *, owner: str) -> list[bool]:
    """Record each outcome (in the caller's transaction); whether each counted."""
    if not outcomes:
        return []
    await record_runs(conn, [run for o in outcomes for run in o.runs])
    now = time.time()
    rows = await conn.fetch(
        _FINISH,
        [o.delivery_id for o in outcomes],
        [o.status.value for o in outcomes],
        [o.attempts for o in outcomes],
        [o.next_attempt_at for o in outcomes],
        [o.error for o in outcomes],
        [o.traceback for o in outcomes],
        owner,
        now,
    )
    counted = {row[0] for row in rows}
    dequeue: list[int] = []
    lanes: list[tuple[str, str]] = []
    retry: list[tuple[int, float]] = []
    for _, seq, source, task_id, status, due in rows:
        if task_id is None and status in ("received", "failed"):
            retry.append((seq, due))
            continue
        dequeue.append(seq)
        if task_id is not None:
            lanes.append((source, task_id))
    if dequeue:
        await conn.execute(_DEQUEUE, dequeue)
    if lanes:
        await conn.execute(_PROMOTE, [s for s, _ in lanes], [t for _, t in lanes])
    if retry:
        await conn.execute(_RETRY_LATER, [s for s, _ in retry], [d for _, d in retry])
    return [o.delivery_id in counted for o in outcomes]
