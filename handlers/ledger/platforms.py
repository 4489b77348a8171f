"""Labelbox and Label Studio deliveries in the ledger: what describes a task's state becomes
a Refonte-shaped snapshot the ledger's rules apply; everything else stays a generic event.

The platforms' own adapters (`receiver.sources.labelbox`, `receiver.sources.label_studio`)
say what a delivery means: a label or annotation made or changed is `task.completed` /
`task.updated` for its data row or task, the rest `labelbox.*` / `label-studio.*`. Here each
state event is turned into the snapshot the vendor would have sent had it sent snapshots —
the task completed, its response the label, its time the event's — and applied like any
other, so the ledger shows the task (`GET /v1/task/{id}`, `/v1/tasks?project=`) and the events
handlers receive are the ledger's (a repeated label changes nothing; a changed one is
`task.updated` with the change). Generic events pass through unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from handlers.ledger.batch import Batch
from handlers.ledger.store import Result, apply_one, iso
from receiver.errors import PayloadError
from receiver.events import Event
from receiver.records import DeliveryRecord
from receiver.sources.base import SourceAdapter
from receiver.sources.refonte import parse_callback

STATE = frozenset({"task.completed", "task.updated"})


def _project(kind: str, payload: dict[str, Any]) -> str | None:
    if kind == "labelbox":
        value = payload.get("project_id")
    else:
        project = payload.get("project")
        value = project.get("id") if isinstance(project, dict) else project
    return str(value) if value is not None else None


def _response(kind: str, payload: dict[str, Any]) -> Any:
    if kind == "labelbox":
        return payload.get("response")
    annotation = payload.get("annotation")
    return annotation.get("result") if isinstance(annotation, dict) else annotation


def snapshot(kind: str, event: Event) -> dict[str, Any]:
    """The Refonte-shaped snapshot a state event stands for."""
    assert event.task_id is not None
    at = iso(event.occurred_at if isinstance(event.occurred_at, datetime) else datetime.now())
    response = _response(kind, event.payload)
    task = {
        "task_id": event.task_id, "type": kind, "status": "completed",
        "project": _project(kind, event.payload), "created_at": at, "updated_at": at,
        "completed_at": at, "response": response,
        "metadata": {"vendor_kind": kind},
    }  # fmt: skip
    return {"task_id": event.task_id, "status": "completed", "response": response, "task": task}


async def apply_platform(
    batch: Batch, adapter: SourceAdapter, deliveries: Sequence[DeliveryRecord]
) -> list[Result]:
    """Each delivery's events: the ledger's for its tasks' states, the adapter's otherwise."""
    derived: list[tuple[DeliveryRecord, list[Event]] | PayloadError] = []
    for delivery in deliveries:
        try:
            derived.append((delivery, adapter.events(delivery.source, delivery)))
        except PayloadError as exc:
            derived.append(exc)
    await batch.load(
        e.task_id for item in derived if not isinstance(item, PayloadError)
        for e in item[1] if e.name in STATE and e.task_id
    )  # fmt: skip
    results: list[Result] = []
    for item in derived:
        if isinstance(item, PayloadError):
            results.append(item)
            continue
        delivery, events = item
        out: list[Event] = []
        for event in events:
            if event.name not in STATE or event.task_id is None:
                out.append(event)
                continue
            value = snapshot(adapter.kind, event)
            out += await apply_one(batch, delivery, value, parse_callback(value))
        results.append(out)
    await batch.flush()
    return results
