"""What the dispatcher did with one delivery: its events and each handler's run of them.

An event can come from several deliveries (an audit repeated by later snapshots) but runs
once per handler, so runs are found by event id, whichever delivery first carried it.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from receiver.storage import Storage
from receiver.storage.tables import core_tables


@dataclass(frozen=True, slots=True)
class Run:
    handler: str
    status: str  # ok | failed
    attempts: int
    last_error: str | None
    traceback: str | None
    updated_at: float


@dataclass(slots=True)
class DeliveredEvent:
    event_id: str
    name: str
    runs: list[Run]


@functools.cache
def _statement() -> sa.Select[Any]:
    t = core_tables()
    de, ev, hr = t.delivery_events, t.events, t.handler_runs
    return (
        sa.select(
            ev.c.event_id,
            ev.c.name,
            hr.c.handler,
            hr.c.status,
            hr.c.attempts,
            hr.c.last_error,
            hr.c.traceback,
            hr.c.updated_at,
        )
        .select_from(
            de.join(ev, ev.c.event_id == de.c.event_id).outerjoin(
                hr, hr.c.event_id == de.c.event_id
            )
        )
        .where(de.c.delivery_id == sa.bindparam("delivery_id"))
        .order_by(de.c.position, hr.c.handler)
    )


async def delivered_events(storage: Storage, delivery_id: str) -> list[DeliveredEvent]:
    """The events derived from `delivery_id`, in order, each with its handler runs."""
    rows = await storage.query(_statement(), {"delivery_id": delivery_id})
    events: dict[str, DeliveredEvent] = {}
    for event_id, name, handler, status, attempts, error, tb, updated in rows:
        event = events.setdefault(event_id, DeliveredEvent(event_id, name, []))
        if handler is not None:
            event.runs.append(Run(handler, status, attempts or 0, error, tb, updated or 0.0))
    return list(events.values())
