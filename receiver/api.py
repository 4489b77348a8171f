"""The read/admin HTTP API (Starlette routes): health, metrics and the deliveries inbox.

Storage that cannot answer is 503 with Retry-After on every route, never 500 (the app maps
`StorageUnavailable` from any route, plugins' included, with `storage_unavailable`); /readyz
is 200 only while the database takes a real write (`Storage.probe`).
"""

from __future__ import annotations

import base64
import contextlib
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import structlog
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from receiver import times
from receiver.auth import Denied
from receiver.errors import StorageBusy, StorageUnavailable
from receiver.metrics import CONTENT_TYPE_LATEST
from receiver.openapi import build_spec, docs_page
from receiver.paging import decode_token
from receiver.records import DeliveryRecord, DeliveryStatus

log = structlog.get_logger("taskhook.api")

if TYPE_CHECKING:
    from receiver.app import TaskhookApp

Endpoint = Callable[[Request], Awaitable[Response]]


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return times.iso(ts, "milliseconds")


def body_fields(body: bytes | None) -> dict[str, Any]:
    if body is None:
        return {"body": None}
    try:
        return {"body": body.decode("utf-8")}
    except UnicodeDecodeError:
        return {"body_b64": base64.b64encode(body).decode()}


def delivery_summary(d: DeliveryRecord) -> dict[str, Any]:
    return {
        "delivery_id": d.id,
        "source": d.source,
        "kind": d.kind,
        "status": d.status.value,
        "task_id": d.task_id,
        "received_at": iso(d.received_at),
        "attempts": d.attempts,
        "next_attempt_at": iso(d.next_attempt_at) if d.status is DeliveryStatus.FAILED else None,
        "last_error": d.last_error,
        "duplicate_of": d.duplicate_of,
        # Later receipts of this delivery, counted here (first seen: received_at).
        "duplicates": {"count": d.duplicate_count, "last_seen": iso(d.last_duplicate_at)},
        "sender_delivery_id": d.sender_delivery_id,
        "verified_by": None
        if d.key_index is None or d.key_index < 0
        else {"key_index": d.key_index, "key_fingerprint": d.key_fingerprint},
        "replayed": d.replayed,
        "reconciled": d.reconciled,
        "operator": d.operator,
        "processed_at": iso(d.processed_at),
    }


def delivery_detail(d: DeliveryRecord) -> dict[str, Any]:
    return {
        **delivery_summary(d),
        "headers": d.headers,
        "content_type": d.content_type,
        **body_fields(d.body),
        "last_traceback": d.last_traceback,
    }


def retry_after(exc: Exception) -> str:
    """Seconds a client should wait: a full write queue clears in moments, a database that
    is down takes longer (the intake answers with the same)."""
    return "1" if isinstance(exc, StorageBusy) else "5"


def storage_unavailable(request: Request, exc: Exception) -> JSONResponse:
    """Starlette's handler of `StorageUnavailable` raised by any route. The database's own
    words (hosts, ports, paths) go to the log, not to whoever asked over the internet."""
    log.warning("storage unavailable; answered 503", path=request.url.path, error=str(exc))
    return JSONResponse(
        {"error": "storage unavailable"},
        status_code=503,
        headers={"retry-after": retry_after(exc)},
    )


def error(status: int, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": message, **extra}, status_code=status)


def build_routes(app: TaskhookApp) -> list[Route]:
    def guarded(scope: str, endpoint: Endpoint) -> Endpoint:
        async def wrapper(request: Request) -> Response:
            who = app.keys.authorize(request.headers.get("authorization"), scope)
            if isinstance(who, Denied):
                return error(who.status, who.reason)
            try:
                return await endpoint(request)
            except StorageUnavailable as exc:
                return storage_unavailable(request, exc)

        return wrapper

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> Response:
        try:
            await app.storage.probe()  # a real write, at most one a second
        except StorageUnavailable as exc:
            log.warning("not ready: storage cannot take a write", error=str(exc))
            return JSONResponse(
                {"status": "not ready", "reason": "storage cannot take a write"},
                status_code=503,
                headers={"retry-after": retry_after(exc)},
            )
        return JSONResponse({"status": "ready"})

    async def metrics(request: Request) -> Response:
        # On an outage the last known value stays; readyz reports the outage.
        with contextlib.suppress(StorageUnavailable):
            app.metrics.backlog.set(await app.storage.backlog())
        return Response(app.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    async def list_deliveries(request: Request) -> Response:
        q = request.query_params
        status: DeliveryStatus | None = None
        if "status" in q:
            try:
                status = DeliveryStatus(q["status"])
            except ValueError:
                allowed = ", ".join(s.value for s in DeliveryStatus)
                return error(400, f"status must be one of {allowed}")
        try:
            limit = int(q.get("limit", "100"))
        except ValueError:
            return error(400, "limit must be an integer from 1 to 100")
        if not 1 <= limit <= 100:
            return error(400, "limit must be an integer from 1 to 100")
        before: int | None = None
        if token := q.get("next_token"):
            try:
                before = decode_token(token)
            except ValueError as exc:
                return error(400, str(exc))
        page = await app.storage.list_deliveries(
            status=status,
            source=q.get("source"),
            task_id=q.get("task_id"),
            limit=limit,
            before_seq=before,
        )
        return JSONResponse(
            {
                "docs": [delivery_summary(d) for d in page.items],
                "total": page.total,
                "limit": limit,
                "has_more": page.next_token is not None,
                "next_token": page.next_token,
            }
        )

    async def show_delivery(request: Request) -> Response:
        delivery_id = request.path_params["delivery_id"]
        found = await app.storage.get_delivery(delivery_id)
        if found is None:
            return error(404, "no such delivery", delivery_id=delivery_id)
        return JSONResponse(delivery_detail(found))

    async def retry_delivery(request: Request) -> Response:
        delivery_id = request.path_params["delivery_id"]
        done = await app.retry(delivery_id)
        if done is None:
            return error(404, "no such delivery", delivery_id=delivery_id)
        if not done:
            return error(
                409,
                "only failed, dead or quarantined deliveries whose body is still kept can be "
                "retried",
                delivery_id=delivery_id,
            )
        return JSONResponse({"status": "received", "delivery_id": delivery_id}, status_code=202)

    described: list[dict[str, Any]] = []  # built on first request: every route is known then

    def spec() -> dict[str, Any]:
        if not described:
            described.append(build_spec(app))
        return described[0]

    async def openapi(request: Request) -> Response:
        return JSONResponse(spec())

    async def docs(request: Request) -> Response:
        return HTMLResponse(docs_page(spec()))

    return [
        Route("/healthz", healthz, methods=["GET"]),
        Route("/openapi.json", openapi, methods=["GET"]),
        Route("/docs", docs, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/v1/deliveries", guarded("deliveries.read", list_deliveries), methods=["GET"]),
        Route(
            "/v1/deliveries/{delivery_id}",
            guarded("deliveries.read", show_delivery),
            methods=["GET"],
        ),
        Route(
            "/v1/deliveries/{delivery_id}/retry",
            guarded("deliveries.write", retry_delivery),
            methods=["POST"],
        ),
    ]
