"""The public front door: uvicorn, with limits enforced before any work is spent on a request.

uvicorn stays the server, but its httptools protocol (0.54) has no deadline for the request
headers, no limit on their size (llhttp has none, and httptools accumulates a header value
across reads), re-arms nothing when the first byte of the next request cancels its keep-alive
timer, and its ``limit_concurrency`` counts open connections and requests together. So
`FrontDoorProtocol` subclasses it and enforces the ``[http]`` settings itself:

- Header size: bytes are counted as they arrive while a request head is incomplete, so an
  8 MB header is refused once ``max_header_bytes`` have arrived, not when it is complete. A
  complete head is measured from what the parser saw only when the bytes received do not
  already bound it (past the limit, or begun in a read where another message ended). Over
  the limit, or more than ``max_headers`` headers (counted in `on_header`): 431.
- Header deadline: the head must be complete ``header_timeout_seconds`` after the connection
  opened or, on a kept-alive connection, after the first byte that follows a response (until
  that byte uvicorn's keep-alive timer, ``keep_alive_seconds``, applies). Bytes trickling in
  never extend it. On expiry the connection is closed (with a 408 if a request had begun).
- Open connections: one opened while ``max_connections`` are open has its request read under
  a short deadline; /healthz and /readyz are served, anything else gets 503 + Retry-After.
  Start-up raises the soft ``RLIMIT_NOFILE`` to the hard limit and lowers the cap when the
  descriptors cannot hold it, keeping `RESERVE_FDS` for the process itself and for those
  over-cap connections; past ``soft limit - OWN_FDS`` a new connection is closed unread.
- Requests in flight (uvicorn's running ASGI tasks): at ``max_concurrency``, 503 +
  Retry-After, health checks excepted.

A refusal writes its response, half-closes, and reads and drops what still arrives (for
`LINGER_SECONDS`, `LINGER_BYTES` at most) before closing: closing a socket with unread input
makes the kernel send a reset, which can destroy the response before the client read it.

The common path costs a few attribute reads per read and per header, and no timer per
request when a head arrives in one read (the benchmark figure is in bench/README.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import resource
import socket
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, ClassVar

import httptools
import orjson
import structlog
import uvicorn
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from receiver.config import HttpSettings, Settings

log = structlog.get_logger("taskhook.server")
Headers = Iterable[tuple[bytes, bytes]]

OWN_FDS = 32  # descriptors the process needs for itself: storage, logs, the event loop
RESERVE_FDS = 64  # OWN_FDS plus room for connections over the cap (read to answer 503)
OVER_CAP_HEADER_SECONDS = 2.0  # header deadline of a connection opened at the cap
LINGER_SECONDS = 1.0  # after a refusal, input is read and dropped this long at most,
LINGER_BYTES = 256 * 1024  # and this much at most
ALARM_INTERVAL = 60.0  # at most one warning a minute per kind of refusal
HEALTH_PATHS = frozenset({b"/healthz", b"/readyz"})
TOO_LARGE = "request header fields too large"
ERRORS = {"max_header_bytes": TOO_LARGE, "max_headers": TOO_LARGE,
          "max_connections": "too many open connections, retry shortly",
          "max_concurrency": "too many requests in flight, retry shortly"}  # fmt: skip
# The request line around method and target (" ", " HTTP/1.1\r\n") and the blank line after
# the headers: with the target and the header lines, the head's size in bytes.
LINE_EXTRA = 14


@dataclass(frozen=True, slots=True)
class Limits:
    header_timeout: float
    max_header_bytes: int
    max_headers: int
    max_connections: int  # effective: lowered to what the descriptors hold
    ceiling: int  # connections past which a new one is closed unread
    max_concurrency: int


class _Alarms:
    """Warnings about refusals, at most one per kind per `ALARM_INTERVAL`, with a count."""

    def __init__(self) -> None:
        self._last: dict[str, float] = {}
        self._count: dict[str, int] = {}

    def note(self, kind: str, **detail: Any) -> None:
        self._count[kind] = self._count.get(kind, 0) + 1
        now = time.monotonic()
        if now - self._last.get(kind, -ALARM_INTERVAL) >= ALARM_INTERVAL:
            self._last[kind] = now
            log.warning("front door refusing requests", limit=kind,
                        refused_since_last_warning=self._count.pop(kind), **detail)  # fmt: skip


class _Refused(Exception):
    """Raised inside a parser callback to stop parsing; `_refusal` holds the answer."""


def _response(status: int, payload: dict[str, Any], default: Headers, retry: bool = False) -> bytes:
    body = orjson.dumps(payload)
    parts = [STATUS_LINE[status]]
    for name, value in default:
        parts += [name, b": ", value, b"\r\n"]
    parts += [b"content-type: application/json\r\ncontent-length: %d\r\n" % len(body)]
    if retry:
        parts.append(b"retry-after: 1\r\n")
    parts += [b"connection: close\r\n\r\n", body]
    return b"".join(parts)


class FrontDoorProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the `Limits` of its class (see `protocol_for`)."""

    limits: ClassVar[Limits]
    alarms: ClassVar[_Alarms]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._max_head = self.limits.max_header_bytes
        self._max_headers = self.limits.max_headers
        self._max_concurrency = self.limits.max_concurrency
        self._head_bytes = 0  # received since the last head or message completed
        self._inexact = False  # the head began in a read where a message ended: not counted
        self._header_timer: asyncio.TimerHandle | None = None
        self._linger_timer: asyncio.TimerHandle | None = None
        self._refusal: bytes | None = None
        self._over_cap = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        open_before = len(self.connections)
        super().connection_made(transport)
        limits = self.limits
        if open_before >= limits.ceiling:
            self.alarms.note("descriptors", open=open_before, ceiling=limits.ceiling)
            transport.close()
            return
        delay = limits.header_timeout
        if open_before >= limits.max_connections:
            self._over_cap = True
            delay = min(delay, OVER_CAP_HEADER_SECONDS)
        self._header_timer = self.loop.call_later(delay, self._header_expired)

    def connection_lost(self, exc: Exception | None) -> None:
        for timer in (self._header_timer, self._linger_timer):
            if timer is not None:
                timer.cancel()
        self._header_timer = self._linger_timer = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refusal is not None:  # lingering after a refusal: read and dropped
            self._head_bytes += len(data)
            if self._head_bytes > LINGER_BYTES:
                self.transport.close()
            return
        self._unset_keepalive_if_required()
        # Counted before parsing and reset by the callbacks below, so the count is never more
        # than the head bytes: at worst the part of a read after a completed message is missed.
        self._head_bytes += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            if self._refusal is not None:  # our own check, raised inside a callback
                self._linger()
                return
            msg = "Invalid HTTP request received."
            self.logger.warning(msg)
            self.send_400_response(msg)
            return
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return
        cycle = self.cycle
        if cycle is not None and self.scope is cycle.scope:
            # No newer head begun: a request is running (its own deadlines apply) unless its
            # response is done and these bytes are leftovers, which get the header deadline.
            if not cycle.response_complete:
                return
        elif self.scope is not None:
            if self._head_bytes < len(data):
                # A message ended within this read, so the bytes of the head begun after it
                # are not counted here: its size is checked exactly once complete.
                self._inexact = True
            elif self._head_bytes > self._max_head:
                self._refuse(431, "max_header_bytes")
                self._linger()
                return
        if self._header_timer is None:
            self._header_timer = self.loop.call_later(
                self.limits.header_timeout, self._header_expired
            )

    def on_header(self, name: bytes, value: bytes) -> None:
        headers = self.headers
        if len(headers) >= self._max_headers:
            self._refuse(431, "max_headers")
            raise _Refused
        # uvicorn's own on_header, inlined: this runs for every header of every request.
        name = name.lower()
        if name == b"expect" and value.lower() == b"100-continue":
            self.expect_100_continue = True
        headers.append((name, value))

    def on_headers_complete(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None
        # What arrived since the head began bounds its size, unless a message ended in the read
        # it began in: only then, or past the limit, is the size counted from the parser.
        if (self._head_bytes > self._max_head or self._inexact) and self._size() > self._max_head:
            self._refuse(431, "max_header_bytes")
            raise _Refused
        self._head_bytes, self._inexact = 0, False
        busy = self._over_cap or len(self.tasks) >= self._max_concurrency
        if busy and self.url.partition(b"?")[0] not in HEALTH_PATHS:
            self._refuse(503, "max_connections" if self._over_cap else "max_concurrency")
            raise _Refused
        super().on_headers_complete()
        if self._over_cap and self.cycle is not None and self.cycle.scope is self.scope:
            self.cycle.keep_alive = False  # answered, then the descriptor goes back

    def on_message_complete(self) -> None:
        self._head_bytes = 0
        super().on_message_complete()

    def _size(self) -> int:
        """The head's size in bytes, as parsed (the request line, header lines, blank line)."""
        lines = sum(len(name) + len(value) + 4 for name, value in self.headers)
        return lines + len(self.url) + len(self.parser.get_method()) + LINE_EXTRA

    def _header_expired(self) -> None:
        self._header_timer = None
        transport = self.transport
        if transport.is_closing():
            return
        cycle = self.cycle
        begun = self.scope is not None and (cycle is None or self.scope is not cycle.scope)
        if begun and (cycle is None or cycle.response_complete):
            seconds = self.limits.header_timeout
            payload = {"error": f"request headers not received within {seconds:g} s"}
            transport.write(_response(408, payload, self.server_state.default_headers))
        self.alarms.note("header_timeout_seconds", seconds=self.limits.header_timeout)
        transport.close()

    def _refuse(self, status: int, limit: str) -> None:
        """Prepare the answer naming `limit` (a field of `Limits`); `_linger` sends it."""
        value = getattr(self.limits, limit)
        self.alarms.note(limit, value=value)
        payload = {"error": ERRORS[limit], "limit": limit, limit: value}
        headers = self.server_state.default_headers
        self._refusal = _response(status, payload, headers, retry=status == 503)

    def _linger(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None
        self._unset_keepalive_if_required()
        transport = self.transport
        if transport.is_closing() or self._refusal is None:
            return
        transport.write(self._refusal)
        self._head_bytes = 0  # now counts what is dropped
        if transport.can_write_eof():
            transport.write_eof()
        self.flow.resume_reading()
        self._linger_timer = self.loop.call_later(LINGER_SECONDS, transport.close)


def connection_cap(max_connections: int) -> tuple[int, int]:
    """(cap, ceiling) the process's descriptors can hold: raises the soft RLIMIT_NOFILE to
    the hard limit first, and lowers the cap (with one warning) when still short."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass  # keep the soft limit we have; the cap below accounts for it
    cap = max_connections
    if cap + RESERVE_FDS > soft:
        cap = max(1, soft - RESERVE_FDS)
        log.warning("open-file limit too low for [http] max_connections; cap lowered",
                    max_connections=max_connections, effective=cap, nofile_soft=soft,
                    nofile_hard=hard, reserve=RESERVE_FDS)  # fmt: skip
    return cap, max(cap + 1, soft - OWN_FDS)


def protocol_for(http: HttpSettings) -> type[FrontDoorProtocol]:
    """A protocol class bound to these limits, with its own refusal warnings (one class per
    server). The connection cap is what the descriptors hold: see `connection_cap`."""
    cap, ceiling = connection_cap(http.max_connections)

    class BoundFrontDoor(FrontDoorProtocol):
        pass

    BoundFrontDoor.limits = Limits(
        header_timeout=http.header_timeout_seconds,
        max_header_bytes=http.max_header_bytes,
        max_headers=http.max_headers,
        max_connections=cap,
        ceiling=ceiling,
        max_concurrency=http.max_concurrency,
    )
    BoundFrontDoor.alarms = _Alarms()
    return BoundFrontDoor


def build_config(
    app: Any,
    settings: Settings,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    proxy_headers: bool = False,
    forwarded_allow_ips: str | None = "127.0.0.1",
    access_log: bool = False,
    log_level: str | None = None,
    graceful_timeout: float = 10.0,
) -> uvicorn.Config:
    """The uvicorn configuration `taskhook serve` runs (and the benchmarks, through it)."""
    http = settings.http
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        proxy_headers=proxy_headers,
        forwarded_allow_ips=forwarded_allow_ips,
        access_log=access_log,
        log_level=log_level or settings.log.level,
        # uvicorn annotates these two int but only passes them on as seconds to asyncio
        # (wait_for, call_later), which take floats.
        timeout_graceful_shutdown=graceful_timeout,  # type: ignore[arg-type]
        timeout_keep_alive=http.keep_alive_seconds,  # type: ignore[arg-type]
        # The protocol enforces requests in flight itself; uvicorn's limit_concurrency
        # (connections and requests together) stays off.
        http=protocol_for(http),
        # uvicorn's records go through the handler `receiver.logs` installs, so they come out
        # in the configured format (JSON included), not in uvicorn's own text format.
        log_config=None,
    )


class ListenError(OSError):
    """The address cannot be listened on (in use, not ours, not an address): one line."""


def bind_socket(host: str, port: int) -> socket.socket:
    """A socket bound to `host`:`port`, for uvicorn to listen on.

    Bound here, before the app starts, so that a port in use is one clear error (uvicorn
    finds out after the app's start-up and logs a bare errno)."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        sock = socket.socket(family, kind, proto)
    except OSError as exc:
        raise ListenError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    try:
        # As uvicorn does: a restart may reuse the port while old connections time out.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise ListenError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.set_inheritable(True)
    return sock


def probe_storage(url: str) -> None:
    """Open and close the database once, so an unopenable one stops `serve` with one line
    (`StorageUnavailable`) before uvicorn would log the lifespan's traceback."""
    from receiver.storage import open_storage

    async def probe() -> None:
        storage = open_storage(url)
        await storage.open()
        await storage.close()

    asyncio.run(probe())


def run(config: uvicorn.Config, sock: socket.socket | None = None) -> None:
    with contextlib.closing(sock) if sock is not None else contextlib.nullcontext():
        uvicorn.Server(config).run(sockets=[sock] if sock is not None else None)
