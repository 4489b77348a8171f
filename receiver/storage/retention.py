"""Retention's statements and batch operations, one text for SQLite and PostgreSQL alike
(each batch is one `Storage.transaction`; `receiver.prune` drives the passes and says what
is kept).

Statements are ``text()`` with ``:name`` parameters, compiled per dialect by SQLAlchemy. A
list of values (``IN (...)``) is bound one parameter each; its length is rounded up to a
power of two by repeating the last value, so a pass uses a handful of statement shapes (and
compiled and prepared forms), not one per batch size.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from sqlalchemy import TextClause, text

from receiver.plugin_store import Tx

OLD_DUPLICATES = text(
    "SELECT seq FROM deliveries WHERE status = 'duplicate' AND received_at < :before "
    "ORDER BY received_at, seq LIMIT :limit"
)
COUNT_DUPLICATES = text(
    "SELECT count(*) FROM deliveries WHERE status = 'duplicate' AND received_at < :before"
)
FEWER_ROWS = text(
    "UPDATE deliveries SET duplicate_rows = CASE WHEN duplicate_rows > :n "
    "THEN duplicate_rows - :n ELSE 0 END WHERE id = :original"
)
# The terms of the partial index deliveries_prunable, spelled as it is (SQLite uses a partial
# index only for a query that repeats its WHERE).
PRUNABLE = "body IS NOT NULL AND status IN ('processed', 'dead', 'quarantined')"
_CANDIDATES = f"""
    SELECT seq, id, updated_at, events_derived, length(body) FROM deliveries
    WHERE {PRUNABLE} AND status = '{{status}}' AND updated_at < :before
      AND (updated_at, seq) > (:after_at, :after_seq)
    ORDER BY updated_at, seq LIMIT :limit
"""
STATES = ("processed", "dead", "quarantined")
# One statement per state, its status spelled in it as the index's terms are.
CANDIDATES = {status: text(_CANDIDATES.format(status=status)) for status in STATES}


def _width(n: int) -> int:
    """`n` rounded up to a power of two: the number of parameters of an ``IN`` list."""
    return 1 << (n - 1).bit_length()


def _marks(prefix: str, n: int) -> str:
    return ", ".join(f":{prefix}{i}" for i in range(n))


def _bind(prefix: str, values: Sequence[Any]) -> dict[str, Any]:
    """Parameters of an ``IN`` list of `_width(len(values))` (`values` is not empty)."""
    padded = [*values, *[values[-1]] * (_width(len(values)) - len(values))]
    return {f"{prefix}{i}": value for i, value in enumerate(padded)}


@lru_cache(maxsize=64)
def _strip(width: int) -> TextClause:
    return text(
        "UPDATE deliveries SET body = NULL, headers = '{}' "
        f"WHERE seq IN ({_marks('s', width)})"
        f" AND {PRUNABLE} AND (status <> 'processed' OR events_derived = 1)"
        " AND NOT EXISTS (SELECT 1 FROM dispatch_heads AS h WHERE h.seq = deliveries.seq)"
        " RETURNING seq"
    )


@lru_cache(maxsize=64)
def _delete_duplicates(width: int) -> TextClause:
    return text(
        f"DELETE FROM deliveries WHERE seq IN ({_marks('s', width)}) AND status = 'duplicate' "
        "RETURNING duplicate_of"
    )


@lru_cache(maxsize=256)
def _kept(sql: str, width: int) -> TextClause:
    # A plugin's query has no parameters: any colon in it is its own (a literal, a cast).
    own = sql.replace(":", "\\:")
    return text(f"WITH kept(id) AS ({own}) SELECT id FROM kept WHERE id IN ({_marks('i', width)})")


@dataclass(frozen=True, slots=True)
class Cursor:
    """Where a pass over `CANDIDATES` got to."""

    updated_at: float
    seq: int


START = Cursor(float("-inf"), 0)


async def strip_batch(
    tx: Tx,
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
    rows = await tx.fetch(CANDIDATES[status], {
        "before": before, "after_at": after.updated_at, "after_seq": after.seq, "limit": limit,
    })  # fmt: skip
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
    kept = await kept_among(tx, retained, ids)
    going = set(ids) - kept
    go = [row[0] for row in taken if row[1] in going]
    last = taken[-1]
    more = len(taken) < len(rows) or len(rows) == limit
    following = Cursor(last[2], last[0]) if more else None
    if dry_run or not go:
        return len(go), len(kept), following
    stripped = await tx.fetch(_strip(_width(len(go))), _bind("s", go))
    return len(stripped), len(kept), following


async def drop_duplicates(tx: Tx, before: float, limit: int) -> int:
    """Delete up to `limit` duplicate receipt rows received before `before`, oldest first,
    and lower their originals' `duplicate_rows` by as many; how many were deleted."""
    seqs = [row[0] for row in await tx.fetch(OLD_DUPLICATES, {"before": before, "limit": limit})]
    if not seqs:
        return 0
    originals = await tx.fetch(_delete_duplicates(_width(len(seqs))), _bind("s", seqs))
    fewer: dict[str, int] = {}
    for row in originals:
        fewer[row[0]] = fewer.get(row[0], 0) + 1
    await tx.executemany(FEWER_ROWS, [{"n": n, "original": o} for o, n in fewer.items()])
    return len(originals)


async def kept_among(tx: Tx, retained: Sequence[str], ids: list[str]) -> set[str]:
    """Which of `ids` some plugin's `retain` query names."""
    kept: set[str] = set()
    if not ids:
        return kept
    params = _bind("i", ids)
    for sql in retained:
        rows = await tx.fetch(_kept(sql, _width(len(ids))), params)
        kept.update(row[0] for row in rows)
    return kept
