"""The dashboard's session cookie: who signed in, until when, signed by this installation.

The cookie is ``base64url(payload) "." base64url(mac)``, the payload a small JSON object
(key name, expiry, a random session id), the MAC an HMAC-SHA256 under a key derived from the
installation's own random key (`Storage.installation_key`), so every replica of one database
accepts the others' cookies and no configuration secret is involved. The API key itself is
never in it: the session names the key, and each request looks the name up again in the
configuration, so a key removed (or a scope taken away) ends its sessions at once.

Each MAC is over a labelled message (``cookie:``, ``csrf:``, ``sign-in:``) so one token can
never stand in for another.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from dataclasses import dataclass

import orjson

COOKIE = "taskhook_session"
SIGN_IN_COOKIE = "taskhook_sign_in"
PATH = "/ui"


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def derive(installation_key: bytes) -> bytes:
    """The dashboard's own signing key: never the installation key itself."""
    return hmac.new(installation_key, b"taskhook ui session", hashlib.sha256).digest()


@dataclass(frozen=True, slots=True)
class Session:
    key_name: str
    expires: float
    sid: str


class Signer:
    def __init__(self, key: bytes) -> None:
        self._key = key

    def _mac(self, label: bytes, message: bytes) -> str:
        return _b64(hmac.new(self._key, label + b":" + message, hashlib.sha256).digest())

    def issue(self, key_name: str, *, now: float, hours: float) -> tuple[Session, str]:
        """A new session for `key_name` and its cookie value."""
        session = Session(key_name, now + hours * 3600, secrets.token_urlsafe(16))
        payload = _b64(orjson.dumps({"k": key_name, "e": session.expires, "s": session.sid}))
        return session, f"{payload}.{self._mac(b'cookie', payload.encode())}"

    def read(self, value: str | None, *, now: float) -> Session | None:
        """The session a cookie value carries, if it is ours, intact and not expired."""
        if not value or value.count(".") != 1:
            return None
        payload, mac = value.split(".")
        if not hmac.compare_digest(mac, self._mac(b"cookie", payload.encode())):
            return None
        try:
            fields = orjson.loads(_unb64(payload))
            session = Session(str(fields["k"]), float(fields["e"]), str(fields["s"]))
        except (ValueError, KeyError, TypeError, orjson.JSONDecodeError):
            return None
        return session if session.expires > now else None

    def csrf(self, session: Session) -> str:
        """The CSRF token of `session`'s forms."""
        return self._mac(b"csrf", session.sid.encode())

    def sign_in_token(self, nonce: str) -> str:
        """The token of a sign-in form, bound to the pre-session cookie's `nonce`."""
        return self._mac(b"sign-in", nonce.encode())


def new_nonce() -> str:
    return secrets.token_urlsafe(16)


def tokens_match(expected: str, given: str | None) -> bool:
    return given is not None and hmac.compare_digest(expected.encode(), given.encode())
