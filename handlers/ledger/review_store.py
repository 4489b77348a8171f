"""Document-review tasks in the ledger's tables: deliveries and operator actions.

Both go through `review.check`, so a callback and an operator are held to one lifecycle; what
it refuses is written to the task's history as ``rejected`` with the reason. An operator
action is itself a stored delivery (`receiver.actions`), applied here when it is made and
again, identically, by a rebuild.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import orjson

from handlers.ledger import review
from handlers.ledger.batch import Batch
from handlers.ledger.store import Result, iso, record_events
from receiver.actions import action_delivery, parse_action
from receiver.bodies import decode
from receiver.errors import PayloadError
from receiver.events import Event, event_id
from receiver.records import DeliveryRecord

_NO_VERSION = (
    '{"updated_at": null, "audit_count": 0, "newest_audit": null, '
    '"completed_at": null, "status": "review"}'
)


def _json(value: Any) -> str:
    return orjson.dumps(value).decode()


async def _current(batch: Batch, task_id: str) -> tuple[str, dict[str, Any]] | None:
    await batch.load([task_id])
    row = batch.row(task_id)
    return (row["status"], orjson.loads(row["task"])) if row else None


def _save(batch: Batch, source: str, task: dict[str, Any], delivery: DeliveryRecord) -> None:
    # Times come from the delivery, not the clock: a rebuild writes what the live ledger wrote.
    at = iso(datetime.fromtimestamp(delivery.received_at, UTC))
    prior = batch.row(task["task_id"])
    changed = {
        "status": task["status"], "project": task.get("project_id"), "updated_at": at,
        "task": _json(task), "last_delivery_id": delivery.id, "ledger_updated_at": time.time(),
    }  # fmt: skip
    if prior is not None:
        row = prior | changed
    else:
        row = changed | {
            "task_id": task["task_id"], "source": source, "type": "document-review",
            "batch": None, "unique_id": None, "claimed_unique_id": None,
            "customer_review_status": None, "created_at": at, "response": None,
            "version": _NO_VERSION, "audits": "[]", "completed_at": None,
        }  # fmt: skip
    batch.put(row, tags=[], prior_tags=[])


class _Emitter:
    """Collects a delivery's events, each with its content-derived id."""

    def __init__(self, delivery: DeliveryRecord, task_id: str) -> None:
        self.delivery = delivery
        self.task_id = task_id
        self.events: list[Event] = []

    def __call__(self, name: str, payload: dict[str, Any]) -> None:
        d = self.delivery
        self.events.append(Event(
            event_id=event_id(name, d.source, self.task_id, d.id), name=name, source=d.source,
            task_id=self.task_id, delivery_id=d.id,
            occurred_at=datetime.fromtimestamp(d.received_at, UTC), payload=payload,
        ))  # fmt: skip


async def apply_reviews(batch: Batch, deliveries: Sequence[DeliveryRecord]) -> list[Result]:
    """Apply each document-review delivery in order; its events, or why it is unreadable."""
    results: list[Result] = []
    for delivery in deliveries:
        try:
            results.append(await apply_review_delivery(batch, delivery))
        except PayloadError as exc:
            results.append(exc)
    await batch.flush()
    return results


async def apply_review_delivery(batch: Batch, delivery: DeliveryRecord) -> list[Event]:
    if delivery.operator is not None:
        return (await apply_action(batch, delivery))[2]
    assert delivery.body is not None
    raw = decode(delivery.body, delivery.content_type)
    snapshot = review.parse(delivery.body, delivery.content_type)
    task_id = snapshot.task_id
    found = await _current(batch, task_id)
    current, stored = found if found else (None, {})
    emit = _Emitter(delivery, task_id)
    transition = review.check(current, snapshot.status, exported=bool(stored.get("exported")))
    if not transition.allowed:
        batch.history(task_id, delivery.id, "rejected", _json(
            {"status": snapshot.status, "current": current, "reason": transition.reason}
        ))  # fmt: skip
    else:
        batch.history(task_id, delivery.id, "applied", _json(
            {"status": snapshot.status, "previous_status": current}
        ))  # fmt: skip
        _save(batch, delivery.source, raw, delivery)
        if snapshot.status != current:
            emit(review.EVENTS[snapshot.status], review.event_payload(raw, current))
    if snapshot.report is not None:
        emit(
            "task.reported",
            {"reason": snapshot.report.reason, "report": snapshot.report.model_dump(mode="json")},
        )
    record_events(batch, task_id, delivery.id, emit.events)
    return emit.events


