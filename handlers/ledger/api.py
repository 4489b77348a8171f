"""``GET /v1/task/{task_id}`` and ``GET /v1/tasks``: the ledger, read through keyset pages."""

from __future__ import annotations

import base64
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Any

import orjson
import sqlalchemy as sa
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from handlers.ledger.counts import Totals
from handlers.ledger.store import iso
from receiver.auth import Denied, KeyRing
from receiver.plugin_store import PluginStorage

Query = Callable[[str, dict[str, Any]], Awaitable[list[Any]]]
"""Rows of a SQL text with ``:name`` parameters (`sql_query`)."""
FILTERS = ("status", "type", "project", "batch", "unique_id", "customer_review_status",
           "tag", "start_time", "end_time", "updated_after")  # fmt: skip

# Filter parameter -> SQL column on ledger_tasks (tag is served by ledger_task_tags).
COLUMN_FILTERS = {
    "status": "status",
    "type": "type",
    "project": "project",
    "batch": "batch",
    "unique_id": "unique_id",
    "customer_review_status": "customer_review_status",
}


class BadQuery(ValueError):
    pass


@lru_cache(maxsize=512)
def _statement(sql: str) -> sa.TextClause:
    return sa.text(sql)  # one object per query shape, so its compiled form is reused


def sql_query(storage: PluginStorage) -> Query:
    async def query(sql: str, params: dict[str, Any]) -> list[Any]:
        return await storage.query(_statement(sql), params)

    return query


def encode_token(created_at: str, task_id: str) -> str:
    raw = orjson.dumps([created_at, task_id])
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_token(token: str) -> tuple[str, str]:
    try:
        created_at, task_id = orjson.loads(
            base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        )
        return str(created_at), str(task_id)
    except (ValueError, TypeError, orjson.JSONDecodeError):
        raise BadQuery("next_token is not valid") from None


def _time(name: str, value: str) -> str:
    try:
        return iso(datetime.fromisoformat(value.replace("Z", "+00:00")))
    except ValueError:
        raise BadQuery(f"{name} must be an ISO 8601 date or datetime") from None


def task_view(row: tuple[Any, ...]) -> dict[str, Any]:
    task_json, status, unique_id, review, response = row
    task: dict[str, Any] = orjson.loads(task_json)
    task["status"] = status
    task["response"] = orjson.loads(response) if response is not None else None
    if unique_id is None:
        task.pop("unique_id", None)  # released or never bound here
    else:
        task["unique_id"] = unique_id
    if review is not None:
        task["customer_review_status"] = review
    return task


_VIEW = "t.task, t.status, t.unique_id, t.customer_review_status, t.response"


@dataclass(frozen=True, slots=True)
class ListQuery:
    """A task listing's SQL parts: FROM, WHERE with its arguments, the page size, and the
    created_at column the order and the time filters use (the tag table's, when joined)."""

    source: str
    where: str
    args: dict[str, Any]
    limit: int
    created: str

    @property
    def order(self) -> str:
        return f"ORDER BY {self.created} DESC, t.task_id DESC"  # newest created first


async def fetch_task(query: Query, task_id: str) -> dict[str, Any] | None:
    """The task as the API shows it, or None."""
    rows = await query(
        f"SELECT {_VIEW} FROM ledger_tasks AS t WHERE t.task_id = :task_id", {"task_id": task_id}
    )
    return task_view(tuple(rows[0])) if rows else None


