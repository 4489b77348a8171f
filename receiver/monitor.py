"""The receiver watching itself: per-minute series, and signals when something is wrong.

Every `sample_seconds` the monitor reads the app's counters (the Prometheus collectors the
intake and the dispatcher already keep), adds what changed since the last sample to the
current minute, samples the backlog and the age of its oldest delivery, and upserts this
replica's rows of the minute (`receiver.series`). A row holds the minute's running total,
so a restart loses at most one sample; a write that fails is tried again with the next one.

Every ``[alerts] check_seconds`` it raises signals (`receiver.signals`) for listeners such as
the alerts plugin, whether or not an alerts URL is set:

- ``delivery.dead`` once per delivery that went dead since this process started, found in
  the deliveries table (so it names the delivery), not inferred from counters;
- ``verification.failing`` when a source's verification failures, all replicas summed,
  reach ``verification_failures`` within ``window_seconds`` (whole minutes, rounded out);
- ``backlog.stale`` when the oldest waiting delivery is older than ``backlog_age_seconds``.

A condition is raised when it starts and, while it lasts, again every ``repeat_seconds``
(0: once), so the alerts plugin's own throttle decides reminders, not a flood.

Only `forever` (started by `TaskhookApp.startup`) does anything: CLI commands open the app
without starting it, and the monitor stays idle.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Protocol

import structlog

from receiver import series
from receiver.config import Settings
from receiver.errors import StorageError, StorageUnavailable
from receiver.metrics import Metrics, Totals
from receiver.overview import AppView, oldest_waiting, per_dialect
from receiver.registry import HandlerRegistry
from receiver.signals import Signal

log = structlog.get_logger("taskhook.monitor")

# Outcome labels of `taskhook_deliveries` and the series they count in. "unsupported" is
# stored as quarantined (answered 415); an outcome not listed here is a refusal.
OUTCOMES = {
    "accepted": series.ACCEPTED,
    "duplicate": series.DUPLICATE,
    "quarantined": series.QUARANTINED,
    "unsupported": series.QUARANTINED,
}
_MAX_UNWRITTEN = 15  # minutes kept while the database refuses writes, then dropped
# A delivery that died is looked for again this long after its check: a commit that lands
# after the check (a slow transaction, another replica's clock) is still announced.
_DEAD_SLACK = 120.0
_DEAD_PAGE = 200
_DEAD_PAGES = 5

# The ``deliveries_prunable`` partial index, (status, updated_at, seq) over deliveries with
# a body that are processed, dead or quarantined, serves this keyset walk (SQLite needs its
# predicate word for word; PostgreSQL proves it). A dead delivery keeps its body until
# retention's age, long after it has been announced.
DEAD_SINCE = per_dialect(
    "SELECT seq, id, source, task_id, last_error, updated_at, attempts FROM deliveries{indexed} "
    "WHERE body IS NOT NULL AND status IN ('processed', 'dead', 'quarantined') "
    "AND status = 'dead' AND (updated_at, seq) > (:after_at, :after_seq) "
    "ORDER BY updated_at, seq LIMIT :limit",
    "deliveries_prunable",
)


class MonitoredApp(AppView, Protocol):
    @property
    def metrics(self) -> Metrics: ...
    @property
    def registry(self) -> HandlerRegistry: ...
    @property
    def settings(self) -> Settings: ...


class Latch:
    """Raise a condition when it starts, then at most every `repeat` seconds (0: never
    again) while it holds; it re-arms once the condition clears."""

    def __init__(self, repeat: float) -> None:
        self._repeat = repeat
        self._raised: dict[str, float] = {}

    def due(self, key: str, active: bool, now: float) -> bool:
        if not active:
            self._raised.pop(key, None)
            return False
        last = self._raised.get(key)
        if last is not None and (self._repeat <= 0 or now - last < self._repeat):
            return False
        self._raised[key] = now
        return True

    def keys(self) -> set[str]:
        return set(self._raised)


def _deltas(before: Totals, now: Totals) -> dict[str, float]:
    out: dict[str, float] = {}

    def add(name: str, delta: float) -> None:
        if delta > 0:  # a counter never goes down; a reset one does not count backwards
            out[name] = out.get(name, 0.0) + delta

    for outcome, total in now.deliveries.items():
        delta = total - before.deliveries.get(outcome, 0.0)
        add(OUTCOMES.get(outcome, series.REJECTED), delta)
    for source, total in now.verification_failures.items():
        add(series.VERIFICATION + source, total - before.verification_failures.get(source, 0.0))
    add(series.RUNS_OK, now.handler_runs.get("ok", 0.0) - before.handler_runs.get("ok", 0.0))
    failed = now.handler_runs.get("failed", 0.0) - before.handler_runs.get("failed", 0.0)
    add(series.RUNS_FAILED, failed)
    add(series.DEAD, now.dispatched.get("dead", 0.0) - before.dispatched.get("dead", 0.0))
    return out


def _first_line(text: str | None, limit: int = 200) -> str:
    lines = (text or "").strip().splitlines()
    line = lines[0] if lines else ""
    return line if len(line) <= limit else line[: limit - 1] + "…"


class Monitor:
    def __init__(
        self,
        app: MonitoredApp,
        *,
        sample_seconds: float | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self._app = app
        self.sample_seconds = sample_seconds or app.settings.ui.sample_seconds
        self.clock = clock or app.clock
        self.replica = series.replica_id()
        #: What readers of the series (the overview) keep about settled minutes.
        self.memo = series.PerMinute()
        # Declared before the storage opens: `migrate` and start-up create the table.
        app.storage.declare(series.COMPONENT, series.MIGRATIONS)
        self._last = Totals()  # the app's counters start at zero with it
        self._unwritten: dict[int, series.MinuteRows] = {}
        self._expired_before: int | None = None
        # Deliveries that died before this process started were announced by its
        # predecessor (or are old news): the watermark starts now.
        self._started_at = self.clock()
        self._dead_checked = self._started_at
        self._dead_seen: dict[str, float] = {}
        repeat = app.settings.alerts.repeat_seconds
        self._failing = Latch(repeat)
        self._stale = Latch(repeat)

    async def forever(self) -> None:
        """Sample and check, each on its own interval (the first time one interval in)."""
        loop = asyncio.get_running_loop()
        next_sample = loop.time() + self.sample_seconds
        next_check = loop.time() + self._app.settings.alerts.check_seconds
        while True:
            await asyncio.sleep(max(0.0, min(next_sample, next_check) - loop.time()))
            if loop.time() >= next_sample:
                await self._guarded(self.sample, "sample")
                next_sample = loop.time() + self.sample_seconds
            if loop.time() >= next_check:
                await self._guarded(self.check, "check")
                next_check = loop.time() + self._app.settings.alerts.check_seconds

    async def _guarded(self, step: Callable[[], Awaitable[object]], what: str) -> None:
        try:
            await step()
        except (StorageUnavailable, StorageError) as exc:  # down for now: next time, again
            log.warning("monitor step failed", step=what, error=str(exc) or type(exc).__name__)
        except Exception:  # a bug: its traceback, and the loop goes on
            log.exception("monitor step failed", step=what)

    async def sample(self) -> None:
        """Add what the counters did since the last sample to this minute and write it."""
        now = self.clock()
        minute = series.minute_of(now)
        rows = self._unwritten.setdefault(minute, series.MinuteRows(minute))
        totals = self._app.metrics.totals()
        for name, delta in _deltas(self._last, totals).items():
            rows.add(name, delta)
        before = self._last.ack_buckets
        rows.observe(series.ACK, {
            bound: count - before.get(bound, 0.0) for bound, count in totals.ack_buckets.items()
        })  # fmt: skip
        self._last = totals
        storage = self._app.storage
        rows.gauge(series.BACKLOG_DEPTH, float(await storage.backlog()))
        oldest = await oldest_waiting(storage)
        rows.gauge(series.BACKLOG_OLDEST, max(0.0, now - oldest.received_at) if oldest else 0.0)
        await self._write(minute)

    async def _write(self, minute: int) -> None:
        for stale in sorted(self._unwritten)[:-_MAX_UNWRITTEN]:
            log.warning("series minute dropped, never written", minute=stale)
            del self._unwritten[stale]
        expire = minute - series.KEEP_MINUTES
        once_a_minute = expire if self._expired_before != expire else None
        await series.write(
            self._app.storage,
            self.replica,
            self._unwritten.values(),
            expire_before=once_a_minute,
        )
        self._expired_before = expire
        for done in [m for m in self._unwritten if m < minute]:
            del self._unwritten[done]

    async def check(self) -> list[Signal]:
        """Raise the signals due now (and return them)."""
        now = self.clock()
        raised = await self._dead(now)
        raised += await self._verification(now)
        raised += await self._backlog(now)
        return raised

    async def _raise(self, signal: Signal) -> Signal:
        log.info("signal", kind=signal.kind, key=signal.key, summary=signal.summary)
        await self._app.registry.signal(signal)
        return signal

    async def _dead(self, now: float) -> list[Signal]:
        floor = max(self._started_at, self._dead_checked - _DEAD_SLACK)
        after: tuple[float, int] = (floor, 0)
        raised: list[Signal] = []
        for _ in range(_DEAD_PAGES):
            params = {"after_at": after[0], "after_seq": after[1], "limit": _DEAD_PAGE}
            storage = self._app.storage
            rows = await storage.query(DEAD_SINCE[storage.dialect], params)
            for seq, delivery_id, source, task_id, error, updated_at, attempts in rows:
                after = (float(updated_at), int(seq))
                if self._dead_seen.get(delivery_id) == updated_at:
                    continue
                self._dead_seen[delivery_id] = updated_at
                raised.append(await self._raise(self._dead_signal(
                    now, delivery_id, source, task_id, _first_line(error), attempts
                )))  # fmt: skip
            if len(rows) < _DEAD_PAGE:
                break
        self._dead_checked = now
        keep_from = max(self._started_at, now - _DEAD_SLACK)
        self._dead_seen = {i: at for i, at in self._dead_seen.items() if at >= keep_from}
        return raised

    @staticmethod
    def _dead_signal(
        now: float, delivery_id: str, source: str, task_id: str | None, error: str, attempts: int
    ) -> Signal:
        about = f"task {task_id}" if task_id else "no task"
        return Signal(
            "delivery.dead",
            delivery_id,
            f"delivery {delivery_id} ({source}, {about}) is dead after {attempts} "
            f"attempt(s): {error or 'no error recorded'}",
            at=now,
            details={
                "delivery_id": delivery_id,
                "source": source,
                "task_id": task_id,
                "error": error,
                "attempts": attempts,
            },
            link=f"/ui/deliveries/{delivery_id}",
        )

    async def _verification(self, now: float) -> list[Signal]:
        alerts = self._app.settings.alerts
        since = series.minute_of(now - alerts.window_seconds)
        totals = await series.prefixed_totals(
            self._app.storage, series.VERIFICATION, since, series.minute_of(now)
        )
        failures = {name[len(series.VERIFICATION) :]: n for name, n in totals.items()}
        raised: list[Signal] = []
        for source in sorted(set(failures) | self._failing.keys()):
            count = round(failures.get(source, 0.0))
            if not self._failing.due(source, count >= alerts.verification_failures, now):
                continue
            summary = (
                f"source {source}: {count} deliveries failed verification in the last "
                f"{alerts.window_seconds:g} s (alerting at {alerts.verification_failures})"
            )
            details = {
                "source": source,
                "failures": count,
                "window_seconds": alerts.window_seconds,
                "threshold": alerts.verification_failures,
            }
            signal = Signal("verification.failing", source, summary, at=now, details=details)
            raised.append(await self._raise(signal))
        return raised

    async def _backlog(self, now: float) -> list[Signal]:
        threshold = self._app.settings.alerts.backlog_age_seconds
        if threshold <= 0:
            return []
        oldest = await oldest_waiting(self._app.storage)
        age = now - oldest.received_at if oldest is not None else 0.0
        if not self._stale.due("backlog", age > threshold, now) or oldest is None:
            return []
        depth = await self._app.storage.backlog()
        signal = Signal(
            "backlog.stale",
            "backlog",
            f"the oldest of {depth} waiting deliveries has waited {age:.0f} s "
            f"(alerting past {threshold:g} s)",
            at=now,
            details={
                "oldest_seconds": round(age, 3),
                "threshold_seconds": threshold,
                "backlog": depth,
                "delivery_id": oldest.delivery_id,
            },
            link=f"/ui/deliveries/{oldest.delivery_id}",
        )
        return [await self._raise(signal)]


__all__ = ["DEAD_SINCE", "Latch", "Monitor", "MonitoredApp"]
