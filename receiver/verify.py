"""Pure checks that a webhook delivery came from the sender it claims to.

Every function here works on the raw body bytes, the request headers, the configured
secrets and (where time matters) a clock value passed in by the caller. Nothing does I/O,
reads the clock itself or parses the body, so the same code verifies live traffic, replays
recorded traffic and runs in benchmarks. Four schemes are supported:

``header-token``
    The sender puts one fixed shared key in a header (Scale and Refonte style). It proves
    only that the sender knows the key; the body is not covered.

``hmac-sha256``, ``hmac-sha1``
    A header carries HMAC-SHA256 of the raw body keyed by the secret, as hex or base64,
    optionally prefixed ``sha256=`` (GitHub style); or HMAC-SHA1 as ``sha1=<hex>``
    (``X-Hub-Signature``, Labelbox). The body is covered, but there is no timestamp, so a
    captured delivery can be replayed.

``standard-webhooks``
    Standard Webhooks v1 (https://www.standardwebhooks.com/, the scheme Svix uses): the
    signature covers the delivery id, a timestamp and the body, and the timestamp must be
    recent, so captured deliveries cannot be replayed later.

``none`` accepts everything and exists for local development.

Several secrets may be configured for one source so they can be rotated without downtime;
any of them may match, and :class:`Verified` says which one did, by position, never by value.
:func:`fingerprint` names a secret in records: keyed with a per-installation key, so a
fingerprint cannot be used to confirm a guessed secret offline.

What can be checked before the body is read is checked by :func:`precheck` (a header token
entirely; a signature scheme's headers for presence, size and freshness), so a request
without credentials costs no body buffering. Signature headers are bounded in size.
Failures raise :class:`~receiver.errors.VerificationError` whose reason is safe to send back
to the sender: it names headers, never secrets.

``headers`` mappings must have lower-case keys (callers normalise them); header names given
by configuration may be in any case.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import hmac
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from receiver.errors import VerificationError
from receiver.signing import (
    Scheme,
    b64decode,
    header_name,
    hmac_sha256,
    sign,
    sign_header_token,
    sign_hmac_sha256,
    sign_standard_webhooks,
    standard_webhooks_key,
    standard_webhooks_key_size,
    utf8,
)
from receiver.verify_hub import expected_sha1, hub_digests

__all__ = [
    "MAX_CREDENTIAL_HEADER",
    "Scheme",
    "Verified",
    "fingerprint",
    "precheck",
    "sign",
    "sign_header_token",
    "sign_hmac_sha256",
    "sign_standard_webhooks",
    "standard_webhooks_key_size",
    "verify",
    "verify_header_token",
    "verify_hmac_sha1",
    "verify_hmac_sha256",
    "verify_none",
    "verify_standard_webhooks",
]


_SHA256_SIZE = hashlib.sha256().digest_size
_HEX_SHA256 = re.compile(r"[0-9a-fA-F]{64}")
# ASCII digits only (int() would also take other scripts' digits, signs and underscores), and
# bounded so a huge value cannot cost a slow conversion.
_TIMESTAMP = re.compile(r"[0-9]{1,15}")
_SEPARATORS = re.compile(r"[,\s]+")
_SW_ID = ("webhook-id", "svix-id")
_SW_TIMESTAMP = ("webhook-timestamp", "svix-timestamp")
_SW_SIGNATURE = ("webhook-signature", "svix-signature")
# A credential header longer than this is refused before any work on it: real tokens and
# signature lists (several v1 entries during a key rotation) are a few hundred bytes.
MAX_CREDENTIAL_HEADER = 4096
_MAX_SW_ID = 256


@dataclass(frozen=True, slots=True)
class Verified:
    """The outcome of a successful check."""

    key_index: int
    """Position in ``secrets`` of the secret that matched (-1 for scheme ``none``)."""
    delivery_id: str | None = None
    """The sender's delivery id when the scheme has one (Standard Webhooks: ``webhook-id``)."""
    timestamp: int | None = None
    """The signed timestamp in unix seconds when the scheme has one."""


@functools.lru_cache(maxsize=256)
def fingerprint(secret: str, key: bytes) -> str:
    """``'hmac-sha256:'`` + the first 16 hex chars of HMAC-SHA256(key, secret as utf-8).

    Identifies a secret in logs and records without revealing it. `key` is the
    installation's own: whoever reads a record but not the key cannot test a guessed secret
    against its fingerprint.
    """
    return "hmac-sha256:" + hmac_sha256(key, utf8(secret)).hex()[:16]