def build_query(params: dict[str, str]) -> ListQuery:
    try:
        limit = int(params.get("limit", "100"))
    except ValueError:
        raise BadQuery("limit must be an integer from 1 to 100") from None
    if not 1 <= limit <= 100:
        raise BadQuery("limit must be an integer from 1 to 100")
    where: list[str] = []
    args: dict[str, Any] = {}
    source = "ledger_tasks AS t"
    if "tag" in params:
        source = "ledger_task_tags AS g JOIN ledger_tasks AS t ON t.task_id = g.task_id"
        where.append("g.tag = :tag")
        args["tag"] = params["tag"]
    for name, column in COLUMN_FILTERS.items():
        if name in params:
            where.append(f"t.{column} = :{name}")
            args[name] = params[name]
    created = "g.created_at" if "tag" in params else "t.created_at"
    if "start_time" in params:
        where.append(f"{created} >= :start_time")
        args["start_time"] = _time("start_time", params["start_time"])
    if "end_time" in params:
        where.append(f"{created} <= :end_time")
        args["end_time"] = _time("end_time", params["end_time"])
    if "updated_after" in params:
        where.append("t.updated_at > :updated_after")
        args["updated_after"] = _time("updated_after", params["updated_after"])
    return ListQuery(source, " AND ".join(where) or "1 = 1", args, limit, created)


def count_statement(q: ListQuery) -> sa.TextClause:
    return _statement(f"SELECT count(*) FROM {q.source} WHERE {q.where}")


def build_routes(storage: PluginStorage, keys: KeyRing | None) -> list[Route]:
    query = sql_query(storage)
    totals = Totals(storage)

    def guarded(endpoint: Callable[[Request], Awaitable[Response]]) -> Any:
        async def wrapper(request: Request) -> Response:
            if keys is None:
                return JSONResponse({"error": "no API keys configured"}, status_code=401)
            header = request.headers.get("authorization")
            who = keys.authorize(header, "tasks.read")
            if isinstance(who, Denied) and who.status == 403:
                # Document-review operators read tasks with the seed's own scope name.
                other = keys.authorize(header, "task.read")
                who = who if isinstance(other, Denied) else other
            if isinstance(who, Denied):
                return JSONResponse({"error": who.reason}, status_code=who.status)
            try:
                return await endpoint(request)
            except BadQuery as exc:
                return JSONResponse({"error": str(exc)}, status_code=400)

        return wrapper

    async def show(request: Request) -> Response:
        task_id = request.path_params["task_id"]
        task = await fetch_task(query, task_id)
        if task is None:
            return JSONResponse({"error": "no such task", "task_id": task_id}, status_code=404)
        history = await query(
            "SELECT kind, name, event_id, delivery_id, detail, at FROM ledger_history "
            "WHERE task_id = :task_id ORDER BY seq",
            {"task_id": task_id},
        )
        task["history"] = [
            {
                "kind": kind,
                **({"event": name, "event_id": event} if kind == "event" else {}),
                "delivery_id": delivery_id,
                "at": iso(datetime.fromtimestamp(at).astimezone()),
                "detail": orjson.loads(detail),
            }
            for kind, name, event, delivery_id, detail, at in history
        ]
        return JSONResponse(task)

    async def listing(request: Request) -> Response:
        params = dict(request.query_params)
        q = build_query(params)
        limit = q.limit
        filters = {name: params[name] for name in FILTERS if name in params}
        total = await totals.total(filters, count_statement(q), q.args)
        page_where, page_args = q.where, dict(q.args)
        if token := params.get("next_token"):
            after_created, after_id = decode_token(token)
            # Newest first: the next page continues strictly below the last row seen.
            page_where += (
                f" AND ({q.created} < :after_created"
                f" OR ({q.created} = :after_created AND t.task_id < :after_id))"
            )
            page_args |= {"after_created": after_created, "after_id": after_id}
        rows = await query(
            f"SELECT {_VIEW}, {q.created}, t.task_id FROM {q.source} WHERE {page_where} "
            f"{q.order} LIMIT :limit",
            page_args | {"limit": limit + 1},
        )
        more = len(rows) > limit
        rows = rows[:limit]
        return JSONResponse(
            {
                "docs": [task_view(tuple(r[:5])) for r in rows],
                "total": total,
                "limit": limit,
                "has_more": more,
                "next_token": encode_token(rows[-1][5], rows[-1][6]) if more else None,
            }
        )

    return [
        Route("/v1/task/{task_id}", guarded(show), methods=["GET"]),
        Route("/v1/tasks", guarded(listing), methods=["GET"]),
    ]
