"""Any Standard Webhooks sender (``{"type", "timestamp", "data"}``) as typed events.

The event name is the payload's ``type``, which must be one the source declares in its
``events`` setting (so handlers register for known names, and a typo is caught at start-up).
A delivery of an undeclared type is quarantined, not dropped: declare it, then retry.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from receiver.bodies import decode
from receiver.config import SourceSettings
from receiver.errors import PayloadError
from receiver.events import Event, event_id
from receiver.records import DeliveryRecord
from receiver.sources.base import Parsed, field_errors, invalid


class Envelope(BaseModel):
    model_config = ConfigDict(extra="allow")

    type: str
    timestamp: datetime | None = None
    data: Any = None


def _subject(data: Any) -> str | None:
    """What the event is about, for per-subject ordering: data.task_id, else data.id."""
    if isinstance(data, dict):
        for key in ("task_id", "id"):
            if isinstance(data.get(key), str | int):
                return str(data[key])
    return None


class GenericAdapter:
    kind = "standard-webhooks"

    def __init__(self, settings: SourceSettings) -> None:
        self._events = frozenset(settings.events)

    def envelope(self, body: bytes, content_type: str) -> Envelope:
        try:
            envelope = Envelope.model_validate(decode(body, content_type))
        except ValidationError as exc:
            raise invalid("not a Standard Webhooks payload", field_errors(exc)) from None
        if envelope.type not in self._events:
            raise PayloadError(
                f"event type {envelope.type!r} is not declared in this source's `events`"
            )
        return envelope

    def parse(self, body: bytes, content_type: str) -> Parsed:
        envelope = self.envelope(body, content_type)
        return Parsed(task_id=_subject(envelope.data), value=envelope)

    def events(self, source: str, delivery: DeliveryRecord) -> list[Event]:
        assert delivery.body is not None
        envelope = self.envelope(delivery.body, delivery.content_type)
        at = envelope.timestamp or datetime.fromtimestamp(delivery.received_at, UTC)
        identity = delivery.sender_delivery_id or delivery.id
        data = envelope.data if isinstance(envelope.data, dict) else {"data": envelope.data}
        return [
            Event(
                event_id=event_id(envelope.type, source, _subject(envelope.data), identity),
                name=envelope.type,
                source=source,
                task_id=_subject(envelope.data),
                delivery_id=delivery.id,
                occurred_at=at if at.tzinfo else at.replace(tzinfo=UTC),
                payload=data,
            )
        ]
