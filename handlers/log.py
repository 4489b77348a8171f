"""Built-in: one structured log line per event, so an operator sees what each delivery meant."""

from __future__ import annotations

import structlog

from receiver.events import Event
from receiver.registry import HandlerRegistry

log = structlog.get_logger("taskhook.events")


def log_event(event: Event) -> None:
    log.info(
        event.name,
        event_id=event.event_id,
        task_id=event.task_id,
        occurred_at=event.occurred_at.isoformat(),
    )


def register(registry: HandlerRegistry) -> None:
    registry.on_any(log_event, name="builtin.log")
