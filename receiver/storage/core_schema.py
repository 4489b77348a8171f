"""The core's schema history, as a component like any plugin's (`migrations`).

Version 1 is the schema of `tables` (compiled per dialect by SQLAlchemy), created where it
does not exist. A database made by the previous release already has every table and index,
so version 1 adopts it as it is, data included; the releases before that (SQLite's
``user_version`` 1 to 3) are first brought to that schema by their own scripts
(`sqlite_schema`). Later changes to core tables are new versions here.
"""

from __future__ import annotations

from sqlalchemy import text

from receiver.plugin_store import Migration, Tx
from receiver.storage.tables import core_metadata

COMPONENT = "core"
_SEED_PROBE = text(
    "INSERT INTO taskhook_probe (id, probed_at) VALUES (1, 0) ON CONFLICT DO NOTHING"
)


async def _create(tx: Tx) -> None:
    await tx.create(*core_metadata().sorted_tables)
    await tx.execute(_SEED_PROBE)


HISTORY: tuple[Migration, ...] = (
    Migration(1, "deliveries, events, handler runs, the dispatch queue, probe and meta", _create),
)
