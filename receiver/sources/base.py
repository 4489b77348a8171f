"""The seam between stored deliveries and typed events."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from pydantic import ValidationError

from receiver.errors import PayloadError
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


def invalid(what: str, fields: list[dict[str, str]]) -> PayloadError:
    """A `PayloadError` naming each bad field: `what` says what the body failed to be."""
    reason = "; ".join(f"{f['field']}: {f['message']}" for f in fields)
    return PayloadError(f"{what}: {reason}", fields)


def field_errors(exc: ValidationError) -> list[dict[str, str]]:
    return [
        {"field": ".".join(str(p) for p in err["loc"]) or "body", "message": err["msg"]}
        for err in exc.errors()
    ]
