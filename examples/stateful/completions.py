"""A stateful plugin: completed tasks per source and day, in a table of its own.

Shown in the README's custom-handler section; tests/test_plugin_storage.py runs it on SQLite
and PostgreSQL. It uses only the public plugin storage API (`receiver.plugin_store`).
"""

from __future__ import annotations

import sqlalchemy as sa

from receiver.events import Event
from receiver.plugin_store import Migration, PluginStorage, Tx
from receiver.registry import HandlerRegistry

META = sa.MetaData()
COMPLETIONS = sa.Table(
    "completions",
    META,
    sa.Column("source", sa.Text, primary_key=True),
    sa.Column("day", sa.Text, primary_key=True),
    sa.Column("n", sa.Integer, nullable=False),
)
# Which events were counted: a handler runs at least once per event, so it makes its
# effect idempotent (here: an event is counted only with its first row).
COUNTED = sa.Table("completions_counted", META, sa.Column("event_id", sa.Text, primary_key=True))
_MARK = sa.text(
    "INSERT INTO completions_counted (event_id) VALUES (:event_id) ON CONFLICT DO NOTHING"
)
_ADD = sa.text(
    "INSERT INTO completions (source, day, n) VALUES (:source, :day, 1) "
    "ON CONFLICT (source, day) DO UPDATE SET n = completions.n + 1"
)
_REPORT = sa.select(COMPLETIONS.c.source, COMPLETIONS.c.day, COMPLETIONS.c.n).order_by(
    COMPLETIONS.c.source, COMPLETIONS.c.day
)


async def _create(tx: Tx) -> None:
    await tx.create(COMPLETIONS, COUNTED)


MIGRATIONS = [Migration(1, "completions per source and day", _create)]


async def report(storage: PluginStorage) -> list[tuple[str, str, int]]:
    return [(r[0], r[1], r[2]) for r in await storage.query(_REPORT)]


def register(registry: HandlerRegistry) -> None:
    storage = registry.storage
    assert storage is not None, "a stateful plugin needs the app's storage"
    storage.declare("completions", MIGRATIONS)

    async def completed(event: Event) -> None:
        day = event.occurred_at.date().isoformat()

        async def count(tx: Tx) -> None:
            if await tx.execute(_MARK, {"event_id": event.event_id}) == 1:
                await tx.execute(_ADD, {"source": event.source, "day": day})

        await storage.transaction(count)

    registry.on("task.completed", completed, name="completions")