def precheck(
    scheme: Scheme,
    headers: Mapping[str, str],
    secrets: Sequence[str],
    *,
    header: str = "",
    now: float,
    tolerance_seconds: int = 300,
    check_timestamp: bool = True,
) -> Verified | None:
    """What can be decided from the headers alone, before the body is read.

    header-token: the whole check (the token does not cover the body), so its `Verified`.
    the HMACs and standard-webhooks: the credential headers present, within size and (for
    a timestamped scheme) fresh; None means "read the body, then `verify`". Raises
    `VerificationError` like `verify`.
    """
    if scheme == "header-token":
        return verify_header_token(b"", headers, secrets, header=header)
    if scheme in ("hmac-sha256", "hmac-sha1"):
        _require_secrets(secrets)
        name = header_name(header)
        if not _bounded(headers, name):
            raise VerificationError(f"missing header {name}")
    elif scheme == "standard-webhooks":
        _require_secrets(secrets)
        if not _bounded(headers, *_SW_SIGNATURE):
            raise VerificationError("missing header webhook-signature")
        if len(_first_header(headers, _SW_ID)) > _MAX_SW_ID:
            raise VerificationError("header webhook-id too long")
        if check_timestamp:
            _fresh(_first_header(headers, _SW_TIMESTAMP), now, tolerance_seconds)
    return None


# --- verification -----------------------------------------------------------------------


def verify_header_token(
    body: bytes, headers: Mapping[str, str], secrets: Sequence[str], *, header: str
) -> Verified:
    """Check a fixed shared key sent in ``header`` against every configured secret."""
    del body  # a bare token does not cover the body
    name = header_name(header)
    _require_secrets(secrets)
    value = _bounded(headers, name)
    if not value:
        raise VerificationError(f"missing header {name}")
    # Servers hand header bytes over decoded as latin-1, so the token's raw bytes are its
    # latin-1 encoding: a UTF-8 token matches a UTF-8 secret. A caller passing text as it
    # was meant (not as latin-1) is matched by its UTF-8 too.
    forms = [utf8(value)]
    with contextlib.suppress(UnicodeEncodeError):
        raw = value.encode("latin-1")
        if raw != forms[0]:  # not plain ASCII
            forms.append(raw)
    matched = -1
    # Every secret is compared, with no early exit, so response timing does not tell an
    # attacker which key (or how many keys) exist. compare_digest only hides timing per call.
    for index, secret in enumerate(secrets):
        expected = utf8(secret)
        ok = False
        for presented in forms:
            ok |= bool(secret) and hmac.compare_digest(presented, expected)
        if ok and matched < 0:
            matched = index
    if matched < 0:
        raise VerificationError(f"invalid token in header {name}")
    return Verified(key_index=matched)


def verify_hmac_sha256(
    body: bytes, headers: Mapping[str, str], secrets: Sequence[str], *, header: str
) -> Verified:
    """Check an HMAC-SHA256 of the raw body, keyed by any configured secret.

    ``header`` may hold several signatures separated by commas or spaces; each may be hex
    (any case) or base64 (standard or urlsafe, padding optional) and may carry a ``sha256=``
    prefix. Any signature matching any secret passes.
    """
    name = header_name(header)
    _require_secrets(secrets)
    value = _bounded(headers, name)
    if not value:
        raise VerificationError(f"missing header {name}")
    presented = [
        digest
        for token in _SEPARATORS.split(value)
        if (digest := _decode_hmac_token(token)) is not None
    ]
    if not presented:
        raise VerificationError(f"malformed signature in header {name}")
    matched = _match(
        [hmac_sha256(utf8(secret), body) if secret else None for secret in secrets], presented
    )
    if matched < 0:
        raise VerificationError(f"invalid signature in header {name}")
    return Verified(key_index=matched)


def verify_hmac_sha1(
    body: bytes, headers: Mapping[str, str], secrets: Sequence[str], *, header: str
) -> Verified:
    """Check ``sha1=<hex>`` HMAC-SHA1 signatures of the raw body (`receiver.verify_hub`)."""
    name = header_name(header)
    _require_secrets(secrets)
    matched = _match(expected_sha1(body, secrets), hub_digests(_bounded(headers, name), name))
    if matched < 0:
        raise VerificationError(f"invalid signature in header {name}")
    return Verified(key_index=matched)


