"""Refonte/Scale-style task callbacks: ``{"task_id", "status", "response", "task": {...}}``.

The body is a snapshot of the task, not an event. This adapter reads the snapshot and names
what it shows: completed, canceled, errored, and one `task.audited` per audit it carries (the
audit's identity, not the delivery's, makes the event id, so the same audit repeated by later
snapshots is the same event).
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from receiver.bodies import decode
from receiver.errors import PayloadError
from receiver.events import Event, event_id
from receiver.records import DeliveryRecord
from receiver.sources.base import Parsed, field_errors, invalid


class Audit(BaseModel):
    model_config = ConfigDict(extra="allow")

    audited_by: str | None = None
    audited_at: datetime | None = None
    audit_result: str | None = None
    audit_source: str | None = None
    audit_time_secs: float | None = None

    @field_validator("audit_result")
    @classmethod
    def _lower(cls, value: str | None) -> str | None:
        # The API writes results in lower case, prose capitalises them; both are one result.
        return value.lower() if value is not None else None

    def identity(self) -> str:
        stamp = self.audited_at.isoformat() if self.audited_at else ""
        return (
            f"{self.audited_by or ''}|{stamp}|{self.audit_result or ''}|{self.audit_source or ''}"
        )


class RefonteTask(BaseModel):
    model_config = ConfigDict(extra="allow")

    task_id: str
    status: str | None = None
    type: str | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None
    completed_at: datetime | None = None
    project: str | None = None
    batch: str | None = None
    unique_id: str | None = None
    clear_unique_id_on_error: bool | None = None
    params: dict[str, Any] | None = None
    metadata: dict[str, Any] | None = None
    tags: list[str] | None = None
    audits: list[Audit] | None = None
    response: Any = None
    customer_review_status: str | None = None


class RefonteCallback(BaseModel):
    model_config = ConfigDict(extra="allow")

    task_id: str | None = None
    status: str | None = None
    response: Any = None
    task: RefonteTask

    @property
    def effective_task_id(self) -> str:
        return self.task_id or self.task.task_id

    @property
    def effective_status(self) -> str:
        return (self.status or self.task.status or "").lower()


def parse_callback(value: Any) -> RefonteCallback:
    if not isinstance(value, dict):
        raise PayloadError("body must be a JSON object with a `task` object")
    try:
        callback = RefonteCallback.model_validate(value)
    except ValidationError as exc:
        raise invalid("not a task callback", field_errors(exc)) from None
    if callback.task_id and callback.task_id != callback.task.task_id:
        raise PayloadError(
            f"task_id {callback.task_id!r} does not match task.task_id {callback.task.task_id!r}"
        )
    return callback


def task_flag(task: RefonteTask, name: str) -> bool:
    """A boolean the vendor may set on the task itself or in its params."""
    extra = task.model_extra or {}
    return bool(getattr(task, name, None) or extra.get(name) or (task.params or {}).get(name))


class RefonteAdapter:
    kind = "refonte"

    def parse(self, body: bytes, content_type: str) -> Parsed:
        callback = parse_callback(decode(body, content_type))
        return Parsed(task_id=callback.effective_task_id, value=callback)

    def events(self, source: str, delivery: DeliveryRecord) -> list[Event]:
        if delivery.body is None:
            return []
        callback = self.parse(delivery.body, delivery.content_type).value
        assert isinstance(callback, RefonteCallback)
        task = callback.task
        task_id = callback.effective_task_id
        received = datetime.fromtimestamp(delivery.received_at, UTC)
        version_at = task.updated_at or task.completed_at
        version = (
            version_at.isoformat() if version_at else hashlib.sha256(delivery.body).hexdigest()
        )
        snapshot = task.model_dump(mode="json", exclude_none=True)
        response = callback.response if callback.response is not None else task.response

        def make(name: str, payload: dict[str, Any], *parts: str, at: datetime | None) -> Event:
            return Event(
                event_id=event_id(name, source, task_id, *parts),
                name=name,
                source=source,
                task_id=task_id,
                delivery_id=delivery.id,
                occurred_at=at or received,
                payload=payload,
            )

        out: list[Event] = []
        status = callback.effective_status
        base = {"status": status, "response": response, "task": snapshot}
        if status == "completed":
            out.append(make("task.completed", base, version, at=task.completed_at or version_at))
        elif status == "canceled":
            cleared = task_flag(task, "clear_unique_id")
            out.append(
                make("task.canceled", base | {"clear_unique_id": cleared}, version, at=version_at)
            )
        elif status == "error":
            cleared = task_flag(task, "clear_unique_id_on_error")
            error = response.get("error") if isinstance(response, dict) else None
            payload = base | {"clear_unique_id_on_error": cleared, "error": error}
            out.append(make("task.errored", payload, version, at=version_at))
        for audit in task.audits or []:
            payload = {"audit": audit.model_dump(mode="json"), "task": snapshot}
            out.append(make("task.audited", payload, audit.identity(), at=audit.audited_at))
        return out
