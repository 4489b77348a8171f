"""Operators' document-review actions: ``POST /v1/task/{id}/complete|discard|unlock|report``
and the batch form ``POST /v1/tasks/{action}`` (207 with a result per task). Scope
``task.edit``."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Match, Route
from starlette.types import Scope

from receiver.auth import Denied, KeyRing

Act = Callable[[str, str, str | None, str], Awaitable[tuple[int, dict[str, Any]]]]
ACTIONS = ("complete", "discard", "unlock", "report")


class _Actions(Route):
    """`/v1/tasks/{action}` for the review actions only: other ``/v1/tasks/...`` paths (the
    watchdog's ``/v1/tasks/expected``) belong to the routes of other plugins."""

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        match, child = super().matches(scope)
        if match is not Match.NONE and child["path_params"].get("action") not in ACTIONS:
            return Match.NONE, {}
        return match, child


async def _body(request: Request) -> dict[str, Any]:
    raw = await request.body()
    if not raw:
        return {}
    value = orjson.loads(raw)
    if not isinstance(value, dict):
        raise ValueError("the body must be a JSON object")
    return value


def build_review_routes(act: Act, keys: KeyRing | None) -> list[Route]:
    def authorize(request: Request) -> str | JSONResponse:
        header = request.headers.get("authorization")
        who = keys.authorize(header, "task.edit", basic=True) if keys else None
        if who is None or isinstance(who, Denied):
            status, reason = (who.status, who.reason) if who else (401, "no API keys configured")
            return JSONResponse({"error": reason}, status_code=status)
        return who

    def action_of(request: Request) -> str | None:
        action = str(request.path_params["action"])
        return action if action in ACTIONS else None

    async def prepare(request: Request) -> tuple[str, str, dict[str, Any]] | JSONResponse:
        """(who, action, body) of an authorized request, or the answer refusing it."""
        who = authorize(request)
        if isinstance(who, JSONResponse):
            return who
        action = action_of(request)
        if action is None:
            return JSONResponse({"error": f"action must be one of {', '.join(ACTIONS)}"}, 404)
        try:
            body = await _body(request)
        except ValueError as exc:
            return JSONResponse({"error": f"body: {exc}"}, status_code=400)
        if not isinstance(body.get("reason", ""), str | None):
            return JSONResponse({"error": "body: reason must be a string"}, status_code=400)
        return who, action, body

    async def single(request: Request) -> Response:
        prepared = await prepare(request)
        if isinstance(prepared, JSONResponse):
            return prepared
        who, action, body = prepared
        status, answer = await act(request.path_params["task_id"], action, body.get("reason"), who)
        return JSONResponse(answer, status_code=status)

    async def batch(request: Request) -> Response:
        prepared = await prepare(request)
        if isinstance(prepared, JSONResponse):
            return prepared
        who, action, body = prepared
        ids = body.get("task_ids")
        if not isinstance(ids, list) or not ids or not all(isinstance(i, str) for i in ids):
            return JSONResponse({"error": "task_ids must be a non-empty list of ids"}, 400)
        results = []
        for task_id in ids:
            status, answer = await act(task_id, action, body.get("reason"), who)
            results.append({"task_id": task_id, "status": status, "body": answer})
        return JSONResponse({"results": results}, status_code=207)

    return [
        Route("/v1/task/{task_id}/{action}", single, methods=["POST"]),
        _Actions("/v1/tasks/{action}", batch, methods=["POST"]),
    ]
