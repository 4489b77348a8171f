"""``/v1/tasks/expected``: register, list, read and cancel expected callbacks.

- ``POST /v1/tasks/expected`` (``task.edit``): 201 ``{"expected": [...]}``, the rows in the
  order asked;
- ``GET /v1/tasks/expected`` (``tasks.read``): ``{"docs", "total", "limit", "has_more",
  "next_token"}`` by deadline, filters ``state`` and ``source``;
- ``GET /v1/tasks/expected/{id}`` (``tasks.read``): one row, 404 unknown;
- ``DELETE /v1/tasks/expected/{id}`` (``task.edit``): the row, cancelled; 409 when its
  callback arrived already.

Keys are checked as the ledger's routes check them (bearer, or HTTP basic with the key as
user name); ``task.read`` reads too, as on the ledger's routes.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from handlers.watchdog.models import MAX_TASKS, BadRegistration, Registration, parse
from handlers.watchdog.store import Expectations
from handlers.watchdog.tables import STATES

Clock = Callable[[], float]
Endpoint = Callable[[Request, str], Awaitable[Response]]
MAX_BODY = 1024 * 1024
READ_SCOPES = ("tasks.read", "task.read")
EDIT_SCOPES = ("task.edit",)


class BadQuery(ValueError):
    pass


def encode_token(deadline: float, expectation_id: str) -> str:
    return base64.urlsafe_b64encode(orjson.dumps([deadline, expectation_id])).decode()


def decode_token(token: str) -> tuple[float, str]:
    try:
        deadline, expectation_id = orjson.loads(base64.urlsafe_b64decode(token.encode()))
        return float(deadline), str(expectation_id)
    except (binascii.Error, ValueError, TypeError) as exc:
        raise BadQuery("next_token is not a token this listing gave") from exc


def query_of(params: Any) -> tuple[str | None, str | None, int, tuple[float, str] | None]:
    """(state, source, limit, after) of a listing's query parameters."""
    state = params.get("state") or None
    if state is not None and state not in STATES:
        raise BadQuery(f"state must be one of {', '.join(STATES)}")
    raw = params.get("limit") or "100"
    if not raw.isdigit() or not 1 <= int(raw) <= 100:
        raise BadQuery("limit must be an integer from 1 to 100")
    token = params.get("next_token")
    return state, params.get("source") or None, int(raw), decode_token(token) if token else None


async def listing(store: Expectations, params: Any) -> dict[str, Any]:
    state, source, limit, after = query_of(params)
    rows, more, total = await store.page(state=state, source=source, limit=limit, after=after)
    token = encode_token(rows[-1].deadline, rows[-1].id) if more and rows else None
    return {"docs": [r.view() for r in rows], "total": total, "limit": limit,
            "has_more": more, "next_token": token}  # fmt: skip


def _error(status: int, reason: str, **more: Any) -> JSONResponse:
    return JSONResponse({"error": reason, **more}, status_code=status)


