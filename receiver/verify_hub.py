"""The ``hmac-sha1`` scheme's primitives: HMAC-SHA1 of the raw body as ``sha1=<hex>``.

This is GitHub's legacy ``X-Hub-Signature`` header, which Labelbox signs its webhooks with
(``hmac.new(secret, body, sha1).hexdigest()``, compared to the header less its ``sha1=``).
`receiver.verify` runs the check (`verify_hmac_sha1`) with its own secret, size and
constant-time rules; what is particular to this header lives here, apart for size. Like
`receiver.signing`, this module imports nothing of ours but the error and the primitives.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from receiver.errors import VerificationError
from receiver.signing import hmac_sha1, utf8

# Hex only: the documented form. 40 hex characters are one 20-byte SHA-1 digest; a
# `sha256=` signature put in this header by mistake is 64 and is refused as malformed.
_HEX_SHA1 = re.compile(r"[0-9a-fA-F]{40}")
_SEPARATORS = re.compile(r"[,\s]+")
PREFIX = "sha1="


def hub_digests(value: str, name: str) -> list[bytes]:
    """The SHA-1 digests ``value`` (the header ``name``) presents.

    Each comma- or space-separated token is 40 hex characters (any case) with or without the
    ``sha1=`` prefix (any case); other tokens are ignored. Raises `VerificationError` when
    the header is absent or presents no digest at all.
    """
    if not value:
        raise VerificationError(f"missing header {name}")
    digests = []
    for token in _SEPARATORS.split(value):
        if token[: len(PREFIX)].lower() == PREFIX:
            token = token[len(PREFIX) :]
        if _HEX_SHA1.fullmatch(token):
            digests.append(bytes.fromhex(token))
    if not digests:
        raise VerificationError(f"malformed signature in header {name}")
    return digests


def expected_sha1(body: bytes, secrets: Sequence[str]) -> list[bytes | None]:
    """HMAC-SHA1 of ``body`` under each secret, as UTF-8 (None for an empty one, which must
    never match)."""
    return [hmac_sha1(utf8(secret), body) if secret else None for secret in secrets]
