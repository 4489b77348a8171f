"""Per-minute time series the receiver keeps about itself, in its own database.

Charts and the overview read what happened from here, not only from Prometheus: a receiver
with no scraper still shows its last hour and day, and replicas sharing one PostgreSQL show
one picture. Each process (a *replica*) writes only its own rows, keyed
``(minute, replica, name)``, so replicas never contend on a row; readers merge them:

- counters (deliveries by outcome, verification failures per source, handler runs, dead
  deliveries) are summed across replicas;
- gauges (backlog depth and the age of its oldest delivery) take the maximum: every replica
  samples the same shared backlog, so the maximum is the latest good look at it;
- the ack latency histogram keeps its bucket counts (JSON in ``buckets``), so quantiles of
  several replicas come from their summed buckets, exact to the bucket.

Rows older than `KEEP_MINUTES` are deleted by their writer as minutes go by (the primary
key leads with the minute, so that is an index range, usually empty).
"""

from __future__ import annotations

import functools
import math
import os
import secrets
import socket
from collections.abc import Awaitable, Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

import orjson
import sqlalchemy as sa

from receiver.plugin_store import Migration, PluginStorage, Tx, real

T = TypeVar("T")
COMPONENT = "series"
KEEP_MINUTES = 8 * 24 * 60
# Minutes older than this are settled: a replica retries writing a minute for at most 15
# (`monitor._MAX_UNWRITTEN`), so what they hold no longer changes.
SETTLED_MINUTES = 60

ACCEPTED = "deliveries.accepted"
DUPLICATE = "deliveries.duplicate"
QUARANTINED = "deliveries.quarantined"  # stored, not processed (unparseable, unsupported)
REJECTED = "deliveries.rejected"  # refused and not stored (verification, 413, 503, timeout)
VERIFICATION = "verification.failures:"  # + the source's name
RUNS_OK = "handler.runs.ok"
RUNS_FAILED = "handler.runs.failed"
DEAD = "dispatch.dead"
BACKLOG_DEPTH = "backlog.depth"
BACKLOG_OLDEST = "backlog.oldest_seconds"
ACK = "ack.seconds"
GAUGES = frozenset({BACKLOG_DEPTH, BACKLOG_OLDEST})
HISTOGRAMS = frozenset({ACK})

Buckets = Mapping[str, float]
"""Observations per bucket, keyed by upper bound as Prometheus spells it ("0.005", "+Inf")."""

META = sa.MetaData()
SERIES = sa.Table(
    "taskhook_series",
    META,
    sa.Column("minute", sa.Integer, primary_key=True, autoincrement=False),  # epoch // 60
    sa.Column("replica", sa.Text, primary_key=True),
    sa.Column("name", sa.Text, primary_key=True),
    sa.Column("value", real(), nullable=False),
    sa.Column("buckets", sa.Text),
)


async def _v1(tx: Tx) -> None:
    await tx.create(SERIES)


MIGRATIONS = (Migration(1, "per-minute series of each replica", _v1),)

# The row holds the minute's running total, so writing it again after every sample is
# idempotent and a restart loses at most the sample in flight.
_UPSERT = sa.text(
    "INSERT INTO taskhook_series (minute, replica, name, value, buckets) "
    "VALUES (:minute, :replica, :name, :value, :buckets) "
    "ON CONFLICT (minute, replica, name) DO UPDATE "
    "SET value = excluded.value, buckets = excluded.buckets"
)
_EXPIRE = sa.text("DELETE FROM taskhook_series WHERE minute < :before")
_BUCKETS = sa.text(
    "SELECT minute, buckets FROM taskhook_series WHERE minute >= :since AND minute <= :until "
    "AND name = :name AND buckets IS NOT NULL"
)
_PREFIXED = sa.text(
    "SELECT name, sum(value) FROM taskhook_series WHERE minute >= :since AND minute <= :until "
    "AND name LIKE :pattern ESCAPE '!' GROUP BY name"
)


@functools.lru_cache(maxsize=64)
def _merged(names: tuple[str, ...]) -> sa.TextClause:
    """Replicas merged and minutes grouped into slots of `step`, for one set of names (one
    statement object per set, so its compiled form is cached by the storage)."""
    marks = ", ".join(f":n{i}" for i in range(len(names)))
    return sa.text(
        "SELECT (minute - :since) / :step AS slot, name, sum(value), max(value) "  # noqa: S608
        "FROM taskhook_series WHERE minute >= :since_again AND minute <= :until "
        f"AND name IN ({marks}) GROUP BY slot, name"  # placeholders only, never values
    )


