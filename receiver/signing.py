"""The primitives of the signature schemes, and signing as each sender does it.

Shared by verification (`receiver.verify`, which re-exports the signing functions) and by
the tools that sign: ``taskhook sign``, ``replay --to``, ``simulate`` and the tests.
This module imports nothing of ours.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from typing import Literal

Scheme = Literal["header-token", "hmac-sha256", "hmac-sha1", "standard-webhooks", "none"]
WHSEC_PREFIX = "whsec_"


def utf8(text: str) -> bytes:
    # surrogatepass: a secret read from a badly encoded environment must fail to match,
    # not crash the request with UnicodeEncodeError.
    return text.encode("utf-8", "surrogatepass")


def header_name(header: str) -> str:
    name = header.strip().lower()
    if not name:
        # A configuration mistake, so not a VerificationError (which would blame the sender).
        raise ValueError("a header name is required for this scheme")
    return name


def hmac_sha256(key: bytes, data: bytes) -> bytes:
    return hmac.new(key, data, hashlib.sha256).digest()


def hmac_sha1(key: bytes, data: bytes) -> bytes:
    # Only for senders that still sign with it (GitHub's legacy X-Hub-Signature, Labelbox):
    # HMAC-SHA1 is not broken as a MAC, but new schemes should not choose it.
    return hmac.new(key, data, hashlib.sha1).digest()


def b64decode(text: str, *, urlsafe: bool = True) -> bytes | None:
    """Decode base64 with optional padding (and the urlsafe alphabet if asked); ``None`` if
    ``text`` is not base64."""
    text = text.rstrip("=")
    if len(text) % 4 == 1:
        return None
    if urlsafe:
        text = text.replace("-", "+").replace("_", "/")
    padded = text + "=" * (-len(text) % 4)
    try:
        return base64.b64decode(padded, validate=True)
    except (binascii.Error, ValueError):
        return None


def standard_webhooks_key_size(secret: str) -> int:
    """Bytes of HMAC key a Standard Webhooks secret yields (configuration checks it)."""
    return len(standard_webhooks_key(secret))


def standard_webhooks_key(secret: str) -> bytes:
    """The HMAC key for a Standard Webhooks secret.

    ``whsec_<base64>`` is the documented form; an unprefixed secret is tried as base64 too
    because senders' dashboards often show it without the prefix. A secret that is not
    base64 at all is used as its utf-8 bytes so a plain shared password still works.
    """
    encoded = secret.removeprefix(WHSEC_PREFIX)
    # Standard alphabet only: a password like "my-pass_word" is meant as text, not urlsafe base64.
    key = b64decode(encoded, urlsafe=False) if encoded else None
    return key if key else utf8(secret)


def sign_header_token(secret: str, *, header: str) -> dict[str, str]:
    """The headers a header-token sender would send: ``{header.lower(): secret}``."""
    return {header_name(header): secret}


def sign_hmac_sha256(
    body: bytes, secret: str, *, header: str, encoding: str = "hex", prefix: str = "sha256="
) -> dict[str, str]:
    """The headers an hmac-sha256 sender would send. ``encoding`` is ``"hex"`` or ``"base64"``."""
    digest = hmac_sha256(utf8(secret), body)
    if encoding == "hex":
        encoded = digest.hex()
    elif encoding == "base64":
        encoded = base64.b64encode(digest).decode("ascii")
    else:
        raise ValueError(f"unknown signature encoding {encoding!r}; expected 'hex' or 'base64'")
    return {header_name(header): prefix + encoded}


def sign_hmac_sha1(body: bytes, secret: str, *, header: str) -> dict[str, str]:
    """The headers an hmac-sha1 sender would send: ``{header: "sha1=" + lower-case hex}``."""
    return {header_name(header): "sha1=" + hmac_sha1(utf8(secret), body).hex()}


def sign_standard_webhooks(
    body: bytes, secret: str, *, msg_id: str, timestamp: int
) -> dict[str, str]:
    """The ``webhook-id``, ``webhook-timestamp`` and ``webhook-signature`` headers for ``body``."""
    if not msg_id:
        raise ValueError("standard-webhooks signing needs a non-empty msg_id")
    content = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac_sha256(standard_webhooks_key(secret), content)
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": "v1," + base64.b64encode(digest).decode("ascii"),
    }


def sign(
    scheme: Scheme,
    body: bytes,
    secret: str,
    *,
    header: str = "",
    msg_id: str = "",
    timestamp: int = 0,
) -> dict[str, str]:
    """The headers a sender using ``scheme`` would add (``{}`` for ``none``).

    hmac-sha256 and hmac-sha1 sign as lower-case hex with the ``sha256=`` / ``sha1=`` prefix.
    """
    if scheme == "header-token":
        return sign_header_token(secret, header=header)
    if scheme == "hmac-sha256":
        return sign_hmac_sha256(body, secret, header=header)
    if scheme == "hmac-sha1":
        return sign_hmac_sha1(body, secret, header=header)
    if scheme == "standard-webhooks":
        return sign_standard_webhooks(body, secret, msg_id=msg_id, timestamp=timestamp)
    if scheme == "none":
        return {}
    raise ValueError(f"unknown verification scheme {scheme!r}")