async def apply_action(
    batch: Batch, delivery: DeliveryRecord
) -> tuple[int, dict[str, Any], list[Event]]:
    """Apply a stored operator action to the ledger: (HTTP status, answer, events).

    The same code decides the live answer and re-applies the action in a rebuild, so both
    leave the task, its history and its events alike.
    """
    assert delivery.body is not None
    act = parse_action(delivery.body)
    task_id, actor = act.task_id, act.by
    found = await _current(batch, task_id)
    if found is None or found[1].get("status") not in review.EVENTS:
        return 404, {"error": "no such document-review task", "task_id": task_id}, []
    current, task = found
    emit = _Emitter(delivery, task_id)
    answer: dict[str, Any] = {"task_id": task_id, "delivery_id": delivery.id}
    if act.action == "report":
        batch.history(task_id, delivery.id, "report", _json({"reason": act.reason, "by": actor}))
        emit("task.reported", {"reason": act.reason, "action": "report", "by": actor})
        status, answer = 201, answer | {"status": current, "reported": act.reason}
    else:
        target, transition = review.action_target(
            act.action, current, exported=bool(task.get("exported"))
        )
        if not transition.allowed:
            batch.history(task_id, delivery.id, "rejected", _json({
                "action": act.action, "current": current, "reason": transition.reason,
                "by": actor,
            }))  # fmt: skip
            answer |= {"error": transition.reason, "status": current}
            return 400, answer, []
        changed = task | {"status": target}
        _save(batch, delivery.source, changed, delivery)
        batch.history(task_id, delivery.id, "action", _json({
            "action": act.action, "status": target, "previous_status": current, "by": actor,
        }))  # fmt: skip
        payload = review.event_payload(changed, current) | {"action": act.action, "by": actor}
        emit(review.EVENTS[target], payload)
        status, answer = 200, answer | {"status": target, "previous_status": current}
    record_events(batch, task_id, delivery.id, emit.events)
    return status, answer, emit.events


async def act(
    batch: Batch,
    task_id: str,
    action: str,
    reason: str | None,
    actor: str,
    *,
    now: float,
) -> tuple[int, dict[str, Any], bool]:
    """An operator's action on a document-review task: (HTTP status, answer, stored).

    What the task's callbacks said before the action is applied first (receipt order, as a
    rebuild will apply it). Then a request that names no known task, or a report without a
    reason, is refused as it stands; anything else is stored as a delivery and applied in
    this one transaction.
    """
    tx = batch.tx
    await batch.load([task_id])
    for earlier in await tx.pending("document-review", task_id):
        with contextlib.suppress(PayloadError):  # unreadable: the dispatcher quarantines it
            events = await apply_review_delivery(batch, earlier)
            await tx.save_events(earlier.id, events)
    row = batch.row(task_id)
    if row is None or orjson.loads(row["task"]).get("status") not in review.EVENTS:
        await batch.flush()
        return 404, {"error": "no such document-review task", "task_id": task_id}, False
    if action == "report" and not reason:
        await batch.flush()
        return 400, {"error": "a report needs a reason", "task_id": task_id}, False
    stored = await tx.store_delivery(action_delivery(
        source=str(row["source"]), kind="document-review", task_id=task_id, action=action,
        actor=actor, reason=reason, now=now,
    ))  # fmt: skip
    status, answer, events = await apply_action(batch, stored)
    await batch.flush()
    await tx.save_events(stored.id, events)
    return status, answer, True