def minute_of(at: float) -> int:
    return math.floor(at / 60)


def replica_id() -> str:
    """This process's name in the table: readable (host, pid) and never reused (random)."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


def merge(into: dict[str, float], more: Buckets) -> None:
    for bound, count in more.items():
        into[bound] = into.get(bound, 0.0) + count


def quantile(buckets: Buckets, q: float) -> float | None:
    """The `q` quantile, interpolated linearly inside its bucket (as Prometheus's
    ``histogram_quantile``); the largest finite bound when it falls in ``+Inf``."""
    ordered = sorted((float(bound), count) for bound, count in buckets.items())
    total = sum(count for _, count in ordered)
    if total <= 0:
        return None
    rank, seen, lower = q * total, 0.0, 0.0
    for bound, count in ordered:
        if count > 0 and seen + count >= rank:
            if math.isinf(bound):
                return lower
            return lower + (bound - lower) * max(0.0, rank - seen) / count
        seen += count
        if not math.isinf(bound):
            lower = bound
    return lower


@dataclass(slots=True)
class MinuteRows:
    """One replica's values for one minute, as they accumulate between writes."""

    minute: int
    values: dict[str, float] = field(default_factory=dict)
    buckets: dict[str, dict[str, float]] = field(default_factory=dict)

    def add(self, name: str, delta: float) -> None:
        if delta > 0:
            self.values[name] = self.values.get(name, 0.0) + delta

    def gauge(self, name: str, value: float) -> None:
        """The minute's peak: a spike between two chart points still shows."""
        self.values[name] = max(value, self.values.get(name, value))

    def observe(self, name: str, buckets: Buckets) -> None:
        count = sum(buckets.values())
        if count > 0:
            merge(self.buckets.setdefault(name, {}), buckets)
            self.values[name] = self.values.get(name, 0.0) + count

    def rows(self, replica: str) -> list[dict[str, object]]:
        return [
            {
                "minute": self.minute,
                "replica": replica,
                "name": name,
                "value": value,
                "buckets": orjson.dumps(self.buckets[name]).decode()
                if name in self.buckets
                else None,
            }
            for name, value in self.values.items()
        ]


async def write(
    storage: PluginStorage,
    replica: str,
    minutes: Iterable[MinuteRows],
    *,
    expire_before: int | None = None,
) -> None:
    """Upsert `replica`'s rows of `minutes` (and delete every row before `expire_before`)
    in one transaction."""
    rows = [row for m in minutes for row in m.rows(replica)]

    async def op(tx: Tx) -> None:
        if rows:
            await tx.executemany(_UPSERT, rows)
        if expire_before is not None:
            await tx.execute(_EXPIRE, {"before": expire_before})

    await storage.transaction(op)


@dataclass(frozen=True, slots=True)
class Series:
    """Merged values of some names from `since` to `until` (minutes, inclusive) in slots
    of `step` minutes; slot i starts at minute ``since + i * step``."""

    since: int
    until: int
    step: int
    values: Mapping[str, Mapping[int, float]]
    buckets: Mapping[str, Mapping[int, Buckets]]

    @property
    def slots(self) -> int:
        return (self.until - self.since) // self.step + 1

    def slot_minutes(self) -> list[int]:
        return [self.since + i * self.step for i in range(self.slots)]

    def points(self, name: str) -> list[float | None]:
        """One value per slot: a missing counter counted nothing (0); a missing gauge was
        not sampled (None: the receiver was down)."""
        gap = None if name in GAUGES else 0.0
        found = self.values.get(name, {})
        return [found.get(i, gap) for i in range(self.slots)]

    def total(self, name: str) -> float:
        return sum(self.values.get(name, {}).values())

    def merged(self, name: str) -> dict[str, float]:
        """A histogram's buckets over the whole range."""
        out: dict[str, float] = {}
        for buckets in self.buckets.get(name, {}).values():
            merge(out, buckets)
        return out

    def quantiles(self, name: str, q: float) -> list[float | None]:
        found = self.buckets.get(name, {})
        return [quantile(found[i], q) if i in found else None for i in range(self.slots)]

    def join(self, later: Series) -> Series:
        """These slots followed by `later`'s (read from the minute after `until`)."""
        offset = (later.since - self.since) // self.step
        values = {name: dict(found) for name, found in self.values.items()}
        for name, found in later.values.items():
            values.setdefault(name, {}).update({offset + i: v for i, v in found.items()})
        buckets = {name: dict(found) for name, found in self.buckets.items()}
        for name, more in later.buckets.items():
            buckets.setdefault(name, {}).update({offset + i: b for i, b in more.items()})
        return Series(self.since, later.until, self.step, values, buckets)


