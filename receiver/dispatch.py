"""The dispatcher: stored deliveries → typed events → handlers, inside the app.

It leases batches of deliveries that head their task's queue (one task's deliveries run in
receipt order, different tasks concurrently), derives and persists a batch's events in one
transaction (`receiver.interpret`), runs each handler that has not yet succeeded on each
event, and records every run. A failed run is retried with backoff (`receiver.retries`),
re-running only the handlers that failed; after ``max_attempts`` the delivery is `dead`.
The intake never waits on any of this: it only `notify()`s.

Exactly once per (event, handler): a run that succeeded is recorded and never repeated; the
process's heartbeat (`Liveness`) keeps its leases alive however long handlers take, so no
other process claims what it runs; and a claim never returns what this process holds.
Handlers are isolated from the process and from each other (`HandlerRunner`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import time
from collections.abc import Callable, Mapping

import structlog

from receiver.config import DispatchSettings
from receiver.errors import PayloadError, StorageUnavailable, TaskhookError
from receiver.events import Event
from receiver.handler_runs import HandlerRunner, ours_cancelled
from receiver.interpret import Derived, Interpretation
from receiver.liveness import Liveness
from receiver.metrics import Metrics
from receiver.records import (
    DeliveryOutcome,
    DeliveryRecord,
    DeliveryStatus,
    HandlerRun,
    new_id,
)
from receiver.registry import HandlerRegistry, RegisteredHandler
from receiver.retries import failed
from receiver.sources import SourceAdapter
from receiver.storage import Storage

log = structlog.get_logger("taskhook.dispatch")

Clock = Callable[[], float]
BACKLOG_SAMPLE_SECONDS = 1.0


class ClaimLost(TaskhookError):
    """This process can no longer vouch for its lease on a delivery (taken over, or the
    heartbeat failed too long): it starts no further handler on it."""


class Dispatcher:
    def __init__(
        self,
        *,
        storage: Storage,
        registry: HandlerRegistry,
        adapters: Mapping[str, SourceAdapter],
        settings: DispatchSettings,
        metrics: Metrics,
        clock: Clock = time.time,
        rng: random.Random | None = None,
    ) -> None:
        self._storage = storage
        self._registry = registry
        self._adapters = adapters  # by source name
        self._settings = settings
        self._metrics = metrics
        self._clock = clock
        self._rng = rng or random.Random()
        self.owner = f"{os.getpid()}-{new_id('')}"
        self.liveness = Liveness(storage=storage, settings=settings, owner=self.owner, clock=clock)
        self.runner = HandlerRunner(
            settings=settings, metrics=metrics, error_hooks=lambda: registry.error_hooks
        )
        self.interpretation = Interpretation(
            storage=storage, registry=registry, adapters=adapters, owner=self.owner
        )
        self._wake = asyncio.Event()
        self._stopping = False
        self._inflight: set[asyncio.Task[None]] = set()
        self._running: dict[int, str] = {}  # seq -> delivery id, of deliveries in flight here
        self._lost: set[str] = set()  # in flight here, but no longer leased by this process
        # Claimed deliveries whose attempt the storage cut short: released for a new attempt
        # as soon as storage answers again, instead of waiting out their lease.
        self._stranded: set[str] = set()
        self._loop_task: asyncio.Task[None] | None = None
        self._beat_task: asyncio.Task[None] | None = None
        self._backlog_at = float("-inf")

    def start(self) -> None:
        self._loop_task = asyncio.create_task(self._run(), name="taskhook-dispatcher")
        self._beat_task = asyncio.create_task(self._beat(), name="taskhook-heartbeat")

    def notify(self) -> None:
        """Something new may be ready: claim without waiting for the next poll."""
        self._wake.set()

    async def stop(self, grace: float = 10.0) -> None:
        """Stop claiming, let running deliveries finish within `grace`, release the rest."""
        self._stopping = True
        self._wake.set()
        if self._loop_task is not None:
            await self._loop_task
            self._loop_task = None
        if self._inflight:
            _, pending = await asyncio.wait(self._inflight, timeout=grace)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        if self._beat_task is not None:
            self._beat_task.cancel()
            await asyncio.gather(self._beat_task, return_exceptions=True)
            self._beat_task = None
        with contextlib.suppress(StorageUnavailable):
            await self._storage.release_claims(self.owner)
            await self.liveness.retire()
        self.runner.close()

    async def _beat(self) -> None:
        """Beat while anything runs, even when nothing is claimed for a long while."""
        while not self._stopping:
            try:
                await self.heartbeat()
            except StorageUnavailable as exc:
                log.warning("heartbeat failed", error=str(exc))
            except Exception:
                log.exception("heartbeat crashed")
            # On time (a late beat delays every other process's takeover), and soon again
            # after a failure.
            await asyncio.sleep(max(0.05, min(self.liveness.until_due(), 1.0)))

    async def heartbeat(self) -> None:
        """Beat if due, and mark deliveries whose lease this process no longer holds."""
        before = dict(self._running)
        renewed = await self.liveness.ensure()
        if renewed is None:
            return
        lost = {i for seq, i in before.items() if seq not in renewed and seq in self._running}
        if lost - self._lost:
            log.warning("claims taken over by another process", deliveries=sorted(lost))
        self._lost |= lost

    async def _run(self) -> None:
        while not self._stopping:
            self._wake.clear()
            started = 0
            try:
                started = await self.claim_and_start()
                await self._sample_backlog()
            except StorageUnavailable as exc:
                log.warning("dispatch poll failed", error=str(exc))
            except Exception:
                log.exception("dispatch poll crashed")
            if self._stopping:
                break
            if started == 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(
                        self._wake.wait(), timeout=self._settings.poll_interval_seconds
                    )

    async def _sample_backlog(self) -> None:
        # A count over every pending row: sampled, not run at every wake of a busy dispatcher.
        now = time.monotonic()
        if now - self._backlog_at >= BACKLOG_SAMPLE_SECONDS:
            self._backlog_at = now
            self._metrics.backlog.set(await self._storage.backlog())

    async def claim_and_start(self) -> int:
        await self.heartbeat()
        if not self.liveness.healthy():
            return 0  # fenced: others may be taking this process's claims over
        if self._stranded:
            stranded = list(self._stranded)
            await self._storage.release_claims(self.owner, ids=stranded)
            self._stranded.difference_update(stranded)
        room = self._settings.concurrency - len(self._running)
        if room <= 0 or (self._running and room < self._settings.concurrency // 4):
            # Refill in chunks: a claim is a write transaction, not worth one per delivery.
            return 0
        claimed = await self._storage.claim_ready(
            owner=self.owner,
            limit=min(room, self._settings.batch_size),
            now=self._clock(),
            lease_seconds=self._settings.lease_seconds,
        )
        # (the claim never returns what is in flight here; belt and braces)
        batch = [d for d in claimed if d.seq not in self._running]
        for delivery in batch:
            self._running[delivery.seq] = delivery.id
        if batch:
            task = asyncio.create_task(self._batch(batch))
            self._inflight.add(task)
            task.add_done_callback(self._done)
        return len(batch)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._inflight.discard(task)
        self._wake.set()

    async def drain(self, *, within: float = 10.0, wait_for_retries: bool = True) -> None:
        """Process until nothing is left to do (tests and `replay` use this, not sleeps).

        With `wait_for_retries`, deliveries waiting out a backoff are waited for too, so the
        call returns only when every delivery is processed, dead or quarantined.
        """
        beating = self._beat_task is None  # not started (a CLI command): beat meanwhile
        if beating:
            self._beat_task = asyncio.create_task(self._beat(), name="taskhook-heartbeat")
        try:
            await self._drain(within, wait_for_retries)
        finally:
            if beating and self._beat_task is not None:
                self._beat_task.cancel()
                await asyncio.gather(self._beat_task, return_exceptions=True)
                self._beat_task = None

    async def _drain(self, within: float, wait_for_retries: bool) -> None:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            started = await self.claim_and_start()
            if self._inflight:
                await asyncio.wait(self._inflight, timeout=max(0.0, deadline - time.monotonic()))
            elif started == 0:
                if not wait_for_retries or await self._storage.backlog() == 0:
                    return
                await asyncio.sleep(0.01)
        raise TimeoutError("dispatcher did not drain in time")

    async def _batch(self, batch: list[DeliveryRecord]) -> None:
        """Derive a claimed batch's events in one transaction, then run handlers per delivery
        (`receiver.interpret`)."""
        try:
            derived = await self.interpretation.derive(batch, may_finish=self.liveness.healthy)
        except StorageUnavailable as exc:
            log.warning("could not derive a batch", error=str(exc), deliveries=len(batch))
            self._strand(batch)
            return
        except asyncio.CancelledError:
            if ours_cancelled():
                self._strand(batch)
                raise
            derived = None
        except BaseException:  # an interpreter's bug, SystemExit & co.: contained
            derived = None
        if derived is None:  # again one by one: the failure is only its delivery's
            one = (self._batch([d]) if len(batch) > 1 else self._guarded(d, None) for d in batch)
            await asyncio.gather(*one)
            return
        pending = []
        for delivery in batch:
            if delivery.id in derived.finished:
                self._finished(delivery, derived.finished[delivery.id], derived)
            else:
                pending.append(self._guarded(delivery, derived))
        await asyncio.gather(*pending)

    def _strand(self, batch: list[DeliveryRecord]) -> None:
        for delivery in batch:
            self._stranded.add(delivery.id)
            self._running.pop(delivery.seq, None)
            self._lost.discard(delivery.id)

    def _finished(
        self, delivery: DeliveryRecord, outcome: DeliveryOutcome, derived: Derived
    ) -> None:
        self._running.pop(delivery.seq, None)
        self._lost.discard(delivery.id)
        events = len(derived.events.get(delivery.id, ()))
        self._recorded(outcome, events=events, delivery_id=delivery.id, task_id=delivery.task_id)

    async def _guarded(self, delivery: DeliveryRecord, derived: Derived | None) -> None:
        with structlog.contextvars.bound_contextvars(
            delivery_id=delivery.id, source=delivery.source, task_id=delivery.task_id
        ):
            try:
                await self.process(delivery, derived)
            except StorageUnavailable as exc:
                # Released for another attempt once storage answers (or, if this process
                # dies first, taken over by another when its heartbeat stops).
                self._stranded.add(delivery.id)
                log.warning("could not record dispatch outcome", error=str(exc))
            except ClaimLost as exc:
                self._stranded.add(delivery.id)  # releases only a lease still ours
                log.warning("stopped work on a delivery", reason=str(exc))
            except Exception:
                log.exception("dispatch crashed")
            finally:
                self._running.pop(delivery.seq, None)
                self._lost.discard(delivery.id)

    def _check_claim(self, delivery: DeliveryRecord) -> None:
        if delivery.id in self._lost:
            raise ClaimLost("its claim was taken over by another process")
        if not self.liveness.healthy():
            raise ClaimLost("heartbeat failing: another process may be taking over")

    async def process(
        self, delivery: DeliveryRecord, derived: Derived | None = None
    ) -> DeliveryOutcome:
        """One attempt at one leased delivery (its events derived with its batch, or here
        when `derived` is None); returns (and records) how it ended."""
        try:
            if derived is None:
                derived = await self.interpretation.derive([delivery], may_finish=lambda: False)
            if delivery.id in derived.unreadable:
                raise derived.unreadable[delivery.id]
            events = derived.events[delivery.id]
        except PayloadError as exc:
            outcome = DeliveryOutcome(
                delivery.id, DeliveryStatus.QUARANTINED, delivery.attempts + 1, error=exc.reason
            )
            return await self._finish(delivery, outcome, events=0)
        except StorageUnavailable:
            raise
        except asyncio.CancelledError as exc:
            if ours_cancelled():
                raise
            return await self._underivable(delivery, exc)
        except BaseException as exc:  # an interpreter's bug, SystemExit & co.: contained
            return await self._underivable(delivery, exc)

        wanted = [e.event_id for e in events if self._registry.handlers_for(e.name, e)]
        # No handler for any of them (a ledger-only setup): no need to ask what already ran.
        done = await self._storage.succeeded_runs(wanted) if wanted else set()
        runs: list[HandlerRun] = []
        try:
            for event in events:
                with structlog.contextvars.bound_contextvars(
                    event_name=event.name, event_id=event.event_id
                ):
                    for handler in self._registry.handlers_for(event.name, event):
                        if (event.event_id, handler.name) in done:
                            continue
                        self._check_claim(delivery)
                        runs.append(await self.run_handler(handler, event))
        except (ClaimLost, asyncio.CancelledError):
            # The attempt ends here (taken over, or shutdown past its grace), but what ran,
            # ran: recorded, so whoever attempts the delivery next does not run it again.
            with contextlib.suppress(StorageUnavailable):
                await self._storage.record_runs(runs)
            raise
        failures = [r for r in runs if not r.ok]
        if not failures:
            outcome = DeliveryOutcome(
                delivery.id, DeliveryStatus.PROCESSED, delivery.attempts + 1, runs=tuple(runs)
            )
        else:
            summary = "; ".join(f"{r.handler} on {r.event_id}: {r.error}" for r in failures)
            outcome = self._failure(delivery, summary, runs, failures[0].traceback)
        return await self._finish(delivery, outcome, events=len(events))

    async def _underivable(self, delivery: DeliveryRecord, exc: BaseException) -> DeliveryOutcome:
        failure = self._failure(delivery, f"deriving events failed: {exc!r}", ())
        return await self._finish(delivery, failure, events=0)

    async def run_handler(self, handler: RegisteredHandler, event: Event) -> HandlerRun:
        """One isolated run of `handler` on `event` (`HandlerRunner`)."""
        return await self.runner.run(handler, event)

    def _failure(
        self,
        delivery: DeliveryRecord,
        error: str,
        runs: tuple[HandlerRun, ...] | list[HandlerRun],
        tb: str | None = None,
    ) -> DeliveryOutcome:
        return failed(delivery, error, runs, tb, settings=self._settings, rng=self._rng,
                      now=self._clock())  # fmt: skip

    async def _finish(
        self, delivery: DeliveryRecord, outcome: DeliveryOutcome, *, events: int
    ) -> DeliveryOutcome:
        if not await self._storage.finish(outcome, owner=self.owner):
            log.warning("another process holds this delivery now; its attempt counts")
            return outcome
        self._recorded(outcome, events=events)
        return outcome

    def _recorded(self, outcome: DeliveryOutcome, *, events: int, **ids: str | None) -> None:
        self._metrics.dispatched.labels(outcome.status.value).inc()
        # (`ids` given when not bound to the context: a batch's quiet finishes)
        fields = {"status": outcome.status.value, "events": events, "attempt": outcome.attempts}
        fields.update(ids)  # type: ignore[arg-type]
        if outcome.status is DeliveryStatus.PROCESSED:
            log.info("delivery processed", handlers=len(outcome.runs), **fields)
        elif outcome.status is DeliveryStatus.FAILED:
            retry_in = round(outcome.next_attempt_at - self._clock(), 3)
            log.warning(
                "delivery failed, will retry", retry_in=retry_in, error=outcome.error, **fields
            )
        else:
            log.error("delivery gave up", error=outcome.error, **fields)
