"""``POST /callbacks/{source}``: read, verify, store durably, ack. A plain ASGI callable.

The order is the contract: unknown source 404 → what needs no body, before it is read:
credentials in headers 401 (a header token entirely; a signature's headers), declared size
413, content encoding 415 → the body, streamed within the size limit, the body deadline and
the unverified-bytes budget (503 past it), inflated within the limit if compressed →
verification over the exact bytes 401 (nothing stored) → content type 415 and parse 400
(stored as quarantined: an authenticated delivery is never dropped) → durable commit → 200
accepted / duplicate. A storage failure answers 503 so the sender retries; no 200 leaves
before its own commit. A request answered before its body was read gets its connection
closed.

It is plain ASGI rather than a Starlette endpoint because this is the hot path: framework
routing and request objects cost more than the verification itself (shared/PERF-NOTES.md).
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import time
from collections.abc import Callable, Mapping
from typing import Any

import orjson
import structlog
from starlette.types import Receive, Scope, Send

from receiver import verify
from receiver.actions import parse_action
from receiver.bodies import media_type, readable
from receiver.errors import PayloadError, StorageBusy, StorageUnavailable, VerificationError
from receiver.metrics import Metrics
from receiver.reading import (
    BodyTooLarge,
    ByteBudget,
    ClientGone,
    CorruptEncoding,
    Held,
    OverBudget,
    UnsupportedEncoding,
    content_coding,
    decode_content,
    read_body,
)
from receiver.records import DeliveryStatus, NewDelivery, StoreResult, new_id
from receiver.redaction import Redactor
from receiver.source_runtime import UNVERIFIED, SourceRuntime
from receiver.storage import Storage

log = structlog.get_logger("taskhook.intake")

_BUSY = orjson.dumps({"error": "receiver busy: too many deliveries waiting, retry shortly"})
_OVER_BUDGET = orjson.dumps({"error": "receiver busy: too many unverified bodies, retry shortly"})
_RETRY_SOON = (_BUSY, _OVER_BUDGET)

PREFIX = "/callbacks/"
WORKSTREAM_PREFIX = "/v1/workstreams/"
WORKSTREAM_PATH = re.compile(r"^/v1/workstreams/([^/]+)/task_completed$")


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
        unverified_bytes: int = 64 * 1024 * 1024,
        redactor: Redactor | None = None,
    ) -> None:
        self._sources = dict(sources)
        self._body_timeout = body_timeout
        self._unverified = ByteBudget(unverified_bytes)
        self._redactor = redactor or Redactor(())
        # Keys verifying-key fingerprints (`verify.fingerprint`); the app sets the
        # installation's own once storage is open.
        self.fingerprint_key = b""
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
            status, body, unread = await self._handle(source, scope, receive)
        except ClientGone:
            log.info("client disconnected before sending its whole body; nothing stored")
            return
        extra: list[tuple[bytes, bytes]] = []
        if status == 503:
            # A full queue clears in moments; a database that is down takes longer.
            extra.append((b"retry-after", b"1" if body in _RETRY_SOON else b"5"))
        if unread or status == 408:
            # The rest of the body is not read: the connection cannot carry another request.
            extra.append((b"connection", b"close"))
        await send_json(send, status, body, tuple(extra))

    async def _handle(
        self, source: SourceRuntime, scope: Scope, receive: Receive
    ) -> tuple[int, bytes, bool]:
        """The answer, and whether the body was left unread. What needs no body is decided
        before it is read: credentials in headers, the declared size, the encoding."""
        headers: dict[str, str] = {}
        for raw_name, raw_value in scope["headers"]:
            key = raw_name.decode("latin-1").lower()
            value = raw_value.decode("latin-1")
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
        try:
            verified = source.precheck(headers, self._clock())
        except VerificationError as exc:
            return (*self._rejected(source, exc), True)
        limit = source.settings.max_body_bytes
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            return (*self._refuse_large(source, limit), True)
        try:
            coding = content_coding(headers)
        except UnsupportedEncoding as exc:
            self._counters[source.name, "unsupported"].inc()
            return (*_json(415, {
                "error": f"content encoding {exc.encoding!r} is not supported: "
                "send the body as is, gzip or deflate",
            }), True)  # fmt: skip
        # A body whose credentials are still to be checked draws on the unverified budget.
        held = Held(None if verified is not None else self._unverified)
        try:
            # One deadline for the whole body (not one per chunk): a trickling client is
            # cut off as surely as a silent one.
            async with asyncio.timeout(self._body_timeout):
                raw = await read_body(receive, limit, held)
            if coding is None:
                return (*await self.accept(source, raw, headers, verified=verified), False)
            return (*await self._decoded(source, raw, coding, headers, verified, held), False)
        except BodyTooLarge:
            return (*self._refuse_large(source, limit), True)
        except OverBudget:
            self._counters[source.name, "busy"].inc()
            log.warning("unverified body budget spent; answered 503", held=self._unverified.held)
            return 503, _OVER_BUDGET, True
        except TimeoutError:
            self._counters[source.name, "timeout"].inc()
            log.info("request body not received in time; nothing stored")
            return (*_json(408, {
                "error": f"request body not received within {self._body_timeout:g} s",
            }), True)  # fmt: skip
        finally:
            held.release()

    async def _decoded(
        self,
        source: SourceRuntime,
        raw: bytes,
        coding: str,
        headers: dict[str, str],
        verified: verify.Verified | None,
        held: Held,
    ) -> tuple[int, bytes]:
        """A compressed delivery, inflated within the limit (off the loop, and held in the
        unverified budget, while not verified), then accepted as the payload it carries."""
        limit = source.settings.max_body_bytes
        headers = {k: v for k, v in headers.items() if k != "content-encoding"}
        headers["x-original-content-encoding"] = coding
        try:
            if verified is None:
                body = await asyncio.to_thread(decode_content, raw, coding, limit)
                held.take(len(body))
            else:
                body = decode_content(raw, coding, limit)
        except CorruptEncoding as exc:
            if verified is None:  # nothing proves who sent it: refuse, store nothing
                return _json(400, {"error": "unreadable body", "reason": str(exc)})
            return await self.accept(source, raw, headers, verified=verified, unreadable=str(exc))
        return await self.accept(source, body, headers, verified=verified, alternate=raw)

    def _rejected(self, source: SourceRuntime, exc: VerificationError) -> tuple[int, bytes]:
        self._metrics.verification_failures.labels(source.name).inc()
        self._counters[source.name, "rejected"].inc()
        log.info("verification failed", reason=exc.reason)
        return _json(401, {"error": "verification failed", "reason": exc.reason})

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
        verified: verify.Verified | None = None,
        alternate: bytes | None = None,
        unreadable: str | None = None,
    ) -> tuple[int, bytes]:
        """Verify, parse and durably store one read delivery; the HTTP answer it gets.

        `replayed`: a recorded signature must still verify, only not its freshness; a
        recorded header token (redacted at receipt) stands for the check passed then.
        `reconciled`: synthesized from the vendor's API over an authenticated connection,
        nothing to check. `operator`: a local replay of an exported operator action (the
        key name that made it), stored as that action again. The HTTP path passes what it
        checked before the body (`verified`), the body as it came when it came compressed
        (`alternate`), and why an authenticated body cannot be read at all (`unreadable`).
        """
        now = self._clock()
        try:
            if reconciled or operator is not None:
                verified = UNVERIFIED
            elif verified is None:
                verified = source.check(body, headers, now, recorded=replayed, alternate=alternate)
        except VerificationError as exc:
            return self._rejected(source, exc)

        content_type = headers.get("content-type", "")
        status = DeliveryStatus.RECEIVED
        task_id: str | None = None
        reason: str | None = None
        fields: list[dict[str, str]] = []
        refusal = 400
        try:
            if unreadable is not None:
                raise PayloadError(unreadable)
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
            headers=self._redactor.headers(headers, by_name=source.redact),
            body=body,
            content_type=content_type,
            dedup_key=dedup_key,
            status=status,
            task_id=task_id,
            sender_delivery_id=verified.delivery_id,
            key_index=verified.key_index,
            key_fingerprint=source.fingerprint(verified, self.fingerprint_key),
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
