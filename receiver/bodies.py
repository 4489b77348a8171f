"""Turning verified body bytes into JSON values, by content type.

Runs only after verification. Senders post JSON as ``application/json``, some relays as
``text/plain``, and old Scale-style senders as ``application/x-www-form-urlencoded`` whose
fields hold JSON text; all three are read. Anything else is `UnsupportedMediaType`.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl

import orjson

from receiver.errors import PayloadError, UnsupportedMediaType

_JSON_TYPES = frozenset({"application/json", "text/plain", "text/json", ""})
_FORM = "application/x-www-form-urlencoded"


def media_type(content_type: str) -> str:
    return content_type.split(";", 1)[0].strip().lower()


def readable(content_type: str) -> bool:
    mt = media_type(content_type)
    return mt in _JSON_TYPES or mt == _FORM or mt.endswith("+json")


def decode(body: bytes, content_type: str) -> Any:
    """The JSON value carried by `body`; `PayloadError` says precisely why not."""
    mt = media_type(content_type)
    if mt == _FORM:
        return _decode_form(body)
    if not readable(content_type):
        raise UnsupportedMediaType(
            f"content type {mt!r} is not supported: send application/json (or text/plain JSON)"
        )
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise PayloadError(f"body is not valid JSON: {exc}") from None


def _decode_form(body: bytes) -> Any:
    if body.lstrip()[:1] in (b"{", b"["):
        # JSON sent as a form: what `curl --data-binary @file.json` does without `-H
        # content-type`. The bytes say what they are; read them as such.
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise PayloadError(f"body is not valid JSON: {exc}") from None
    try:
        pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True, strict_parsing=True)
    except (UnicodeDecodeError, ValueError):
        # (the parser's message quotes the body back: never echo what a sender posted)
        raise PayloadError(
            "the body is neither a form nor JSON: send JSON with `content-type: application/json`"
        ) from None
    out: dict[str, Any] = {}
    for key, value in pairs:
        try:
            out[key] = orjson.loads(value)
        except orjson.JSONDecodeError:
            out[key] = value
    return out
