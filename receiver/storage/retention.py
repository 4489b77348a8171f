"""Retention's statements and batch operations, in the SQLite dialect (both backends run
them through `Storage.transact`; `receiver.prune` drives the passes and says what is kept).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

OLD_DUPLICATES = (
    "SELECT seq FROM deliveries WHERE status = 'duplicate' AND received_at < ? "
    "ORDER BY received_at, seq LIMIT ?"
)
COUNT_DUPLICATES = "SELECT count(*) FROM deliveries WHERE status = 'duplicate' AND received_at < ?"
FEWER_ROWS = (
    "UPDATE deliveries SET duplicate_rows = CASE WHEN duplicate_rows > ? "
    "THEN duplicate_rows - ? ELSE 0 END WHERE id = ?"
)
# The terms of the partial index deliveries_prunable, spelled as it is (SQLite uses a partial
# index only for a query that repeats its WHERE).
PRUNABLE = "body IS NOT NULL AND status IN ('processed', 'dead', 'quarantined')"
CANDIDATES = f"""
    SELECT seq, id, updated_at, events_derived, length(body) FROM deliveries
    WHERE {PRUNABLE} AND status = '{{status}}' AND updated_at < ?
      AND (updated_at, seq) > (?, ?)
    ORDER BY updated_at, seq LIMIT ?
"""


def _marks(n: int) -> str:
    return ",".join("?" * n)


@dataclass(frozen=True, slots=True)
class Cursor:
    """Where a pass over `CANDIDATES` got to."""

    updated_at: float
    seq: int


START = Cursor(float("-inf"), 0)


def strip_batch(
    conn: sqlite3.Connection,
    *,
    status: str,
    before: float,
    after: Cursor,
    retained: Sequence[str],
    limit: int,
    limit_bytes: int,
    dry_run: bool,
) -> tuple[int, int, Cursor | None]:
    """Remove the body and headers of one batch of `status` deliveries last changed before
    `before`, after `after` in (updated_at, seq) order: at most `limit` rows and about
    `limit_bytes` of bodies. How many went (would go, with `dry_run`), how many a plugin's
    `retained` query kept, and where the next batch starts (None: nothing more)."""
    rows = conn.execute(
        CANDIDATES.format(status=status),
        (before, after.updated_at, after.seq, limit),
    ).fetchall()
    taken: list[Any] = []
    size = 0
    for row in rows:  # about limit_bytes of bodies at most (always one row)
        if taken and size + (row[4] or 0) > limit_bytes:
            break
        taken.append(row)
        size += row[4] or 0
    if not taken:
        return 0, 0, None
    # A processed delivery whose events are not derived is being rebuilt: not yet.
    ids = [row[1] for row in taken if status != "processed" or row[3]]
    kept = kept_among(conn, retained, ids)
    going = set(ids) - kept
    go = [row[0] for row in taken if row[1] in going]
    last = taken[-1]
    more = len(taken) < len(rows) or len(rows) == limit
    following = Cursor(last[2], last[0]) if more else None
    if dry_run or not go:
        return len(go), len(kept), following
    stripped = conn.execute(
        f"UPDATE deliveries SET body = NULL, headers = '{{}}' WHERE seq IN ({_marks(len(go))})"
        f" AND {PRUNABLE} AND (status <> 'processed' OR events_derived = 1)"
        " AND NOT EXISTS (SELECT 1 FROM dispatch_heads AS h WHERE h.seq = deliveries.seq)"
        " RETURNING seq",
        go,
    ).fetchall()
    return len(stripped), len(kept), following


def drop_duplicates(conn: sqlite3.Connection, before: float, limit: int) -> int:
    """Delete up to `limit` duplicate receipt rows received before `before`, oldest first,
    and lower their originals' `duplicate_rows` by as many; how many were deleted."""
    seqs = [row[0] for row in conn.execute(OLD_DUPLICATES, (before, limit)).fetchall()]
    if not seqs:
        return 0
    originals = conn.execute(
        f"DELETE FROM deliveries WHERE seq IN ({_marks(len(seqs))}) AND status = 'duplicate' "
        "RETURNING duplicate_of",
        seqs,
    ).fetchall()
    fewer: dict[str, int] = {}
    for (original,) in originals:
        fewer[original] = fewer.get(original, 0) + 1
    conn.executemany(FEWER_ROWS, [(n, n, original) for original, n in fewer.items()])
    return len(originals)


def kept_among(conn: sqlite3.Connection, retained: Sequence[str], ids: list[str]) -> set[str]:
    """Which of `ids` some plugin's `retain` query names."""
    kept: set[str] = set()
    if not ids:
        return kept
    for sql in retained:
        rows = conn.execute(
            f"WITH kept(id) AS ({sql}) SELECT id FROM kept WHERE id IN ({_marks(len(ids))})",
            ids,
        ).fetchall()
        kept.update(row[0] for row in rows)
    return kept
