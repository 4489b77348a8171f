"""Document-review tasks in the ledger's tables: deliveries and operator actions.

Both go through `review.check`, so a callback and an operator are held to one lifecycle; what
it refuses is written to the task's history as ``rejected`` with the reason. An operator
action is itself a stored delivery (`receiver.actions`), applied here when it is made and
again, identically, by a rebuild.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from datetime import UTC, datetime
from typing import Any

import orjson

from handlers.ledger import review
from handlers.ledger.store import history as _history
from handlers.ledger.store import iso, record_events
from receiver.actions import action_delivery, parse_action
from receiver.bodies import decode
from receiver.errors import PayloadError
from receiver.events import Event, event_id
from receiver.records import DeliveryRecord
from receiver.storage.synthesized import store_in, unapplied_in

_NO_VERSION = (
    '{"updated_at": null, "audit_count": 0, "newest_audit": null, '
    '"completed_at": null, "status": "review"}'
)


def _current(conn: sqlite3.Connection, task_id: str) -> tuple[str, dict[str, Any]] | None:
    row = conn.execute(
        "SELECT status, task FROM ledger_tasks WHERE task_id = ?", (task_id,)
    ).fetchone()
    return (row[0], orjson.loads(row[1])) if row else None


def _save(
    conn: sqlite3.Connection,
    source: str,
    task: dict[str, Any],
    delivery: DeliveryRecord,
) -> None:
    # Times come from the delivery, not the clock: a rebuild writes what the live ledger wrote.
    at = iso(datetime.fromtimestamp(delivery.received_at, UTC))
    conn.execute(
        """
        INSERT INTO ledger_tasks (task_id, source, status, type, project, batch, unique_id,
            claimed_unique_id, customer_review_status, created_at, updated_at, task, response,
            version, audits, last_delivery_id, ledger_updated_at)
        VALUES (?,?,?,'document-review',?,NULL,NULL,NULL,NULL,?,?,?,NULL,?,'[]',?,?)
        ON CONFLICT (task_id) DO UPDATE SET status = excluded.status,
            project = excluded.project, updated_at = excluded.updated_at, task = excluded.task,
            last_delivery_id = excluded.last_delivery_id,
            ledger_updated_at = excluded.ledger_updated_at
        """,
        (task["task_id"], source, task["status"], task.get("project_id"), at, at,
         orjson.dumps(task).decode(), _NO_VERSION, delivery.id, time.time()),
    )  # fmt: skip
    conn.execute("UPDATE ledger_meta SET generation = generation + 1 WHERE id = 1")


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


def apply_review_delivery(conn: sqlite3.Connection, delivery: DeliveryRecord) -> list[Event]:
    if delivery.operator is not None:
        return apply_action(conn, delivery)[2]
    assert delivery.body is not None
    raw = decode(delivery.body, delivery.content_type)
    snapshot = review.parse(delivery.body, delivery.content_type)
    task_id = snapshot.task_id
    found = _current(conn, task_id)
    current, stored = found if found else (None, {})
    emit = _Emitter(delivery, task_id)
    transition = review.check(current, snapshot.status, exported=bool(stored.get("exported")))
    if not transition.allowed:
        _history(
            conn,
            task_id,
            delivery.id,
            "rejected",
            {"status": snapshot.status, "current": current, "reason": transition.reason},
        )
    else:
        _history(
            conn,
            task_id,
            delivery.id,
            "applied",
            {"status": snapshot.status, "previous_status": current},
        )
        _save(conn, delivery.source, raw, delivery)
        if snapshot.status != current:
            emit(review.EVENTS[snapshot.status], review.event_payload(raw, current))
    if snapshot.report is not None:
        emit(
            "task.reported",
            {"reason": snapshot.report.reason, "report": snapshot.report.model_dump(mode="json")},
        )
    record_events(conn, task_id, delivery.id, emit.events)
    return emit.events


def apply_action(
    conn: sqlite3.Connection, delivery: DeliveryRecord
) -> tuple[int, dict[str, Any], list[Event]]:
    """Apply a stored operator action to the ledger: (HTTP status, answer, events).

    The same code decides the live answer and re-applies the action in a rebuild, so both
    leave the task, its history and its events alike.
    """
    assert delivery.body is not None
    act = parse_action(delivery.body)
    task_id, actor = act.task_id, act.by
    found = _current(conn, task_id)
    if found is None or found[1].get("status") not in review.EVENTS:
        return 404, {"error": "no such document-review task", "task_id": task_id}, []
    current, task = found
    emit = _Emitter(delivery, task_id)
    answer: dict[str, Any] = {"task_id": task_id, "delivery_id": delivery.id}
    if act.action == "report":
        _history(conn, task_id, delivery.id, "report", {"reason": act.reason, "by": actor})
        emit("task.reported", {"reason": act.reason, "action": "report", "by": actor})
        status, answer = 201, answer | {"status": current, "reported": act.reason}
    else:
        target, transition = review.action_target(
            act.action, current, exported=bool(task.get("exported"))
        )
        if not transition.allowed:
            _history(conn, task_id, delivery.id, "rejected", {
                "action": act.action, "current": current, "reason": transition.reason,
                "by": actor,
            })  # fmt: skip
            answer |= {"error": transition.reason, "status": current}
            record_events(conn, task_id, delivery.id, [])
            return 400, answer, []
        changed = task | {"status": target}
        _save(conn, delivery.source, changed, delivery)
        _history(conn, task_id, delivery.id, "action", {
            "action": act.action, "status": target, "previous_status": current, "by": actor,
        })  # fmt: skip
        payload = review.event_payload(changed, current) | {"action": act.action, "by": actor}
        emit(review.EVENTS[target], payload)
        status, answer = 200, answer | {"status": target, "previous_status": current}
    record_events(conn, task_id, delivery.id, emit.events)
    return status, answer, emit.events


def act(
    conn: sqlite3.Connection,
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
    for earlier in unapplied_in(conn, "document-review", task_id):
        with contextlib.suppress(PayloadError):  # unreadable: the dispatcher quarantines it
            apply_review_delivery(conn, earlier)
    found = conn.execute(
        "SELECT source, task FROM ledger_tasks WHERE task_id = ?", (task_id,)
    ).fetchone()
    if found is None or orjson.loads(found[1]).get("status") not in review.EVENTS:
        return 404, {"error": "no such document-review task", "task_id": task_id}, False
    if action == "report" and not reason:
        return 400, {"error": "a report needs a reason", "task_id": task_id}, False
    source = str(found[0])
    stored = store_in(conn, action_delivery(
        source=source, kind="document-review", task_id=task_id, action=action, actor=actor,
        reason=reason, now=now,
    ))  # fmt: skip
    status, answer, _ = apply_action(conn, stored)
    return status, answer, True
