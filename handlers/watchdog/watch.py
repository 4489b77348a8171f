"""The watchdog at work: callbacks that arrive clear expectations; deadlines that pass do not.

- `clearing` is the handler of every event: an event about an expected task (or one whose
  delivery names an expected unique_id) marks the expectation arrived with the delivery's
  id. The update is conditional, so the dispatcher retrying the handler changes nothing.
- `Sweep.run` is the periodic job (``[watchdog] check_seconds``): waiting expectations past
  their deadline become overdue (one replica wins each), each raises ``task.late`` once,
  and those of a task whose source has a ``[reconcile]`` section are asked for from the
  vendor (once per deadline): what it says goes through the intake and, if it means
  something, clears the expectation through `clearing` like a callback would.
"""

from __future__ import annotations

from collections.abc import Callable

import structlog

from handlers.watchdog import arrivals
from handlers.watchdog.store import Expectation, Expectations, iso
from receiver.events import Event
from receiver.plugin_store import PluginStorage
from receiver.registry import Handler, HandlerRegistry
from receiver.signals import Signal

log = structlog.get_logger("taskhook.watchdog")

Clock = Callable[[], float]
PAGE = "/ui/expected"


def clearing(store: Expectations, storage: PluginStorage, clock: Clock) -> Handler:
    async def clear(event: Event) -> None:
        source, task_id = event.source, event.task_id
        if (
            task_id is not None
            and await store.expecting_task(source, task_id)
            and await store.arrive_task(source, task_id, event.delivery_id, clock())
        ):
            log.info("expected callback arrived", source=source, task_id=task_id,
                     delivery_id=event.delivery_id, event_name=event.name)  # fmt: skip
        if not await store.expecting_unique(source):
            return
        named = event.payload.get("unique_id")
        unique_id = named if isinstance(named, str) and named else None
        if unique_id is None:
            # The ledger's task events do not carry it; the delivery's body does.
            unique_id = await arrivals.unique_id_in(storage, event.delivery_id)
        if unique_id is not None and await store.arrive_unique(
            source, unique_id, task_id, event.delivery_id, clock()
        ):
            log.info(
                "expected callback arrived", source=source, unique_id=unique_id,
                task_id=task_id, delivery_id=event.delivery_id, event_name=event.name,
            )  # fmt: skip

    return clear


def late_signal(e: Expectation, now: float) -> Signal:
    what = f"task {e.task_id}" if e.subject.startswith("task:") else f"unique_id {e.unique_id}"
    details = {
        "expectation_id": e.id, "source": e.source, "task_id": e.task_id,
        "unique_id": e.unique_id, "deadline": iso(e.deadline),
        "registered_at": iso(e.registered_at), "registered_by": e.registered_by,
        "reconcile": e.reconcile, "note": e.note,
    }  # fmt: skip
    summary = f"no callback for {what} of {e.source} by its deadline {iso(e.deadline)}"
    return Signal("task.late", e.key, summary, at=now, details=details, link=PAGE)


class Sweep:
    def __init__(self, registry: HandlerRegistry, store: Expectations) -> None:
        assert registry.settings is not None
        self._registry = registry
        self._settings = registry.settings
        self._store = store

    def plan(self, e: Expectation) -> str:
        """Whether the vendor of an overdue expectation is to be asked, or why not."""
        if not self._settings.watchdog.reconcile_overdue:
            return "skipped: reconcile_overdue is off"
        if e.task_id is None:
            return "skipped: no task id to ask for"
        source = self._settings.sources.get(e.source)
        if source is None or source.reconcile is None:
            return "skipped: the source has no [reconcile] section"
        return "pending"

    async def run(self) -> None:
        now = self._registry.clock()
        for e in await self._store.sweep(now, self.plan):
            log.warning(
                "expected callback is late", expectation_id=e.id, source=e.source,
                task_id=e.task_id, unique_id=e.unique_id, deadline=iso(e.deadline),
            )  # fmt: skip
            await self._registry.signal(late_signal(e, now))
        for e in await self._store.to_reconcile(now):
            await self._store.reconciled(e.id, await self._ask(e))
        await self._store.prune(now)

    async def _ask(self, e: Expectation) -> str:
        assert e.task_id is not None
        bound = log.bind(expectation_id=e.id, source=e.source, task_id=e.task_id)
        try:
            asked = await self._registry.reconcile_task(e.source, e.task_id)
        except Exception:
            # The targeted reconcile logs and answers False on a vendor's failure; anything
            # else is a bug, which must not stop the sweep of the other expectations.
            bound.exception("targeted reconcile crashed")
            return "failed"
        bound.info("asked the vendor for an overdue task", asked=asked)
        return "asked" if asked else "failed"
