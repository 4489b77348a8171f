"""CloudFactory Throughput (seed 003): ``POST /v1/workstreams/{id}/task_completed``.

Each body reports completed work: who, which use case and task definition, when. It is
validated exactly as the Throughput API documents it, use case and task definition included
(against the workstream's configuration), and becomes one `throughput.recorded` event.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from receiver.bodies import decode
from receiver.config import SourceSettings
from receiver.errors import PayloadError
from receiver.events import Event, event_id
from receiver.records import DeliveryRecord
from receiver.sources.base import Parsed, field_errors, invalid


class TaskCompleted(BaseModel):
    model_config = ConfigDict(extra="allow")

    worker_id: str = Field(min_length=1)
    use_case_id: str = Field(min_length=1)
    task_definition_id: str = Field(min_length=1)
    task_started_at: datetime
    task_completed_at: datetime
    task_id: str | None = None
    task_url: str | None = None
    task_count: float = 1
    subtask_count: float | None = None
    duration: float | None = None
    task_created_at: datetime | None = None
    data_source: Literal["api", "csv_manual", "csv_automated"] | None = None
    task_metadata: dict[str, Any] | None = None
    task_measurements: dict[str, Any] | None = None
    dataset_id: str | None = None
    asset_id: str | None = None
    unique_id: str | None = None
    replace_duplicate: bool = False


def _utc(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


class CloudFactoryAdapter:
    kind = "cloudfactory"

    def __init__(self, settings: SourceSettings) -> None:
        self._workstream = settings.workstream_id
        self._use_cases = frozenset(settings.use_case_ids)
        self._task_definitions = frozenset(settings.task_definition_ids)

    def record(self, body: bytes, content_type: str) -> TaskCompleted:
        value = decode(body, content_type)
        if not isinstance(value, dict):
            raise PayloadError("body must be a JSON object")
        try:
            record = TaskCompleted.model_validate(value)
        except ValidationError as exc:
            raise invalid("invalid task_completed", field_errors(exc)) from None
        fields = []
        if self._use_cases and record.use_case_id not in self._use_cases:
            fields.append({"field": "use_case_id",
                           "message": "not a use case of this workstream"})  # fmt: skip
        if self._task_definitions and record.task_definition_id not in self._task_definitions:
            fields.append({"field": "task_definition_id",
                           "message": "not a task definition of this workstream"})  # fmt: skip
        if _utc(record.task_completed_at) < _utc(record.task_started_at):
            fields.append({"field": "task_completed_at",
                           "message": "is before task_started_at"})  # fmt: skip
        if fields:
            raise invalid("invalid task_completed", fields)
        return record

    def parse(self, body: bytes, content_type: str) -> Parsed:
        record = self.record(body, content_type)
        # Deliveries about one unique_id are applied in receipt order (replace semantics).
        key = record.unique_id and f"{record.use_case_id}/{record.task_definition_id}/"
        return Parsed(task_id=f"{key}{record.unique_id}" if key else record.task_id, value=record)

    def events(self, source: str, delivery: DeliveryRecord) -> list[Event]:
        assert delivery.body is not None
        record = self.record(delivery.body, delivery.content_type)
        started, completed = _utc(record.task_started_at), _utc(record.task_completed_at)
        duration = record.duration
        if duration is None:
            duration = (completed - started).total_seconds()
        payload = record.model_dump(mode="json") | {
            "workstream_id": self._workstream or source,
            "duration": duration,
            "task_count": record.task_count,
        }
        identity = (
            f"{record.use_case_id}/{record.task_definition_id}/{record.unique_id}"
            if record.unique_id
            else delivery.id
        )
        return [
            Event(
                event_id=event_id(
                    "throughput.recorded", source, record.task_id, identity, delivery.id
                ),
                name="throughput.recorded",
                source=source,
                task_id=record.task_id,
                delivery_id=delivery.id,
                occurred_at=completed,
                payload=payload,
            )
        ]
