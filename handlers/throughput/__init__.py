"""Built-in: the CloudFactory throughput ledger and ``GET /v1/throughput``.

Keeps one row per completed-work report. A report with a ``unique_id`` is unique per
(workstream, use case, task definition): a repeat replaces the stored values when it says
``replace_duplicate: true`` and is ignored otherwise, as the Throughput API documents.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import orjson
import sqlalchemy as sa
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from receiver.auth import Denied, KeyRing
from receiver.errors import RegistryError
from receiver.events import Event
from receiver.plugin_store import Migration, PluginStorage, Tx, real
from receiver.registry import HandlerRegistry

RECORDS = sa.Table(
    "throughput_records",
    sa.MetaData(),
    # Declared without NOT NULL by the first release (SQLite then allows a NULL key; a
    # PostgreSQL primary key never does).
    sa.Column("key", sa.Text, primary_key=True, nullable=True),
    sa.Column("workstream_id", sa.Text, nullable=False),
    sa.Column("worker_id", sa.Text, nullable=False),
    sa.Column("use_case_id", sa.Text, nullable=False),
    sa.Column("task_definition_id", sa.Text, nullable=False),
    sa.Column("task_id", sa.Text),
    sa.Column("unique_id", sa.Text),
    sa.Column("task_count", real(), nullable=False),
    sa.Column("subtask_count", real()),
    sa.Column("duration", real(), nullable=False),
    sa.Column("task_completed_at", sa.Text, nullable=False),
    sa.Column("day", sa.Text, nullable=False),
    sa.Column("delivery_id", sa.Text, nullable=False),
    sa.Column("record", sa.Text, nullable=False),
)
sa.Index("throughput_by_day", RECORDS.c.day, RECORDS.c.worker_id, RECORDS.c.use_case_id)

_UPSERT = sa.text("""
INSERT INTO throughput_records (key, workstream_id, worker_id, use_case_id, task_definition_id,
    task_id, unique_id, task_count, subtask_count, duration, task_completed_at, day,
    delivery_id, record)
VALUES (:key, :workstream_id, :worker_id, :use_case_id, :task_definition_id, :task_id,
    :unique_id, :task_count, :subtask_count, :duration, :task_completed_at, :day,
    :delivery_id, :record)
ON CONFLICT (key) DO UPDATE SET
    worker_id = excluded.worker_id, task_id = excluded.task_id,
    task_count = excluded.task_count, subtask_count = excluded.subtask_count,
    duration = excluded.duration, task_completed_at = excluded.task_completed_at,
    day = excluded.day, delivery_id = excluded.delivery_id, record = excluded.record
WHERE :replace
""")

# The report's filters: query parameter -> its term (the parameter binds under its own name).
_FILTERS = {
    "worker_id": "worker_id = :worker_id",
    "use_case_id": "use_case_id = :use_case_id",
    "since": "day >= :since",
    "until": "day <= :until",
}


@lru_cache(maxsize=1 << len(_FILTERS))
def _report(filters: tuple[str, ...]) -> sa.TextClause:
    """The report's query with the terms of `filters` (names of `_FILTERS`, in its order)."""
    where = " AND ".join(["1 = 1", *(_FILTERS[name] for name in filters)])
    return sa.text(
        "SELECT worker_id, use_case_id, day, sum(task_count), sum(coalesce(subtask_count, 0)),"
        f" sum(duration), count(*) FROM throughput_records WHERE {where}"
        " GROUP BY worker_id, use_case_id, day ORDER BY day, worker_id, use_case_id"
    )


async def create_schema(tx: Tx) -> None:
    """Migration 1: the table and its index (kept as they are where they exist already)."""
    await tx.create(RECORDS)


MIGRATIONS: Sequence[Migration] = (
    Migration(1, "throughput_records and its index by day", create_schema),
)


def record_row(event: Event) -> dict[str, Any]:
    p = event.payload
    completed = event.occurred_at.isoformat()
    unique = p.get("unique_id")
    key = (
        f"{p['workstream_id']}/{p['use_case_id']}/{p['task_definition_id']}/{unique}"
        if unique
        else event.event_id
    )
    return {
        "key": key, "workstream_id": p["workstream_id"], "worker_id": p["worker_id"],
        "use_case_id": p["use_case_id"], "task_definition_id": p["task_definition_id"],
        "task_id": p.get("task_id"), "unique_id": unique, "task_count": p["task_count"],
        "subtask_count": p.get("subtask_count"), "duration": p["duration"],
        "task_completed_at": completed, "day": completed[:10], "delivery_id": event.delivery_id,
        "record": orjson.dumps(p).decode(), "replace": bool(p.get("replace_duplicate")),
    }  # fmt: skip


def report_routes(storage: PluginStorage, keys: KeyRing | None) -> list[Route]:
    async def report(request: Request) -> Response:
        who = keys.authorize(request.headers.get("authorization"), "tasks.read") if keys else None
        if who is None or isinstance(who, Denied):
            status, reason = (who.status, who.reason) if who else (401, "no API keys configured")
            return JSONResponse({"error": reason}, status_code=status)
        q = request.query_params
        given = tuple(name for name in _FILTERS if name in q)
        args = {name: q[name][:10] if name in ("since", "until") else q[name] for name in given}
        rows = await storage.query(_report(given), args)
        docs = [
            {"worker_id": w, "use_case_id": u, "day": d, "tasks": t, "subtasks": s,
             "duration_seconds": dur, "records": n}
            for w, u, d, t, s, dur, n in rows
        ]  # fmt: skip
        return JSONResponse({"rows": docs})

    return [Route("/v1/throughput", report, methods=["GET"])]


def register(registry: HandlerRegistry) -> None:
    found: PluginStorage | None = registry.storage
    if found is None or not hasattr(found, "transaction"):
        raise RegistryError("the throughput ledger needs the app's SQL storage backend")
    storage = found
    storage.declare("throughput", MIGRATIONS)

    async def recorded(event: Event) -> None:
        row = record_row(event)

        async def upsert(tx: Tx) -> None:
            await tx.execute(_UPSERT, row)

        await storage.transaction(upsert)

    registry.on("throughput.recorded", recorded, name="builtin.throughput")
    registry.add_routes(report_routes(storage, registry.keys))
