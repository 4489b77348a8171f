"""Deriving the events of a claimed batch in one transaction, and finishing what it can there.

For a batch of claimed deliveries (task heads: distinct tasks, in receipt order) one
transaction, in this order:

1. finds those already interpreted (a second attempt) and takes their stored events; on
   PostgreSQL it also locks every delivery of the batch, so two processes on one delivery
   (a stalled owner and the one that took over) derive it one after the other;
2. gives the others to their kind's interpreter (a ledger: its batch is applied with a few
   statements) or to their source's stateless adapter;
3. saves the events of the batch;
4. finishes, in the same transaction, every delivery that no handler has to see — a
   ledger-only setup commits a whole batch once, claim aside.

What handlers have to see is returned for the dispatcher to run after the commit. A batch
whose interpreter raises is derived again one delivery per transaction, so a bug in one
delivery is that delivery's failure only.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from receiver.errors import PayloadError
from receiver.events import Event, persisted
from receiver.records import DeliveryOutcome, DeliveryRecord, DeliveryStatus, StoredEvent
from receiver.registry import HandlerRegistry
from receiver.sources import SourceAdapter
from receiver.storage import Storage


@dataclass
class Derived:
    """What a batch's transaction made of each delivery (by id)."""

    events: dict[str, list[Event]] = field(default_factory=dict)
    unreadable: dict[str, PayloadError] = field(default_factory=dict)
    finished: dict[str, DeliveryOutcome] = field(default_factory=dict)  # committed with it


class Interpretation:
    def __init__(
        self,
        *,
        storage: Storage,
        registry: HandlerRegistry,
        adapters: Mapping[str, SourceAdapter],
        owner: str,
    ) -> None:
        self._storage = storage
        self._registry = registry
        self._adapters = adapters
        self._owner = owner

    def needs_handlers(self, events: Sequence[Event]) -> bool:
        return any(self._registry.handlers_for(e.name, e) for e in events)

    async def derive(
        self, batch: Sequence[DeliveryRecord], *, may_finish: Callable[[], bool]
    ) -> Derived:
        """One transaction for `batch` (see the module docstring). `may_finish` says whether
        this process still vouches for its leases (a fenced one finishes nothing)."""

        async def op(tx: Any) -> Derived:
            return await self._derive_in(tx, batch, may_finish)

        result: Derived = await self._storage.transaction(op)
        return result

    async def _derive_in(
        self, tx: Any, batch: Sequence[DeliveryRecord], may_finish: Callable[[], bool]
    ) -> Derived:
        out = Derived()
        done = await tx.derived([d.id for d in batch])
        out.events.update(done)
        fresh = [d for d in batch if d.id not in done]
        by_kind: dict[str, list[DeliveryRecord]] = {}
        for delivery in fresh:
            if self._registry.interpreter_for(delivery.kind) is not None:
                by_kind.setdefault(delivery.kind, []).append(delivery)
            else:
                self._adapt(delivery, out)
        for kind, group in by_kind.items():
            interpreter = self._registry.interpreter_for(kind)
            assert interpreter is not None
            results = await interpreter(tx, group)
            if len(results) != len(group):
                raise RuntimeError(
                    f"the {kind!r} interpreter returned {len(results)} results for "
                    f"{len(group)} deliveries"
                )
            for delivery, result in zip(group, results, strict=True):
                if isinstance(result, PayloadError):
                    out.unreadable[delivery.id] = result
                else:
                    out.events[delivery.id] = list(result)
        saved: dict[str, Sequence[StoredEvent]] = {
            d.id: [persisted(e) for e in out.events[d.id]] for d in fresh if d.id in out.events
        }
        await tx.save_many(saved)
        if may_finish():
            await self._finish_quiet(tx, batch, out)
        return out

    def _adapt(self, delivery: DeliveryRecord, out: Derived) -> None:
        adapter = self._adapters.get(delivery.source)
        if adapter is None:
            out.unreadable[delivery.id] = PayloadError(
                f"source {delivery.source!r} is no longer configured"
            )
            return
        try:
            out.events[delivery.id] = adapter.events(delivery.source, delivery)
        except PayloadError as exc:
            out.unreadable[delivery.id] = exc

    async def _finish_quiet(self, tx: Any, batch: Sequence[DeliveryRecord], out: Derived) -> None:
        """Finish with the batch what no handler has to see (and the unreadable)."""
        outcomes: list[DeliveryOutcome] = []
        for d in batch:
            if d.id in out.unreadable:
                outcomes.append(DeliveryOutcome(
                    d.id, DeliveryStatus.QUARANTINED, d.attempts + 1,
                    error=out.unreadable[d.id].reason,
                ))  # fmt: skip
            elif d.id in out.events and not self.needs_handlers(out.events[d.id]):
                outcomes.append(DeliveryOutcome(d.id, DeliveryStatus.PROCESSED, d.attempts + 1))
        if not outcomes:
            return
        counted = await self._storage.finish_batch(tx, outcomes, owner=self._owner)
        for outcome, ok in zip(outcomes, counted, strict=True):
            if ok:
                out.finished[outcome.delivery_id] = outcome
