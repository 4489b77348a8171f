"""What an alert looks like on the wire: the body of each format, and its headers.

- ``slack``: ``{"text": "taskhook <kind>: <summary> <link>"}``, one line, no emoji, the
  characters Slack treats as markup (``& < >``) escaped as its docs ask. Slack, Mattermost
  and Discord's ``/slack`` endpoint take it as is.
- ``json``: the alert as an object: ``id``, ``type`` (the signal kind), ``key``,
  ``summary``, ``details``, ``link``, ``raised_at`` (ISO 8601, UTC).

Links are dashboard paths; with a public base URL known they are made absolute.
With a secret, the exact body bytes are signed as Standard Webhooks (``webhook-id`` is the
alert id, stable across retries, so a receiver can drop a repeat).
"""

from __future__ import annotations

from typing import Literal

import orjson

from handlers.alerts.outbox import Alert
from receiver.signing import sign_standard_webhooks
from receiver.times import iso

Format = Literal["slack", "json"]
USER_AGENT = "taskhook-alerts"


def link_of(alert: Alert, public_url: str | None) -> str | None:
    if alert.link is None:
        return None
    if public_url and alert.link.startswith("/"):
        return public_url.rstrip("/") + alert.link
    return alert.link


def _slack_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def body_of(alert: Alert, fmt: Format, *, public_url: str | None = None) -> bytes:
    link = link_of(alert, public_url)
    if fmt == "slack":
        text = f"taskhook {alert.kind}: {alert.summary}" + (f" {link}" if link else "")
        return orjson.dumps({"text": _slack_escape(text)})
    return orjson.dumps({
        "id": alert.id, "type": alert.kind, "key": alert.key, "summary": alert.summary,
        "details": alert.details, "link": link, "raised_at": iso(alert.raised_at),
    })  # fmt: skip


def headers_of(alert: Alert, body: bytes, *, secret: str | None, now: float) -> dict[str, str]:
    headers = {"content-type": "application/json", "user-agent": USER_AGENT}
    if secret:
        headers |= sign_standard_webhooks(body, secret, msg_id=alert.id, timestamp=int(now))
    return headers
