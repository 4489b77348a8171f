"""What the watchdog reads of the core's tables: has a callback about a task meant anything?

The one place a built-in plugin reads core tables (it never writes them), kept apart so a
change of the core schema has one module to follow. Two questions, both on indexed columns:

- `latest`: the newest delivery of (source, task_id) that yielded at least one event. Used
  when an expectation is registered (a callback that came first means it arrived at once)
  and again before one is declared overdue (a callback whose events the watchdog's handler
  has not seen yet). A delivery that yielded no event — a repeat of a pending snapshot, one
  that was stale — is not the callback anyone waits for, so it does not count.
- `unique_id_in`: the ``unique_id`` a Refonte-shaped body names (``task.unique_id``, or at
  the top level), because the ledger's events do not carry it.
"""

from __future__ import annotations

from typing import Any

import orjson
import sqlalchemy as sa

from receiver.plugin_store import PluginStorage, Tx

_LATEST = sa.text(
    "SELECT d.id FROM deliveries AS d WHERE d.task_id = :task_id AND d.source = :source "
    "AND EXISTS (SELECT 1 FROM delivery_events AS de WHERE de.delivery_id = d.id) "
    "ORDER BY d.seq DESC LIMIT 1"
)
_BODY = sa.text("SELECT body FROM deliveries WHERE id = :id")


async def latest(tx: Tx, source: str, task_id: str) -> str | None:
    """The id of the newest delivery about the task that meant something, or None."""
    row = await tx.fetchone(_LATEST, {"source": source, "task_id": task_id})
    return str(row[0]) if row is not None else None


async def unique_id_in(storage: PluginStorage, delivery_id: str) -> str | None:
    rows = await storage.query(_BODY, {"id": delivery_id})
    if not rows or rows[0][0] is None:
        return None
    try:
        doc: Any = orjson.loads(bytes(rows[0][0]))
    except orjson.JSONDecodeError:
        return None
    if not isinstance(doc, dict):
        return None
    task = doc.get("task")
    found = task.get("unique_id") if isinstance(task, dict) else None
    found = found if found is not None else doc.get("unique_id")
    return found if isinstance(found, str) and found else None