def build_routes(
    store: Expectations, keys: Any, sources: Iterable[str], clock: Clock
) -> list[Route]:
    known = tuple(sources)

    def guarded(scopes: tuple[str, ...], endpoint: Endpoint) -> Callable[..., Any]:
        async def wrapper(request: Request) -> Response:
            if keys is None:
                return _error(401, "no API keys configured")
            header = request.headers.get("authorization")
            refused: Any = None
            for scope in scopes:
                who = keys.authorize(header, scope, basic=True)
                if isinstance(who, str):
                    try:
                        return await endpoint(request, who)
                    except BadQuery as exc:
                        return _error(400, str(exc))
                refused = refused or who  # the first refusal says why
            return _error(refused.status, refused.reason)

        return wrapper

    async def register(request: Request, who: str) -> Response:
        raw = await request.body()
        if len(raw) > MAX_BODY:
            return _error(413, f"a registration is at most {MAX_BODY} bytes ({MAX_TASKS} tasks)")
        try:
            doc = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return _error(400, "the body must be JSON")
        now = clock()
        try:
            asked, deadline = parse(doc, sources=known, now=now)
        except BadRegistration as exc:
            return _error(400, exc.reason, fields=exc.fields)
        rows = await store.register(
            asked.source, asked.wants(), deadline=deadline, who=who, note=asked.note, now=now
        )
        return JSONResponse({"expected": [r.view() for r in rows]}, status_code=201)

    async def index(request: Request, who: str) -> Response:
        return JSONResponse(await listing(store, request.query_params))

    async def show(request: Request, who: str) -> Response:
        found = await store.get(request.path_params["expectation_id"])
        if found is None:
            return _error(404, "no such expectation")
        return JSONResponse(found.view())

    async def cancel(request: Request, who: str) -> Response:
        found = await store.cancel(request.path_params["expectation_id"])
        if found is None:
            return _error(404, "no such expectation")
        if found.state == "arrived":
            return _error(409, "its callback arrived already; nothing to cancel", **found.view())
        return JSONResponse(found.view())

    collection = "/v1/tasks/expected"
    one = collection + "/{expectation_id}"
    ops = operations()
    routes = [
        Route(collection, guarded(EDIT_SCOPES, register), methods=["POST"]),
        Route(collection, guarded(READ_SCOPES, index), methods=["GET"]),
        Route(one, guarded(READ_SCOPES, show), methods=["GET"]),
        Route(one, guarded(EDIT_SCOPES, cancel), methods=["DELETE"]),
    ]
    for route, op in zip(routes, ops, strict=True):
        route.openapi = op  # type: ignore[attr-defined]
    return routes


def operations() -> list[dict[str, Any]]:
    """OpenAPI operations of the four routes, in `build_routes`' order (the app's
    ``/openapi.json`` reads ``route.openapi``)."""
    row = {"type": "object", "description": "an expectation: id, source, task_id, unique_id, "
           "state, deadline, registered_at, registered_by, overdue_at, reconcile, "
           "reconciled_at, arrived_at, arrived_delivery_id, note"}  # fmt: skip
    error = {"description": "why not", "content": {"application/json": {"schema": {
        "type": "object", "properties": {"error": {"type": "string"}}}}}}  # fmt: skip
    path_id = [{"name": "expectation_id", "in": "path", "required": True,
                "schema": {"type": "string"}}]  # fmt: skip
    query = [{"name": n, "in": "query", "schema": {"type": "string"}}
             for n in ("state", "source", "limit", "next_token")]  # fmt: skip

    def op(summary: str, status: str, schema: dict[str, Any], *more: str) -> dict[str, Any]:
        answers = {
            status: {"description": summary, "content": {"application/json": {"schema": schema}}}
        }
        answers |= {code: error for code in ("400", "401", "403", *more)}
        return {"summary": summary, "tags": ["watchdog"], "responses": answers}

    register = op("Expect callbacks by a deadline", "201", {"type": "object", "properties": {
        "expected": {"type": "array", "items": row}}}, "413")  # fmt: skip
    register["requestBody"] = {"required": True, "content": {"application/json": {
        "schema": _inline(Registration.model_json_schema())}}}  # fmt: skip
    page = {
        "type": "object",
        "properties": {
            "docs": {"type": "array", "items": row},
            "total": {"type": "integer"},
            "limit": {"type": "integer"},
            "has_more": {"type": "boolean"},
            "next_token": {"type": ["string", "null"]},
        },
    }
    return [
        {"post": register},
        {"get": op("Expected callbacks, by deadline", "200", page) | {"parameters": query}},
        {"get": op("One expectation", "200", row, "404") | {"parameters": path_id}},
        {"delete": op("Cancel an expectation", "200", row, "404", "409") | {"parameters": path_id}},
    ]


def _inline(value: Any, defs: dict[str, Any] | None = None) -> Any:
    """The schema with its ``$defs`` references replaced by what they name (a plugin's
    operation cannot add to the document's components)."""
    if isinstance(value, dict):
        defs = {**(defs or {}), **value.get("$defs", {})}
        ref = value.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/"):
            return _inline(defs[ref.removeprefix("#/$defs/")], defs)
        return {k: _inline(v, defs) for k, v in value.items() if k != "$defs"}
    if isinstance(value, list):
        return [_inline(v, defs) for v in value]
    return value