def verify_standard_webhooks(
    body: bytes,
    headers: Mapping[str, str],
    secrets: Sequence[str],
    *,
    now: float,
    tolerance_seconds: int = 300,
    check_timestamp: bool = True,
) -> Verified:
    """Check a Standard Webhooks v1 delivery (``svix-*`` header aliases are accepted too).

    The signed content is ``f"{id}.{timestamp}.".encode() + body``. ``webhook-signature`` is a
    space-separated list of ``v1,<base64>`` entries; other versions are ignored. The timestamp
    must lie within ``tolerance_seconds`` of ``now`` in either direction unless
    ``check_timestamp`` is false (replaying recorded traffic), in which case only the
    signature is checked.
    """
    _require_secrets(secrets)
    msg_id = _first_header(headers, _SW_ID)
    raw_timestamp = _first_header(headers, _SW_TIMESTAMP)
    _bounded(headers, *_SW_SIGNATURE)
    signature_header = _first_header(headers, _SW_SIGNATURE)
    if len(msg_id) > _MAX_SW_ID:
        raise VerificationError("header webhook-id too long")
    # Freshness first, like the reference libraries: it is cheap and bounds how long a
    # captured delivery stays replayable.
    timestamp = _fresh(raw_timestamp, now, tolerance_seconds if check_timestamp else None)

    presented: list[bytes] = []
    for entry in signature_header.split():
        version, sep, encoded = entry.partition(",")
        # Unknown versions are skipped, not rejected, so a sender can add a future scheme
        # alongside v1 during a migration.
        if not sep or version != "v1":
            continue
        digest = b64decode(encoded)
        if digest is not None and len(digest) == _SHA256_SIZE:
            presented.append(digest)
    if not presented:
        raise VerificationError("no v1 signature in header webhook-signature")

    # The reference libraries sign the parsed timestamp, so "0123" is signed as "123".
    content = f"{msg_id}.{timestamp}.".encode() + body
    matched = _match(
        [hmac_sha256(standard_webhooks_key(s), content) if s else None for s in secrets], presented
    )
    if matched < 0:
        raise VerificationError("invalid signature in header webhook-signature")
    return Verified(key_index=matched, delivery_id=msg_id, timestamp=timestamp)


def verify_none(body: bytes, headers: Mapping[str, str]) -> Verified:
    """Accept anything; for sources that are trusted by network placement or in development."""
    del body, headers
    return Verified(key_index=-1)


def verify(
    scheme: Scheme,
    body: bytes,
    headers: Mapping[str, str],
    secrets: Sequence[str],
    *,
    header: str = "",
    now: float,
    tolerance_seconds: int = 300,
    check_timestamp: bool = True,
) -> Verified:
    """Run the check for ``scheme``. ``header`` is required by header-token and the HMACs.

    Raises ``ValueError`` for an unknown scheme or a missing header name (configuration
    mistakes, not sender mistakes) and ``VerificationError`` when the delivery fails.
    """
    if scheme == "header-token":
        return verify_header_token(body, headers, secrets, header=header)
    if scheme == "hmac-sha256":
        return verify_hmac_sha256(body, headers, secrets, header=header)
    if scheme == "hmac-sha1":
        return verify_hmac_sha1(body, headers, secrets, header=header)
    if scheme == "standard-webhooks":
        return verify_standard_webhooks(
            body,
            headers,
            secrets,
            now=now,
            tolerance_seconds=tolerance_seconds,
            check_timestamp=check_timestamp,
        )
    if scheme == "none":
        return verify_none(body, headers)
    raise ValueError(f"unknown verification scheme {scheme!r}")


# --- helpers ----------------------------------------------------------------------------


def _require_secrets(secrets: Sequence[str]) -> None:
    # An empty secret would make an empty (or absent) credential match, so it never counts.
    if not any(secrets):
        raise VerificationError("no secret configured")


def _bounded(headers: Mapping[str, str], *names: str) -> str:
    """The first of `names` present (or ""), refused when longer than a credential can be."""
    for name in names:
        value = headers.get(name)
        if value:
            if len(value) > MAX_CREDENTIAL_HEADER:
                raise VerificationError(
                    f"header {name} is longer than {MAX_CREDENTIAL_HEADER} characters"
                )
            return value
    return ""


def _fresh(raw: str, now: float, tolerance: float | None) -> int:
    """The signed timestamp, checked to lie within `tolerance` of `now` (None: any)."""
    if _TIMESTAMP.fullmatch(raw) is None:
        raise VerificationError("invalid header webhook-timestamp: not an integer")
    timestamp = int(raw)
    if tolerance is not None:
        if now - timestamp > tolerance:
            raise VerificationError("timestamp too old")
        if timestamp - now > tolerance:
            raise VerificationError("timestamp too far in the future")
    return timestamp


def _first_header(headers: Mapping[str, str], names: tuple[str, ...]) -> str:
    for name in names:
        value = headers.get(name)
        if value:
            return value
    raise VerificationError(f"missing header {names[0]}")


def _match(expected: Sequence[bytes | None], presented: Sequence[bytes]) -> int:
    """Index of the first expected digest equal to any presented one, else -1.

    Every pair is compared, with no early exit, so timing does not reveal which key matched.
    """
    matched = -1
    for index, digest in enumerate(expected):
        if digest is None:
            continue
        hit = False
        for candidate in presented:
            hit |= hmac.compare_digest(digest, candidate)
        if hit and matched < 0:
            matched = index
    return matched


def _decode_hmac_token(token: str) -> bytes | None:
    if token[:7].lower() == "sha256=":
        token = token[7:]
    # Hex first: 64 hex chars are also valid base64 (of 48 bytes), never the other way round.
    if _HEX_SHA256.fullmatch(token):
        return bytes.fromhex(token)
    digest = b64decode(token) if token else None
    if digest is None or len(digest) != _SHA256_SIZE:
        return None
    return digest
