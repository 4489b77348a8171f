"""Document-review tasks in the ledger's tables: deliveries and operator actions.

Both go through `review.check`, so a callback and an operator are held to one lifecycle; what
it refuses is written to the task's history as ``rejected`` with the reason.
"""

from __future__ import annotations

import sqlite3
import time
from datetime import UTC, datetime
from typing import Any

import orjson

from handlers.ledger import review
from handlers.ledger.store import history as _history
from handlers.ledger.store import iso, record_events
from receiver.bodies import decode
from receiver.events import Event, event_id
from receiver.records import DeliveryRecord

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
    created: str,
    delivery_id: str | None,
) -> None:
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
        (task["task_id"], source, task["status"], task.get("project_id"), created,
         iso(datetime.now(UTC)), orjson.dumps(task).decode(), _NO_VERSION, delivery_id,
         time.time()),
    )  # fmt: skip
    conn.execute("UPDATE ledger_meta SET generation = generation + 1 WHERE id = 1")


def apply_review_delivery(conn: sqlite3.Connection, delivery: DeliveryRecord) -> list[Event]:
    assert delivery.body is not None
    raw = decode(delivery.body, delivery.content_type)
    snapshot = review.parse(delivery.body, delivery.content_type)
    task_id = snapshot.task_id
    received = datetime.fromtimestamp(delivery.received_at, UTC)
    found = _current(conn, task_id)
    current, stored = found if found else (None, {})
    events: list[Event] = []

    def emit(name: str, payload: dict[str, Any]) -> None:
        events.append(Event(
            event_id=event_id(name, delivery.source, task_id, delivery.id), name=name,
            source=delivery.source, task_id=task_id, delivery_id=delivery.id,
            occurred_at=received, payload=payload,
        ))  # fmt: skip

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
        _save(conn, delivery.source, raw, iso(received), delivery.id)
        if snapshot.status != current:
            emit(review.EVENTS[snapshot.status], review.event_payload(raw, current))
    if snapshot.report is not None:
        emit(
            "task.reported",
            {"reason": snapshot.report.reason, "report": snapshot.report.model_dump(mode="json")},
        )
    record_events(conn, task_id, delivery.id, events)
    return events


def act(
    conn: sqlite3.Connection, task_id: str, action: str, reason: str | None, actor: str
) -> tuple[int, dict[str, Any]]:
    """An operator's action on a document-review task: (HTTP status, answer)."""
    found = _current(conn, task_id)
    if found is None or found[1].get("status") not in review.EVENTS:
        return 404, {"error": "no such document-review task", "task_id": task_id}
    current, task = found
    if action == "report":
        if not reason:
            return 400, {"error": "a report needs a reason", "task_id": task_id}
        _history(conn, task_id, None, "report", {"reason": reason, "by": actor})
        return 201, {"task_id": task_id, "status": current, "reported": reason}
    target, transition = review.action_target(action, current,
                                              exported=bool(task.get("exported")))  # fmt: skip
    if not transition.allowed:
        _history(
            conn,
            task_id,
            None,
            "rejected",
            {"action": action, "current": current, "reason": transition.reason, "by": actor},
        )
        return 400, {"error": transition.reason, "task_id": task_id, "status": current}
    _save(conn, str(conn.execute("SELECT source FROM ledger_tasks WHERE task_id = ?",
                                 (task_id,)).fetchone()[0]),
          task | {"status": target}, iso(datetime.now(UTC)), None)  # fmt: skip
    _history(
        conn,
        task_id,
        None,
        "action",
        {"action": action, "status": target, "previous_status": current, "by": actor},
    )
    return 200, {"task_id": task_id, "status": target, "previous_status": current}
