"""The built-in task ledger for Refonte-style sources.

Registered through the ``taskhook.handlers`` entry-point seam like any plugin, and through the
public plugin storage API only (`receiver.plugin_store`): it declares its tables and their
migrations (`tables`), becomes the interpreter of ``refonte`` deliveries and of the snapshots
the ``clarifai`` and ``taskmonk`` pollers synthesize (each batch of snapshots is applied to
the ledger in the dispatcher's transaction, and the events handlers receive are what it
meant: `rules`, `store`), and of Labelbox and Label Studio deliveries where they describe a task's
state (`platforms`), serves ``GET /v1/task/{id}`` and ``GET /v1/tasks`` (`api`), and
offers ``taskhook tasks list|show`` (`cli`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa

from handlers.ledger.api import build_routes
from handlers.ledger.batch import Batch
from handlers.ledger.cli import command
from handlers.ledger.counts import reset_counts
from handlers.ledger.platforms import apply_platform
from handlers.ledger.review_api import build_review_routes
from handlers.ledger.review_store import act, apply_reviews
from handlers.ledger.store import Result, apply_snapshots
from handlers.ledger.tables import MIGRATIONS
from handlers.ledger.ui import READ as UI_READ
from handlers.ledger.ui import build_ui_routes
from receiver.errors import RegistryError
from receiver.plugin_store import Tx
from receiver.records import DeliveryRecord
from receiver.registry import HandlerRegistry, Interpreter
from receiver.sources.base import SourceAdapter
from receiver.sources.label_studio import LabelStudioAdapter
from receiver.sources.labelbox import LabelboxAdapter

# Refonte-shaped task snapshots: called back, or synthesized by the pollers of vendors that
# never call back. The ledger interprets those and document-review callbacks.
SNAPSHOT_KINDS = ("refonte", "clarifai", "taskmonk")
# Platforms whose webhooks describe a task's state in their own shape (`platforms`).
PLATFORMS: tuple[type[SourceAdapter], ...] = (LabelboxAdapter, LabelStudioAdapter)
KINDS = (*SNAPSHOT_KINDS, "document-review", *(p.kind for p in PLATFORMS))
# Retention keeps the delivery each task was last applied from: `taskhook rebuild` applies
# it again, and the task API shows what it said (indexed: `tables`).
RETAINED = "SELECT last_delivery_id FROM ledger_tasks"
_EMPTY = tuple(
    sa.text(f"DELETE FROM {table}")
    for table in ("ledger_tasks", "ledger_task_tags", "ledger_unique_ids", "ledger_history")
)


def register(registry: HandlerRegistry) -> None:
    storage = registry.storage
    if storage is None:
        raise RegistryError("the ledger needs the app's storage")
    storage.declare("ledger", MIGRATIONS)

    async def snapshots(tx: Tx, deliveries: Sequence[DeliveryRecord]) -> list[Result]:
        return await apply_snapshots(Batch(tx), deliveries)

    async def reviews(tx: Tx, deliveries: Sequence[DeliveryRecord]) -> list[Result]:
        return await apply_reviews(Batch(tx), deliveries)

    async def empty() -> None:
        async def op(tx: Tx) -> None:
            for statement in _EMPTY:
                await tx.execute(statement)
            await reset_counts(tx)

        await storage.transaction(op)
        # What the ledger interprets is to be applied again (the core checks, per delivery).
        await storage.rederive(KINDS)

    async def operator(
        task_id: str, action: str, reason: str | None, who: str
    ) -> tuple[int, dict[str, Any]]:
        # Stored as a delivery and applied in one transaction: the answer and the change
        # commit together; the dispatcher then gives its events to handlers.
        now = registry.clock()

        async def op(tx: Tx) -> tuple[int, dict[str, Any], bool]:
            return await act(Batch(tx), task_id, action, reason, who, now=now)

        status, answer, stored = await storage.transaction(op)
        if stored:
            registry.wake()
        return status, answer

    def platform(adapter: SourceAdapter) -> Interpreter:
        async def interpret(tx: Tx, deliveries: Sequence[DeliveryRecord]) -> list[Result]:
            return await apply_platform(Batch(tx), adapter, deliveries)

        return interpret

    for adapter_type in PLATFORMS:
        registry.interpret(adapter_type.kind, platform(adapter_type()))
    registry.interpret("document-review", reviews)
    registry.add_routes(build_review_routes(operator, registry.keys))
    registry.on_reset(empty)
    registry.retain(RETAINED)
    for kind in SNAPSHOT_KINDS:
        registry.interpret(kind, snapshots)
    registry.add_routes(build_routes(storage, registry.keys))
    # The dashboard's task pages (served only while [ui] is enabled).
    registry.add_routes(build_ui_routes(storage, operator))
    registry.add_nav("Tasks", "/ui/tasks", scopes=UI_READ)
    registry.add_command(command(storage))
