"""``taskhook rebuild``: derived state again from the stored deliveries.

Without ``--handler``: every plugin empties its derived state (the ledger its tables), then
each stored delivery is interpreted again in receipt order. Events come out with the same
content-derived ids, so no handler that already ran on them runs again.

With ``--handler NAME``: the events already derived from history are offered to that one
handler (a newly added one), skipping those it already handled; nothing else runs, and every
run is recorded as in dispatch.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from receiver.app import TaskhookApp
from receiver.errors import RegistryError
from receiver.events import Event
from receiver.progress import Board, Phase, board
from receiver.records import DeliveryRecord, DeliveryStatus, HandlerRun
from receiver.registry import RegisteredHandler
from receiver.storage.base import stream_deliveries

_SKIP = (DeliveryStatus.DUPLICATE, DeliveryStatus.QUARANTINED)
BATCH = 500


@dataclass
class RebuildSummary:
    deliveries: int = 0
    events: int = 0
    runs_ok: int = 0
    runs_failed: int = 0

    def render(self) -> str:
        text = f"{self.deliveries} deliveries, {self.events} events"
        if self.runs_ok or self.runs_failed:
            text += f"; handler runs: {self.runs_ok} ok, {self.runs_failed} failed"
        return text


async def rebuild(
    app: TaskhookApp, *, batch: int = BATCH, shown: Board | None = None
) -> RebuildSummary:
    """Empty derived state, then interpret every stored delivery again in receipt order, a
    batch per transaction through the dispatcher's own path (`receiver.interpret`). What it
    has read of how many shows on `shown` (a board of its own if None) as phase "read"."""
    summary = RebuildSummary()
    for hook in app.registry.reset_hooks:
        await hook()
    run: list[DeliveryRecord] = []
    with _board(shown) as progress:
        read = progress.phase("read", (await app.storage.list_deliveries(limit=1)).total)
        await _rebuild(app, summary, run, read, batch)
        progress.finish(read)
    return summary


@contextmanager
def _board(shown: Board | None) -> Iterator[Board]:
    if shown is not None:  # the caller's: it closes it
        yield shown
        return
    with board() as own:
        yield own


async def _rebuild(
    app: TaskhookApp, summary: RebuildSummary, run: list[DeliveryRecord], read: Phase, batch: int
) -> None:

    async def apply() -> None:
        derived = await app.dispatcher.interpretation.derive(run, may_finish=lambda: False)
        summary.deliveries += len(run)
        summary.events += sum(len(events) for events in derived.events.values())
        run.clear()

    async for delivery in stream_deliveries(app.storage, batch=batch):
        read.advance()
        interpreter = app.registry.interpreter_for(delivery.kind)
        if delivery.body is None or delivery.status in _SKIP or interpreter is None:
            continue
        if run and (len(run) >= batch or run[-1].kind != delivery.kind):
            await apply()  # one kind per batch: each task's deliveries stay in order
        run.append(delivery)
    if run:
        await apply()


async def backfill(
    app: TaskhookApp, handler_name: str, *, shown: Board | None = None
) -> RebuildSummary:
    found = [h for h in app.registry.handlers if h.name == handler_name]
    if not found:
        known = ", ".join(h.name for h in app.registry.handlers) or "none"
        raise RegistryError(f"no handler named {handler_name!r} (registered: {known})")
    with _board(shown) as progress:
        read = progress.phase("read", (await app.storage.list_deliveries(limit=1)).total)
        summary = await _backfill(app, found[0], read)
        progress.finish(read)
    return summary


async def _backfill(app: TaskhookApp, handler: RegisteredHandler, read: Phase) -> RebuildSummary:
    summary = RebuildSummary()
    async for delivery in stream_deliveries(app.storage):
        read.advance()
        if delivery.status in _SKIP or not delivery.events_derived:
            continue  # not yet dispatched: the dispatcher will run every handler on it
        stored = await app.storage.load_events(delivery.id)
        events = [Event.model_validate_json(s.payload_json) for s in stored]
        done = await app.storage.succeeded_runs([e.event_id for e in events])
        runs: list[HandlerRun] = []
        for event in events:
            wanted = handler.events is None or event.name in handler.events
            if wanted and (event.event_id, handler.name) not in done:
                runs.append(await app.dispatcher.run_handler(handler, event))
        if runs:
            await app.storage.record_runs(runs)
        summary.deliveries += 1
        summary.events += len(events)
        summary.runs_ok += sum(r.ok for r in runs)
        summary.runs_failed += sum(not r.ok for r in runs)
    return summary
