"""The built-in task ledger for Refonte-style sources.

Registered through the ``taskhook.handlers`` entry-point seam like any plugin: it becomes the
interpreter of ``refonte`` deliveries and of the snapshots the ``clarifai`` and ``taskmonk``
pollers synthesize (each snapshot is applied to the ledger, and the events
handlers receive are what it meant: `rules`), keeps its tables in the app's database
(`store`), serves ``GET /v1/task/{id}`` and ``GET /v1/tasks`` (`api`), and offers
``taskhook tasks list|show`` (`cli`).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Awaitable, Callable
from typing import Any

from handlers.ledger.api import build_routes
from handlers.ledger.cli import command
from handlers.ledger.review_api import build_review_routes
from handlers.ledger.review_store import act, apply_review_delivery
from handlers.ledger.store import apply_delivery, create_schema, derived_events, reset
from receiver.errors import RegistryError
from receiver.events import Event
from receiver.records import DeliveryRecord
from receiver.registry import HandlerRegistry

# Refonte-shaped task snapshots: called back, or synthesized by the pollers of vendors that
# never call back. The ledger interprets those and document-review callbacks.
SNAPSHOT_KINDS = ("refonte", "clarifai", "taskmonk")
KINDS = (*SNAPSHOT_KINDS, "document-review")
Apply = Callable[[sqlite3.Connection, DeliveryRecord], list[Event]]
# Retention keeps the delivery each task was last applied from: `taskhook rebuild` applies
# it again, and the task API shows what it said. The index makes the pruner's question
# ("which of these ids are kept?") a lookup per id, not a scan of the ledger per batch.
RETAINED = "SELECT last_delivery_id FROM ledger_tasks"
RETAINED_INDEX = (
    "CREATE INDEX IF NOT EXISTS ledger_tasks_last_delivery ON ledger_tasks(last_delivery_id)"
)


def register(registry: HandlerRegistry) -> None:
    storage = registry.storage
    if storage is None or not hasattr(storage, "transact"):
        raise RegistryError("the ledger needs the app's SQL storage backend")

    async def create() -> None:
        def op(conn: sqlite3.Connection) -> None:
            create_schema(conn)
            conn.execute(RETAINED_INDEX)

        await storage.transact(op)

    def once(apply: Apply) -> Callable[[DeliveryRecord], Awaitable[list[Event]]]:
        async def interpret(delivery: DeliveryRecord) -> list[Event]:
            def op(conn: sqlite3.Connection) -> list[Event]:
                done = derived_events(conn, delivery.id)
                return done if done is not None else apply(conn, delivery)

            events: list[Event] = await storage.transact(op)
            return events

        return interpret

    interpret = once(apply_delivery)
    interpret_review = once(apply_review_delivery)

    async def empty() -> None:
        def op(conn: sqlite3.Connection) -> None:
            reset(conn)
            # What the ledger interprets is to be applied again (`derived_events` guards).
            conn.execute(
                "UPDATE deliveries SET events_derived = 0 WHERE kind IN "
                f"({', '.join('?' * len(KINDS))})",
                KINDS,
            )

        await storage.transact(op)

    async def operator(
        task_id: str, action: str, reason: str | None, who: str
    ) -> tuple[int, dict[str, Any]]:
        # Stored as a delivery and applied in one transaction: the answer and the change
        # commit together; the dispatcher then gives its events to handlers.
        now = registry.clock()
        status, answer, stored = await storage.transact(
            lambda conn: act(conn, task_id, action, reason, who, now=now)
        )
        if stored:
            registry.wake()
        return status, answer

    registry.interpret("document-review", interpret_review)
    registry.add_routes(build_review_routes(operator, registry.keys))
    registry.on_startup(create)
    registry.on_reset(empty)
    registry.retain(RETAINED)
    for kind in SNAPSHOT_KINDS:
        registry.interpret(kind, interpret)
    registry.add_routes(build_routes(storage.query, registry.keys))
    registry.add_command(command(storage.query))
