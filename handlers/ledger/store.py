"""Applying Refonte-shaped snapshots to the ledger, a batch per transaction.

`apply_snapshots` runs inside the core's transaction for a batch of deliveries of distinct
tasks: it parses them, loads (and on PostgreSQL locks) their tasks and unique_id holders in
one query each (`batch.Batch`), asks `rules.apply` what each delivery makes true — in receipt
order, each seeing what the ones before it did — and writes tasks, tags, bindings, history
and counts with one statement per table. It returns each delivery's events (the core saves
them in the same transaction) or the `PayloadError` that makes it unreadable.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import orjson

from handlers.ledger.batch import Batch, Row
from handlers.ledger.rules import Outcome, TaskState, Version, apply
from handlers.ledger.tables import completed_at
from receiver.bodies import decode
from receiver.errors import PayloadError
from receiver.events import Event, event_id
from receiver.records import DeliveryRecord
from receiver.sources.refonte import RefonteCallback, parse_callback

Result = list[Event] | PayloadError


def iso(value: datetime) -> str:
    """UTC with fixed precision, so text order is time order (keyset paging relies on it)."""
    aware = value if value.tzinfo else value.replace(tzinfo=UTC)
    return aware.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _dt(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def _version_json(v: Version) -> str:
    return orjson.dumps(
        {
            "updated_at": v.updated_at.isoformat() if v.updated_at else None,
            "audit_count": v.audit_count,
            "newest_audit": v.newest_audit.isoformat() if v.newest_audit else None,
            "completed_at": v.completed_at.isoformat() if v.completed_at else None,
            "status": v.status,
        }
    ).decode()


def _version(raw: str) -> Version:
    d = orjson.loads(raw)
    return Version(
        _dt(d["updated_at"]),
        d["audit_count"],
        _dt(d["newest_audit"]),
        _dt(d["completed_at"]),
        d["status"],
    )


def state_of(row: Row) -> TaskState:
    return TaskState(
        task_id=row["task_id"],
        status=row["status"],
        version=_version(row["version"]),
        task=orjson.loads(row["task"]),
        response=orjson.loads(row["response"]) if row["response"] is not None else None,
        audits=frozenset(orjson.loads(row["audits"])),
        unique_id=row["unique_id"],
        customer_review_status=row["customer_review_status"],
    )


def _json(value: Any) -> str:
    return orjson.dumps(value).decode()


def record_events(batch: Batch, task_id: str, delivery_id: str, events: list[Event]) -> None:
    """Put a delivery's events on the task's history."""
    for e in events:
        batch.history(
            task_id, delivery_id, "event", _json(e.payload), name=e.name, event=e.event_id
        )


async def apply_snapshots(batch: Batch, deliveries: Sequence[DeliveryRecord]) -> list[Result]:
    """Apply each delivery in order; its events, or why it cannot be read."""
    parsed: list[tuple[DeliveryRecord, dict[str, Any], RefonteCallback] | PayloadError] = []
    for delivery in deliveries:
        try:
            assert delivery.body is not None
            value = decode(delivery.body, delivery.content_type)
            parsed.append((delivery, value, parse_callback(value)))
        except PayloadError as exc:
            parsed.append(exc)
    good = [p for p in parsed if not isinstance(p, PayloadError)]
    await batch.load(cb.effective_task_id for _, _, cb in good)
    # The unique_ids named now and those held before: both may change hands.
    held = (batch.row(cb.effective_task_id) for _, _, cb in good)
    await batch.load_holders(
        [cb.task.unique_id for _, _, cb in good if cb.task.unique_id]
        + [r["unique_id"] for r in held if r is not None and r["unique_id"]]
    )
    results: list[Result] = []
    for item in parsed:
        if isinstance(item, PayloadError):
            results.append(item)
            continue
        delivery, value, callback = item
        results.append(await apply_one(batch, delivery, value, callback))
    await batch.flush()
    return results


async def apply_one(
    batch: Batch, delivery: DeliveryRecord, value: dict[str, Any], callback: RefonteCallback
) -> list[Event]:
    task_id = callback.effective_task_id
    source = delivery.source
    prior_row = batch.row(task_id)
    prior = state_of(prior_row) if prior_row is not None else None
    named = callback.task.unique_id
    holder = batch.holder(named) if named else None
    outcome = apply(prior, callback, holder=holder, raw_task=value["task"])
    received = datetime.fromtimestamp(delivery.received_at, UTC)
    events = [
        Event(
            event_id=event_id(d.name, source, task_id, d.identity),
            name=d.name,
            source=source,
            task_id=task_id,
            delivery_id=delivery.id,
            occurred_at=d.occurred_at or received,
            payload=d.payload,
        )
        for d in outcome.events
    ]
    if outcome.stale:
        assert prior is not None
        batch.history(task_id, delivery.id, "stale", _json({
            "status": callback.effective_status,
            "snapshot_updated_at": callback.task.updated_at.isoformat()
            if callback.task.updated_at else None,
            "applied_version": prior.version.key(),
        }))  # fmt: skip
    else:
        batch.history(task_id, delivery.id, "applied", _json({
            "status": outcome.state.status, "previous_status": prior.status if prior else None,
            "version": outcome.state.version.key(),
        }))  # fmt: skip
        conflict = next((e for e in outcome.events if e.name == "unique_id.conflict"), None)
        claimed = conflict.payload["unique_id"] if conflict else None
        prior_tags = (prior.task.get("tags") or []) if prior else []
        _save_task(batch, source, delivery, outcome, claimed, prior_row, prior_tags)
        if outcome.release:
            if batch.holder(outcome.release) == task_id:
                batch.bind(outcome.release, None)
            await _hand_over(batch, outcome.release, task_id, delivery.id)
        if outcome.bind:
            batch.bind(outcome.bind, task_id)
    record_events(batch, task_id, delivery.id, events)
    return events


def _save_task(
    batch: Batch,
    source: str,
    delivery: DeliveryRecord,
    outcome: Outcome,
    claimed: str | None,
    prior_row: Row | None,
    prior_tags: list[str],
) -> None:
    state = outcome.state
    task = state.task
    if prior_row is not None:
        created_at = prior_row["created_at"]  # kept from the first time the task was seen
    else:
        created = _dt(task.get("created_at")) or datetime.fromtimestamp(delivery.received_at, UTC)
        created_at = iso(created)
    updated = _dt(task.get("updated_at"))
    batch.put(
        {
            "task_id": state.task_id, "source": source, "status": state.status,
            "type": task.get("type"), "project": task.get("project"), "batch": task.get("batch"),
            "unique_id": state.unique_id, "claimed_unique_id": claimed,
            "customer_review_status": state.customer_review_status, "created_at": created_at,
            "updated_at": iso(updated) if updated else None, "task": _json(task),
            "response": _json(state.response), "version": _version_json(state.version),
            "audits": _json(sorted(state.audits)), "last_delivery_id": delivery.id,
            "ledger_updated_at": time.time(), "completed_at": completed_at(task),
        },
        tags=[str(t) for t in task.get("tags") or []],
        prior_tags=[str(t) for t in prior_tags],
    )  # fmt: skip


async def _hand_over(batch: Batch, unique_id: str, released_by: str, delivery_id: str) -> None:
    """A released unique_id goes to the newest task that claimed it while it was held.

    That claim was a conflict only because deliveries arrived out of order (the vendor lets a
    task take an id only once it is free), so the ledger ends as in-order delivery would.
    """
    claimant = await batch.claimant(unique_id, released_by)
    if claimant is None:
        return
    row = batch.row(claimant)
    assert row is not None
    tags = [str(t) for t in orjson.loads(row["task"]).get("tags") or []]
    batch.put(row | {"unique_id": unique_id, "claimed_unique_id": None}, tags=tags, prior_tags=tags)
    batch.bind(unique_id, claimant)
    batch.history(claimant, delivery_id, "unique_id", _json(
        {"unique_id": unique_id, "bound_after_release_by": released_by}
    ))  # fmt: skip