async def read_series(
    storage: PluginStorage,
    names: Sequence[str],
    since_minute: int,
    until_minute: int,
    *,
    step: int = 1,
) -> Series:
    """Every replica's rows of `names` between the two minutes (inclusive), merged."""
    wanted = tuple(sorted(set(names)))
    values: dict[str, dict[int, float]] = {}
    if wanted:
        params: dict[str, object] = {f"n{i}": name for i, name in enumerate(wanted)}
        params.update(since=since_minute, step=step, since_again=since_minute)
        params["until"] = until_minute
        for slot, name, summed, peak in await storage.query(_merged(wanted), params):
            values.setdefault(name, {})[int(slot)] = float(peak if name in GAUGES else summed)
    buckets = {
        name: await _buckets(storage, name, since_minute, until_minute, step)
        for name in HISTOGRAMS.intersection(wanted)
    }
    return Series(since_minute, until_minute, step, values, buckets)


async def _buckets(
    storage: PluginStorage, name: str, since: int, until: int, step: int
) -> dict[int, Buckets]:
    into: dict[int, dict[str, float]] = {}
    found = {"since": since, "until": until, "name": name}
    for minute, text in await storage.query(_BUCKETS, found):
        merge(into.setdefault((int(minute) - since) // step, {}), orjson.loads(text))
    return dict(into)


async def merged_buckets(
    storage: PluginStorage, name: str, since_minute: int, until_minute: int
) -> dict[str, float]:
    """A histogram's buckets over the range, every replica's summed (one query)."""
    found = await _buckets(storage, name, since_minute, until_minute, until_minute + 1)
    return dict(found.get(0, {}))


async def prefixed_totals(
    storage: PluginStorage, prefix: str, since_minute: int, until_minute: int
) -> dict[str, float]:
    """Totals of every counter named ``prefix...`` over the range, all replicas summed."""
    pattern = prefix.replace("!", "!!").replace("%", "!%").replace("_", "!_") + "%"
    params = {"since": since_minute, "until": until_minute, "pattern": pattern}
    rows = await storage.query(_PREFIXED, params)
    return {str(name): float(total) for name, total in rows}


class PerMinute:
    """Results about settled minutes, computed once per minute turn and kept until the next:
    the overview's last 24 hours are what was settled (cached) plus the last hour (live)."""

    def __init__(self) -> None:
        self._minute: int | None = None
        self._kept: dict[Hashable, Any] = {}

    async def get(self, key: Hashable, minute: int, compute: Callable[[], Awaitable[T]]) -> T:
        if minute != self._minute:
            self._minute, self._kept = minute, {}
        if key not in self._kept:
            self._kept[key] = await compute()
        found: T = self._kept[key]
        return found


@dataclass(frozen=True, slots=True)
class Window:
    """What a chart shows: `points` slots of `step` minutes, the last one now's."""

    name: Literal["hour", "day"]
    step: int
    points: int

    def span(self, now_minute: int) -> tuple[int, int]:
        # Slots start on round minutes (10-minute slots at :00, :10, ...) so labels read well.
        last = now_minute - now_minute % self.step
        return last - (self.points - 1) * self.step, now_minute


WINDOWS: Mapping[str, Window] = {
    "hour": Window("hour", 1, 60),
    "day": Window("day", 10, 144),
}


async def read_window(
    storage: PluginStorage,
    names: Sequence[str],
    window: Window,
    now: float,
    *,
    memo: PerMinute | None = None,
) -> Series:
    """The window ending now. With `memo`, its slots that are wholly settled are read once
    a minute (a day's first ~137 of 144) and only the rest each time."""
    minute = minute_of(now)
    since, until = window.span(minute)
    settled = (minute - SETTLED_MINUTES - since + 1) // window.step
    settled = min(window.points, max(0, settled))
    if memo is None or settled == 0:
        return await read_series(storage, names, since, until, step=window.step)
    cut = since + settled * window.step

    async def old() -> Series:
        return await read_series(storage, names, since, cut - 1, step=window.step)

    kept = await memo.get(("window", window.name, tuple(names), since), minute, old)
    return kept.join(await read_series(storage, names, cut, until, step=window.step))


__all__ = [
    "KEEP_MINUTES",
    "MIGRATIONS",
    "SERIES",
    "WINDOWS",
    "MinuteRows",
    "PerMinute",
    "Series",
    "Window",
    "merged_buckets",
    "minute_of",
    "prefixed_totals",
    "quantile",
    "read_series",
    "read_window",
    "replica_id",
    "write",
]
