"""``POST /callbacks/{source}``: read, verify, store durably, ack. A plain ASGI callable.

The order is the contract: unknown source 404 → body over the limit 413 (checked while
streaming, never buffering more than the limit) → verification over the exact bytes 401
(nothing stored) → content type 415 and parse 400 (stored as quarantined: an authenticated
delivery is never dropped) → durable commit → 200 accepted / duplicate. A storage failure
answers 503 so the sender retries; no 200 leaves before its own commit.

It is plain ASGI rather than a Starlette endpoint because this is the hot path: framework
routing and request objects cost more than the verification itself (shared/PERF-NOTES.md).
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson
import structlog
from starlette.types import Receive, Scope, Send

from receiver import verify
from receiver.actions import parse_action
from receiver.bodies import media_type, readable
from receiver.config import SourceSettings
from receiver.errors import PayloadError, StorageBusy, StorageUnavailable, VerificationError
from receiver.metrics import Metrics
from receiver.records import DeliveryStatus, NewDelivery, StoreResult, new_id
from receiver.sources import SourceAdapter
from receiver.storage import Storage

log = structlog.get_logger("taskhook.intake")

PREFIX = "/callbacks/"
WORKSTREAM_PREFIX = "/v1/workstreams/"
WORKSTREAM_PATH = re.compile(r"^/v1/workstreams/([^/]+)/task_completed$")
REDACTED = "[redacted]"
ALWAYS_REDACTED = frozenset({"authorization", "proxy-authorization", "cookie", "x-api-key"})


@dataclass(frozen=True, slots=True)
class SourceRuntime:
    """A configured source, resolved once at start-up."""

    name: str
    settings: SourceSettings
    adapter: SourceAdapter
    secrets: tuple[str, ...]
    redact: frozenset[str]

    @classmethod
    def build(cls, name: str, settings: SourceSettings, adapter: SourceAdapter) -> SourceRuntime:
        redact = set(ALWAYS_REDACTED)
        if settings.scheme == "header-token":
            redact.add(settings.header_name)  # the header carries the shared secret itself
        return cls(name, settings, adapter, settings.secret_values(), frozenset(redact))

    def check(
        self, body: bytes, headers: Mapping[str, str], now: float, *, recorded: bool = False
    ) -> verify.Verified:
        """Verify a delivery. `recorded` traffic (replay) is checked without freshness, and
        a header token redacted at receipt stands for the check passed then."""
        redacted = headers.get(self.settings.header_name) == REDACTED
        if recorded and self.settings.scheme == "header-token" and redacted:
            return verify.Verified(key_index=-1, key_fingerprint="")
        return verify.verify(
            self.settings.scheme,
            body,
            headers,
            self.secrets,
            header=self.settings.header_name,
            now=now,
            tolerance_seconds=self.settings.tolerance_seconds,
            check_timestamp=not recorded,
        )


_BUSY = orjson.dumps(
    {"error": "receiver busy: too many deliveries waiting to be stored, retry shortly"}
)


class BodyTooLarge(Exception):
    pass


class ClientGone(Exception):
    pass


def _json(status: int, payload: Mapping[str, Any]) -> tuple[int, bytes]:
    return status, orjson.dumps(payload)


async def send_json(
    send: Send, status: int, body: bytes, extra: tuple[tuple[bytes, bytes], ...] = ()
) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *extra,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def read_body(receive: Receive, limit: int) -> bytes:
    """The request body, refusing as soon as more than `limit` bytes have arrived."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


