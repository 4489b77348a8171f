"""``GET /v1/task/{task_id}`` and ``GET /v1/tasks``: the ledger, read through keyset pages."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import datetime
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from handlers.ledger.counts import Totals
from handlers.ledger.query import (
    LIMITED,
    BadQuery,
    build_query,
    count_statement,
    decode_token,
    encode_token,
    statement,
)
from handlers.ledger.store import iso
from receiver.auth import Denied, KeyRing
from receiver.plugin_store import PluginStorage

Query = Callable[[str, dict[str, Any]], Awaitable[list[Any]]]
"""Rows of a SQL text with ``:name`` parameters (`sql_query`)."""


def sql_query(storage: PluginStorage) -> Query:
    async def query(sql: str, params: dict[str, Any]) -> list[Any]:
        return await storage.query(statement(sql), params)

    return query


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


async def fetch_task(query: Query, task_id: str) -> dict[str, Any] | None:
    """The task as the API shows it, or None."""
    rows = await query(
        f"SELECT {_VIEW} FROM ledger_tasks AS t WHERE t.task_id = :task_id", {"task_id": task_id}
    )
    return task_view(tuple(rows[0])) if rows else None


async def list_page(
    query: Query, totals: Totals, params: Mapping[str, Sequence[str]] | Mapping[str, str]
) -> dict[str, Any]:
    """One page of a task listing, as `GET /v1/tasks` answers it (the CLI pages the same)."""
    q = build_query(params)
    total = await totals.total(q.filters, count_statement(q), q.args)
    page_where, page_args, offset = q.where, dict(q.args), 0
    token = params.get("next_token")
    token = token if isinstance(token, str) else (token or [""])[-1]
    if token:
        after_created, after_id, offset = decode_token(token)
        # Newest first: the next page continues strictly below the last row seen.
        page_where += (
            f" AND ({q.created} < :after_created"
            f" OR ({q.created} = :after_created AND t.task_id < :after_id))"
        )
        page_args |= {"after_created": after_created, "after_id": after_id}
    rows = await query(
        f"SELECT {_VIEW}, {q.created}, t.task_id FROM {q.source} WHERE {page_where} "
        f"{q.order} LIMIT :limit",
        page_args | {"limit": q.limit + 1},
    )
    more = len(rows) > q.limit
    rows = rows[: q.limit]
    docs = [task_view(tuple(r[:5])) for r in rows]
    if q.limited:
        docs = [{k: d[k] for k in LIMITED if k in d} for d in docs]
    following = encode_token(rows[-1][5], rows[-1][6], offset + len(rows)) if more else None
    return {
        "docs": docs, "total": total, "limit": q.limit, "offset": offset,
        "has_more": more, "next_token": following,
    }  # fmt: skip


def build_routes(storage: PluginStorage, keys: KeyRing | None) -> list[Route]:
    query = sql_query(storage)
    totals = Totals(storage)

    def guarded(endpoint: Callable[[Request], Awaitable[Response]]) -> Any:
        async def wrapper(request: Request) -> Response:
            if keys is None:
                return JSONResponse({"error": "no API keys configured"}, status_code=401)
            header = request.headers.get("authorization")
            # The vendor's own API (and its SDK) authenticate with HTTP basic, the key as
            # user name: so does this copy of it.
            who = keys.authorize(header, "tasks.read", basic=True)
            if isinstance(who, Denied) and who.status == 403:
                # Document-review operators read tasks with the seed's own scope name.
                other = keys.authorize(header, "task.read", basic=True)
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
        params: dict[str, list[str]] = {}
        for name, value in request.query_params.multi_items():
            params.setdefault(name, []).append(value)
        return JSONResponse(await list_page(query, totals, params))

    return [
        Route("/v1/task/{task_id}", guarded(show), methods=["GET"]),
        Route("/v1/tasks", guarded(listing), methods=["GET"]),
    ]
