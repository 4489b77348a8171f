"""The dashboard's live counters: what came in lately, what waits, what is stuck.

`overview(app)` is read every few seconds by every open dashboard, so it is a handful of
indexed queries: two aggregates over the series (last hour, last day), one read of the
hour's ack-latency buckets, the backlog count (the partial index of waiting deliveries),
the oldest waiting delivery (the first entry of that index) and the dead and quarantined
counts (``deliveries_status``). Counts of what came in are those the series kept, so they
cover every replica and survive restarts.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import sqlalchemy as sa

from receiver import series
from receiver.storage import Storage


def per_dialect(template: str, index: str) -> dict[str, sa.TextClause]:
    """`template` on PostgreSQL as it is; on SQLite pinned to `index` (``INDEXED BY``):
    statistics from an ``ANALYZE`` can make SQLite prefer a scan of the whole table in seq
    order, which is quick only while what it looks for sits at the start; pinned, the plan
    cannot drift, and a dropped index is an error rather than a slow query."""
    return {
        "sqlite": sa.text(template.format(indexed=f" INDEXED BY {index}")),
        "postgresql": sa.text(template.format(indexed="")),
    }


# The ``deliveries_pending`` partial index keeps waiting deliveries in receipt order: its
# first entry is the oldest, whatever the size of the backlog.
OLDEST_WAITING = per_dialect(
    "SELECT id, received_at FROM deliveries{indexed} "
    "WHERE status IN ('received', 'failed') ORDER BY seq LIMIT 1",
    "deliveries_pending",
)
# Each counted on ``deliveries_status (status, seq)`` alone; two scalar counts rather than
# a GROUP BY, which PostgreSQL may answer by sorting every matching row.
STUCK_COUNTS = per_dialect(
    "SELECT (SELECT count(*) FROM deliveries{indexed} WHERE status = 'dead'), "
    "(SELECT count(*) FROM deliveries{indexed} WHERE status = 'quarantined')",
    "deliveries_status",
)

_COUNTED = (
    series.ACCEPTED,
    series.DUPLICATE,
    series.QUARANTINED,
    series.REJECTED,
    series.RUNS_OK,
    series.RUNS_FAILED,
)


class Memoized(Protocol):
    @property
    def memo(self) -> series.PerMinute: ...


class AppView(Protocol):
    """What the overview and the charts read of the app (its monitor keeps the memo);
    read-only, so `TaskhookApp` and its `Monitor` fit as they are."""

    @property
    def storage(self) -> Storage: ...
    @property
    def clock(self) -> Callable[[], float]: ...
    @property
    def monitor(self) -> Memoized: ...


@dataclass(frozen=True, slots=True)
class Oldest:
    delivery_id: str
    received_at: float


async def oldest_waiting(storage: Storage) -> Oldest | None:
    rows = await storage.query(OLDEST_WAITING[storage.dialect])
    return Oldest(str(rows[0][0]), float(rows[0][1])) if rows else None


async def stuck_counts(storage: Storage) -> tuple[int, int]:
    """(dead, quarantined) deliveries stored now."""
    ((dead, quarantined),) = await storage.query(STUCK_COUNTS[storage.dialect])
    return int(dead), int(quarantined)


@dataclass(frozen=True, slots=True)
class Received:
    """What came in over a window, every replica counted."""

    accepted: int
    duplicates: int
    quarantined: int  # stored but unreadable or of an unsupported type
    rejected: int  # refused, not stored: verification, too large, busy, unavailable


@dataclass(frozen=True, slots=True)
class Overview:
    at: float  # when it was read (epoch seconds)
    last_hour: Received
    last_day: Received
    backlog: int  # deliveries waiting to be processed (received or failed)
    oldest_waiting_seconds: float | None  # None: nothing waits
    oldest_waiting_id: str | None
    dead: int  # deliveries that used up their attempts
    quarantined: int  # stored deliveries that cannot be processed as they are
    handler_runs_last_hour: int
    handler_failure_rate: float | None  # failed / all runs in the last hour, 0..1
    ack_p50_seconds: float | None  # the vendors' wait for an answer, last hour
    ack_p99_seconds: float | None

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready (numbers, strings, None and nested objects only)."""
        return dataclasses.asdict(self)


def _received(*parts: series.Series) -> Received:
    def count(name: str) -> int:
        return round(sum(data.total(name) for data in parts))

    return Received(
        accepted=count(series.ACCEPTED),
        duplicates=count(series.DUPLICATE),
        quarantined=count(series.QUARANTINED),
        rejected=count(series.REJECTED),
    )


async def overview(app: AppView) -> Overview:
    now = app.clock()
    minute = series.minute_of(now)
    storage = app.storage
    # One slot per window: the database sums the rows, Python gets a few numbers back. The
    # day is its settled part (summed once a minute: ~50 ms over 3 replicas' rows) and the
    # live last hour.
    live = series.SETTLED_MINUTES
    hour = await series.read_series(storage, _COUNTED, minute - live + 1, minute, step=live)

    async def settled() -> series.Series:
        since, until = minute - 1439, minute - live
        return await series.read_series(storage, _COUNTED, since, until, step=1440)

    day = await app.monitor.memo.get("overview.day", minute, settled)
    buckets = await series.merged_buckets(storage, series.ACK, minute - live + 1, minute)
    backlog = await storage.backlog()
    oldest = await oldest_waiting(storage) if backlog else None
    dead, quarantined = await stuck_counts(storage)
    ok, failed = hour.total(series.RUNS_OK), hour.total(series.RUNS_FAILED)
    return Overview(
        at=now,
        last_hour=_received(hour),
        last_day=_received(day, hour),
        backlog=backlog,
        oldest_waiting_seconds=max(0.0, now - oldest.received_at) if oldest else None,
        oldest_waiting_id=oldest.delivery_id if oldest else None,
        dead=dead,
        quarantined=quarantined,
        handler_runs_last_hour=round(ok + failed),
        handler_failure_rate=failed / (ok + failed) if ok + failed > 0 else None,
        ack_p50_seconds=series.quantile(buckets, 0.5),
        ack_p99_seconds=series.quantile(buckets, 0.99),
    )


__all__ = [
    "OLDEST_WAITING",
    "STUCK_COUNTS",
    "AppView",
    "Oldest",
    "Overview",
    "Received",
    "oldest_waiting",
    "overview",
    "per_dialect",
    "stuck_counts",
]