class Intake:
    def __init__(
        self,
        *,
        sources: Mapping[str, SourceRuntime],
        storage: Storage,
        metrics: Metrics,
        on_stored: Callable[[], None],
        clock: Callable[[], float] = time.time,
        body_timeout: float = 30.0,
    ) -> None:
        self._sources = dict(sources)
        self._body_timeout = body_timeout
        self._workstreams = {
            rt.settings.workstream_id or rt.name: rt
            for rt in sources.values()
            if rt.settings.kind == "cloudfactory"
        }
        self._storage = storage
        self._metrics = metrics
        self._on_stored = on_stored
        self._clock = clock
        self._counters = {
            (name, outcome): metrics.deliveries.labels(name, outcome)
            for name in self._sources
            for outcome in (
                "accepted",
                "duplicate",
                "quarantined",
                "rejected",
                "unavailable",
                "busy",
                "too_large",
                "unsupported",
                "timeout",
            )
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope["path"]
        if path.startswith(PREFIX):
            name = path[len(PREFIX) :]
            source = self._sources.get(name)
            missing = {"error": "unknown source", "source": name}
        else:
            match = WORKSTREAM_PATH.match(path)
            workstream = match.group(1) if match else ""
            source = self._workstreams.get(workstream)
            missing = {"message": "workstream not found", "workstream_id": workstream}
        if source is None:
            status, body = _json(404, missing)
            await send_json(send, status, body)
            return
        name = source.name
        if source.settings.polled:
            # Its vendor never calls back; only `taskhook reconcile` feeds it.
            status, body = _json(404, {
                "error": "source is polled, not called back", "source": name,
            })  # fmt: skip
            await send_json(send, status, body)
            return
        if scope["method"] != "POST":
            status, body = _json(405, {"error": "method not allowed: POST a delivery"})
            await send_json(send, status, body, ((b"allow", b"POST"),))
            return
        structlog.contextvars.bind_contextvars(source=name)
        try:
            status, body = await self._handle(source, scope, receive)
        except ClientGone:
            log.info("client disconnected before sending its whole body; nothing stored")
            return
        extra: tuple[tuple[bytes, bytes], ...] = ()
        if status == 503:
            # A full queue clears in moments; a database that is down takes longer.
            extra = ((b"retry-after", b"1" if body is _BUSY else b"5"),)
        if status == 408:
            extra = ((b"connection", b"close"),)
        await send_json(send, status, body, extra)

    async def _handle(
        self, source: SourceRuntime, scope: Scope, receive: Receive
    ) -> tuple[int, bytes]:
        headers: dict[str, str] = {}
        for raw_name, raw_value in scope["headers"]:
            key = raw_name.decode("latin-1").lower()
            value = raw_value.decode("latin-1")
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
        limit = source.settings.max_body_bytes
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            return self._refuse_large(source, limit)
        try:
            # One deadline for the whole body (not one per chunk): a trickling client is
            # cut off as surely as a silent one.
            async with asyncio.timeout(self._body_timeout):
                body = await read_body(receive, limit)
        except BodyTooLarge:
            return self._refuse_large(source, limit)
        except TimeoutError:
            self._counters[source.name, "timeout"].inc()
            log.info("request body not received in time; nothing stored")
            return _json(408, {
                "error": f"request body not received within {self._body_timeout:g} s",
            })  # fmt: skip
        return await self.accept(source, body, headers)

    async def accept(
        self,
        source: SourceRuntime,
        body: bytes,
        headers: dict[str, str],
        *,
        received_at: float | None = None,
        replayed: bool = False,
        reconciled: bool = False,
        operator: str | None = None,
    ) -> tuple[int, bytes]:
        """Verify, parse and durably store one read delivery; the HTTP answer it gets.

        `replay` comes through here too, with `replayed` set: a recorded signature must
        still verify, only its freshness is not checked (it was fresh when received). A
        recorded header-token delivery carries the token redacted: it was verified when it
        was received, and is stored without a key.

        Reconciliation pollers come through here with `reconciled` set: the body was
        synthesized here from the vendor's API over an authenticated connection, so there
        is no signature to check; everything after verification is the same.

        A local replay of an exported operator action comes with `operator` (the key name
        that made it): it is stored as that action again, for its source's ledger to apply.
        """
        now = self._clock()
        try:
            if reconciled or operator is not None:
                verified = verify.Verified(key_index=-1, key_fingerprint="")
            else:
                verified = source.check(body, headers, now, recorded=replayed)
        except VerificationError as exc:
            self._metrics.verification_failures.labels(source.name).inc()
            self._counters[source.name, "rejected"].inc()
            log.info("verification failed", reason=exc.reason)
            return _json(401, {"error": "verification failed", "reason": exc.reason})

        content_type = headers.get("content-type", "")
        status = DeliveryStatus.RECEIVED
        task_id: str | None = None
        reason: str | None = None
        fields: list[dict[str, str]] = []
        refusal = 400
        try:
            if not readable(content_type):
                refusal = 415
                raise PayloadError(
                    f"content type {media_type(content_type)!r} is not supported: "
                    "send application/json (or JSON as text/plain)"
                )
            if operator is not None:
                task_id = parse_action(body).task_id
            else:
                task_id = source.adapter.parse(body, content_type).task_id
        except PayloadError as exc:
            status, reason, fields = DeliveryStatus.QUARANTINED, exc.reason, exc.fields

        if verified.delivery_id:
            dedup_key = "id:" + verified.delivery_id
        else:
            dedup_key = "sha256:" + hashlib.sha256(body).hexdigest()
        if reason is not None:
            # Retries of the same bad delivery collapse into one quarantined row, while the
            # same bytes sent again correctly (say, with a readable content type) are new.
            dedup_key = f"quarantined:{refusal}:{media_type(content_type)}:{dedup_key}"
        delivery = NewDelivery(
            id=new_id("dlv_", now),
            source=source.name,
            kind=source.settings.kind,
            received_at=now if received_at is None else received_at,
            headers={k: (REDACTED if k in source.redact else v) for k, v in headers.items()},
            body=body,
            content_type=content_type,
            dedup_key=dedup_key,
            status=status,
            task_id=task_id,
            sender_delivery_id=verified.delivery_id,
            key_index=verified.key_index,
            key_fingerprint=verified.key_fingerprint or None,
            error=reason,
            replayed=replayed,
            reconciled=reconciled,
            operator=operator,
        )
        try:
            result = await self._storage.store_delivery(delivery)
        except StorageBusy as exc:
            # Backpressure: nothing was acked that is not committed; come back in a second.
            self._counters[source.name, "busy"].inc()
            log.warning("write queue full; answered 503", error=str(exc))
            return 503, _BUSY
        except StorageUnavailable as exc:
            self._counters[source.name, "unavailable"].inc()
            log.error("storage unavailable; answered 503", error=str(exc))
            return _json(503, {"error": "storage unavailable, retry later"})
        if source.settings.kind == "cloudfactory":
            return self._throughput_answer(source, result, refusal, fields)
        return self._answer(source, result, task_id, refusal)

    def _answer(
        self, source: SourceRuntime, result: StoreResult, task_id: str | None, refusal: int
    ) -> tuple[int, bytes]:
        structlog.contextvars.bind_contextvars(delivery_id=result.delivery_id, task_id=task_id)
        if result.status is DeliveryStatus.QUARANTINED:
            outcome = "unsupported" if refusal == 415 else "quarantined"
            self._counters[source.name, outcome].inc()
            log.warning("delivery quarantined", reason=result.error, duplicate=result.duplicate)
            return _json(
                refusal,
                {
                    "error": "unsupported content type" if refusal == 415 else "unparseable body",
                    "reason": result.error,
                    "status": "quarantined",
                    "delivery_id": result.delivery_id,
                },
            )
        if result.duplicate:
            self._counters[source.name, "duplicate"].inc()
            log.debug("duplicate delivery")
            return _json(200, {"status": "duplicate", "delivery_id": result.delivery_id})
        self._counters[source.name, "accepted"].inc()
        log.debug("delivery stored")
        self._on_stored()
        return _json(200, {"status": "accepted", "delivery_id": result.delivery_id})

    def _throughput_answer(
        self, source: SourceRuntime, result: StoreResult, refusal: int, fields: list[dict[str, str]]
    ) -> tuple[int, bytes]:
        """The Throughput API's own answers: 202 with its message; 422 naming each field."""
        structlog.contextvars.bind_contextvars(delivery_id=result.delivery_id)
        if result.status is DeliveryStatus.QUARANTINED:
            self._counters[source.name, "quarantined"].inc()
            log.warning("throughput record refused", reason=result.error)
            status = refusal if refusal == 415 or not fields else 422
            return _json(status, {"message": result.error, "errors": fields,
                                  "delivery_id": result.delivery_id})  # fmt: skip
        outcome = "duplicate" if result.duplicate else "accepted"
        self._counters[source.name, outcome].inc()
        if not result.duplicate:
            self._on_stored()
        return _json(202, {"message": "Data successfully received."})

    def _refuse_large(self, source: SourceRuntime, limit: int) -> tuple[int, bytes]:
        self._counters[source.name, "too_large"].inc()
        log.info("body over the limit", limit=limit)
        return _json(413, {"error": "body too large", "limit_bytes": limit})
