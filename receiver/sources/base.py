"""The seam between stored deliveries and typed events."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from receiver.events import Event
from receiver.records import DeliveryRecord


@dataclass(frozen=True, slots=True)
class Parsed:
    """A body read at intake: enough to route it (the task id) and to dispatch it later."""

    task_id: str | None
    value: Any


class SourceAdapter(Protocol):
    """Reads one source kind's bodies and turns a stored delivery into events.

    `parse` runs at intake, after verification and before storing, so an unreadable body is
    quarantined and answered 400. `events` runs in the dispatcher and must be deterministic
    for a given delivery: event ids are derived from content, never from the clock.
    """

    kind: str

    def parse(self, body: bytes, content_type: str) -> Parsed: ...

    def events(self, source: str, delivery: DeliveryRecord) -> list[Event]: ...
