"""Document-review pipelines (seed 004): task state callbacks, with optional reports.

A body is ``{"task_id", "status", "project_id"?, "exported"?, "report"?: {"reason"}}`` with
``status`` one of PROCESSING, REVIEWING, COMPLETED, FAILED, DISCARDED, FILTERED. The built-in
ledger enforces the lifecycle; without it, each callback simply names its state.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from receiver.bodies import decode
from receiver.events import Event, event_id
from receiver.records import DeliveryRecord
from receiver.sources.base import Parsed, field_errors, invalid

State = Literal["PROCESSING", "REVIEWING", "COMPLETED", "FAILED", "DISCARDED", "FILTERED"]
STATE_EVENTS = {
    "PROCESSING": "task.processing",
    "REVIEWING": "task.reviewing",
    "COMPLETED": "task.completed",
    "FAILED": "task.failed",
    "DISCARDED": "task.discarded",
    "FILTERED": "task.filtered",
}


class Report(BaseModel):
    model_config = ConfigDict(extra="allow")

    reason: str


class ReviewSnapshot(BaseModel):
    model_config = ConfigDict(extra="allow")

    task_id: str
    status: State
    project_id: str | None = None
    exported: bool = False
    report: Report | None = None


def parse_review(body: bytes, content_type: str) -> ReviewSnapshot:
    try:
        return ReviewSnapshot.model_validate(decode(body, content_type))
    except ValidationError as exc:
        raise invalid("not a document-review task callback", field_errors(exc)) from None


class ReviewAdapter:
    kind = "document-review"

    def parse(self, body: bytes, content_type: str) -> Parsed:
        snapshot = parse_review(body, content_type)
        return Parsed(task_id=snapshot.task_id, value=snapshot)

    def events(self, source: str, delivery: DeliveryRecord) -> list[Event]:
        assert delivery.body is not None
        snapshot = parse_review(delivery.body, delivery.content_type)
        at = datetime.fromtimestamp(delivery.received_at, UTC)
        named: list[tuple[str, dict[str, str]]] = [
            (STATE_EVENTS[snapshot.status], {"status": snapshot.status})
        ]
        if snapshot.report is not None:
            named.append(("task.reported", {"reason": snapshot.report.reason}))
        return [
            Event(event_id=event_id(name, source, snapshot.task_id, delivery.id), name=name,
                  source=source, task_id=snapshot.task_id, delivery_id=delivery.id,
                  occurred_at=at, payload=payload)
            for name, payload in named
        ]  # fmt: skip
