"""The built-in watchdog plugin: callbacks that were expected and never came.

An operator (or the code that creates tasks) registers task ids or unique_ids with a
deadline (``POST /v1/tasks/expected``, ``taskhook expect``: `api`, `cli`). A callback
about the task that means something — any event the ledger derives for it — clears it
(`watch.clearing`). A deadline that passes makes it overdue: listed first on the
dashboard's ``/ui/expected`` (`ui`), raised once as a ``task.late`` signal (which the
alerts plugin posts), and, when its source has a ``[reconcile]`` section, answered by
asking the vendor for that task (`HandlerRegistry.reconcile_task`), whose answer goes
through the intake like a callback.

Registered through the public plugin API only; off with ``[watchdog] enabled = false``.
"""

from __future__ import annotations

from handlers.watchdog.api import build_routes
from handlers.watchdog.cli import command
from handlers.watchdog.store import Expectations
from handlers.watchdog.tables import MIGRATIONS
from handlers.watchdog.ui import build_pages
from handlers.watchdog.watch import PAGE, Sweep, clearing
from receiver.registry import HandlerRegistry

HANDLER = "builtin.watchdog"
JOB = "watchdog.sweep"
WATCHED_SECONDS = 2.0


def register(registry: HandlerRegistry) -> None:
    settings, storage = registry.settings, registry.storage
    # A registry standing alone (no app) has nothing to keep expectations in.
    if settings is None or storage is None or not settings.watchdog.enabled:
        return
    storage.declare("watchdog", MIGRATIONS)
    store = Expectations(storage)
    sources = tuple(settings.sources)
    # Every handler run costs the dispatcher a task and a record: the clearing handler runs
    # only for events of sources with open expectations. Another replica's registrations are
    # read every WATCHED_SECONDS, and a sweep finds any callback the handler did not see.
    registry.on_any(
        clearing(store, storage, registry.clock),
        name=HANDLER,
        when=lambda event: event.source in store.watched,
    )
    registry.on_startup(store.refresh_watched)
    registry.every(WATCHED_SECONDS, store.refresh_watched, name="watchdog.watched")
    registry.every(settings.watchdog.check_seconds, Sweep(registry, store).run, name=JOB)
    registry.add_routes(build_routes(store, registry.keys, sources, registry.clock))
    registry.add_command(command(store, sources, registry.clock))
    if settings.ui.enabled:
        registry.add_routes(build_pages(store))
        registry.add_nav("Expected", PAGE, scopes=("tasks.read", "task.read"))
