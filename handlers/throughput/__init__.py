"""Built-in: the CloudFactory throughput ledger and ``GET /v1/throughput``.

Keeps one row per completed-work report. A report with a ``unique_id`` is unique per
(workstream, use case, task definition): a repeat replaces the stored values when it says
``replace_duplicate: true`` and is ignored otherwise, as the Throughput API documents.
"""

from __future__ import annotations

import sqlite3
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from receiver.auth import Denied, KeyRing
from receiver.errors import RegistryError
from receiver.events import Event
from receiver.registry import HandlerRegistry

SCHEMA = """
CREATE TABLE IF NOT EXISTS throughput_records (
    key                TEXT PRIMARY KEY,
    workstream_id      TEXT NOT NULL,
    worker_id          TEXT NOT NULL,
    use_case_id        TEXT NOT NULL,
    task_definition_id TEXT NOT NULL,
    task_id            TEXT,
    unique_id          TEXT,
    task_count         REAL NOT NULL,
    subtask_count      REAL,
    duration           REAL NOT NULL,
    task_completed_at  TEXT NOT NULL,
    day                TEXT NOT NULL,
    delivery_id        TEXT NOT NULL,
    record             TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS throughput_by_day ON throughput_records(day, worker_id, use_case_id)
"""

_UPSERT = """
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
"""


def create_schema(conn: sqlite3.Connection) -> None:
    for statement in SCHEMA.split(";"):
        if statement.strip():
            conn.execute(statement)


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


def report_routes(storage: Any, keys: KeyRing | None) -> list[Route]:
    async def report(request: Request) -> Response:
        who = keys.authorize(request.headers.get("authorization"), "tasks.read") if keys else None
        if who is None or isinstance(who, Denied):
            status, reason = (who.status, who.reason) if who else (401, "no API keys configured")
            return JSONResponse({"error": reason}, status_code=status)
        q = request.query_params
        where, args = ["1 = 1"], []
        for name, clause in (("worker_id", "worker_id = ?"), ("use_case_id", "use_case_id = ?"),
                             ("since", "day >= ?"), ("until", "day <= ?")):  # fmt: skip
            if name in q:
                where.append(clause)
                args.append(q[name][:10] if name in ("since", "until") else q[name])
        rows = await storage.query(
            "SELECT worker_id, use_case_id, day, sum(task_count), sum(coalesce(subtask_count, 0)),"
            " sum(duration), count(*) FROM throughput_records WHERE " + " AND ".join(where) +
            " GROUP BY worker_id, use_case_id, day ORDER BY day, worker_id, use_case_id",
            args,
        )  # fmt: skip
        docs = [
            {"worker_id": w, "use_case_id": u, "day": d, "tasks": t, "subtasks": s,
             "duration_seconds": dur, "records": n}
            for w, u, d, t, s, dur, n in rows
        ]  # fmt: skip
        return JSONResponse({"rows": docs})

    return [Route("/v1/throughput", report, methods=["GET"])]


def register(registry: HandlerRegistry) -> None:
    storage = registry.storage
    if storage is None or not hasattr(storage, "transact"):
        raise RegistryError("the throughput ledger needs the app's SQL storage backend")

    async def create() -> None:
        await storage.transact(create_schema)

    async def recorded(event: Event) -> None:
        row = record_row(event)
        await storage.transact(lambda conn: conn.execute(_UPSERT, row))

    registry.on_startup(create)
    registry.on("throughput.recorded", recorded, name="builtin.throughput")
    registry.add_routes(report_routes(storage, registry.keys))
