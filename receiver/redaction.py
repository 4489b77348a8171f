"""Keeping secrets out of what is stored, logged and printed.

Redaction goes by value as well as by name: a configured secret arriving in any header (a
header token sent to the wrong source, a key pasted into a custom header) is replaced in
the stored headers, and a log line carrying one is scrubbed before it is written. Database
URLs lose their password in both forms, ``user:password@host`` and ``?password=...``.

This module imports nothing of ours.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, MutableMapping
from typing import Any

REDACTED = "[redacted]"
# Shorter values are redacted only where a header equals them: as substrings they would
# blank out ordinary text.
MIN_SUBSTRING = 6
_URL_PASSWORD = re.compile(r"(?P<head>://[^/@:?#]*:)(?P<password>[^/@?#]*)(?=@)")
_QUERY_PASSWORD = re.compile(r"(?P<head>[?&](?:password|passwd|pwd)=)(?P<password>[^&#]*)", re.I)


def redact_url(url: str) -> str:
    """`url` with any password replaced (``postgresql://u:***@h/db?password=***``)."""
    url = _URL_PASSWORD.sub(lambda m: m.group("head") + "***", url)
    return _QUERY_PASSWORD.sub(lambda m: m.group("head") + "***", url)


def display_url(url: str) -> str:
    """Where a database is, for logs and messages: host, port and name, no credentials."""
    return redact_url(url).rsplit("@", 1)[-1]


class Redactor:
    """Replaces configured secret values, wherever they appear."""

    def __init__(self, secrets: Iterable[str]) -> None:
        values = {s for s in secrets if s}
        # Header bytes reach us decoded as latin-1: a UTF-8 secret arrives as that text.
        values |= {s.encode("utf-8", "surrogatepass").decode("latin-1") for s in values}
        self._exact = frozenset(values)
        # Longest first, so a secret that contains another is replaced whole.
        self._inner = tuple(sorted((s for s in values if len(s) >= MIN_SUBSTRING), key=len))[::-1]

    def contains_secret(self, value: str) -> bool:
        return value in self._exact or any(s in value for s in self._inner)

    def headers(
        self, headers: Mapping[str, str], *, by_name: frozenset[str] = frozenset()
    ) -> dict[str, str]:
        """A copy of `headers` with named headers and any carrying a secret redacted (in its
        value, or in its name: that header is dropped for a redacted one)."""
        out: dict[str, str] = {}
        for name, value in headers.items():
            if self.contains_secret(name):
                out[f"x-redacted-header-{len(out)}"] = REDACTED
            elif name in by_name or self.contains_secret(value):
                out[name] = REDACTED
            else:
                out[name] = value
        return out

    def text(self, value: str) -> str:
        if value in self._exact:
            return REDACTED
        for secret in self._inner:
            if secret in value:
                value = value.replace(secret, REDACTED)
        return value

    def __call__(
        self, logger: Any, method: str, event: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        """A structlog processor: every string value of a log line scrubbed."""
        for key, value in event.items():
            if isinstance(value, str):
                event[key] = self.text(value)
        return event
