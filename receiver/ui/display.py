"""How a stored delivery is shown: its body (pretty when JSON, always exact on request),
its verifying key, its age. Plain functions of a record; the templates do the markup."""

from __future__ import annotations

import base64
from dataclasses import dataclass

import orjson

from receiver.records import DeliveryRecord, DeliveryStatus

# Bodies are shown up to this size (the API has them whole); a callback is rarely near it.
MAX_SHOWN = 256 * 1024
RETRYABLE = frozenset({DeliveryStatus.FAILED, DeliveryStatus.DEAD, DeliveryStatus.QUARANTINED})


@dataclass(frozen=True, slots=True)
class BodyView:
    kind: str  # json | text | binary | none (pruned by retention)
    size: int
    exact: str  # the bytes as text (UTF-8), or base64 when they are not text
    pretty: str | None  # indented JSON, when the body is JSON
    truncated: bool


def body_view(body: bytes | None) -> BodyView:
    if body is None:
        return BodyView("none", 0, "", None, False)
    shown, truncated = body[:MAX_SHOWN], len(body) > MAX_SHOWN
    try:
        text = shown.decode("utf-8")
    except UnicodeDecodeError:
        return BodyView("binary", len(body), base64.b64encode(shown).decode(), None, truncated)
    pretty: str | None = None
    if not truncated and text.lstrip()[:1] in ("{", "["):
        try:
            pretty = orjson.dumps(orjson.loads(body), option=orjson.OPT_INDENT_2).decode()
        except orjson.JSONDecodeError:
            pretty = None
    return BodyView("json" if pretty is not None else "text", len(body), text, pretty, truncated)


def verified_by(d: DeliveryRecord) -> tuple[int, str] | None:
    """(key index, fingerprint) of the secret that verified `d`; None when none did."""
    if d.key_index is None or d.key_index < 0:
        return None
    return d.key_index, d.key_fingerprint or ""


def retryable(d: DeliveryRecord) -> bool:
    return d.status in RETRYABLE and d.body is not None


def age(seconds: float | None) -> str:
    """``4m 12s``: how long, for a person (the JS keeps it current on the overview)."""
    if seconds is None:
        return "—"
    s = int(max(0, seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h {s % 3600 // 60:02d}m"
    return f"{s // 86400}d {s % 86400 // 3600:02d}h"
