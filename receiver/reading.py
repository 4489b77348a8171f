"""Reading a request body with bounded memory: the size limit while streaming, a budget for
bodies not yet verified, and ``Content-Encoding`` decoded against the limit.

An unauthenticated sender must not be able to make the receiver hold memory it chooses: a
per-process `ByteBudget` caps the bytes held, all requests together, for bodies whose
signature is still to be checked (a header-token request is verified before its body is
read, so it never counts). A compressed body is inflated in steps, and refused as soon as
its decoded size passes the limit: a bomb never inflates past it.
"""

from __future__ import annotations

import zlib
from typing import Any

from starlette.types import Receive

# Encodings a sender may use, as zlib's window bits say them (deflate: zlib-wrapped).
_ENCODINGS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}
_STEP = 64 * 1024


class BodyTooLarge(Exception):
    pass


class ClientGone(Exception):
    pass


class OverBudget(Exception):
    """Too many bytes of unverified bodies are held already: come back shortly."""


class UnsupportedEncoding(Exception):
    def __init__(self, encoding: str) -> None:
        super().__init__(encoding)
        self.encoding = encoding


class CorruptEncoding(Exception):
    pass


class ByteBudget:
    """Bytes that requests may hold at once; `take` what you hold, `give` it back."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0

    def take(self, n: int) -> None:
        if self.held + n > self.limit:
            raise OverBudget
        self.held += n

    def give(self, n: int) -> None:
        self.held -= n


class Held:
    """What one request holds of a budget (None: it is verified, nothing to hold)."""

    def __init__(self, budget: ByteBudget | None) -> None:
        self._budget = budget
        self.bytes = 0

    def take(self, n: int) -> None:
        if self._budget is not None:
            self._budget.take(n)
            self.bytes += n

    def release(self) -> None:
        if self._budget is not None and self.bytes:
            self._budget.give(self.bytes)
            self.bytes = 0


async def read_body(receive: Receive, limit: int, held: Held | None = None) -> bytes:
    """The request body, refusing as soon as more than `limit` bytes have arrived (or the
    budget `held` draws on is spent)."""
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
        if held is not None:
            held.take(len(chunk))
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def content_coding(headers: dict[str, str]) -> str | None:
    """The body's encoding, lower-cased (None: as is); `UnsupportedEncoding` for any we do
    not decode, or for several stacked."""
    raw = headers.get("content-encoding", "").strip().lower()
    if raw in ("", "identity"):
        return None
    if raw not in _ENCODINGS:
        raise UnsupportedEncoding(raw)
    return raw


def decode_content(body: bytes, coding: str, limit: int) -> bytes:
    """`body` inflated; `BodyTooLarge` the moment the output would pass `limit`."""
    candidates: list[Any] = [zlib.decompressobj(_ENCODINGS[coding])]
    if coding == "deflate":
        candidates.append(zlib.decompressobj(-zlib.MAX_WBITS))  # raw deflate, as some send it
    for inflater in candidates:
        try:
            return _inflate(inflater, body, limit)
        except zlib.error:
            continue
    raise CorruptEncoding(f"body is not valid {coding} data")


def _inflate(inflater: Any, body: bytes, limit: int) -> bytes:
    out: list[bytes] = []
    size = 0
    data = body
    while True:
        piece = inflater.decompress(data, min(_STEP, limit + 1 - size))
        size += len(piece)
        if size > limit:
            raise BodyTooLarge
        out.append(piece)
        data = inflater.unconsumed_tail
        if not data:
            break
    if not inflater.eof:
        raise zlib.error("truncated stream")
    return b"".join(out)
