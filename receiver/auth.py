"""Bearer keys with scopes for the ``/v1`` read/admin API."""

from __future__ import annotations

import base64
import binascii
import hmac
from collections.abc import Mapping
from dataclasses import dataclass

from receiver.config import ApiKey

SCOPES = frozenset({"tasks.read", "deliveries.read", "deliveries.write", "task.read", "task.edit"})


@dataclass(frozen=True, slots=True)
class Denied:
    status: int  # 401 or 403
    reason: str


class KeyRing:
    def __init__(self, keys: Mapping[str, ApiKey]) -> None:
        self._keys = [
            (name, k.key.get_secret_value().encode(), frozenset(k.scopes))
            for name, k in keys.items()
            if k.key is not None
        ]

    def authorize(
        self, authorization: str | None, scope: str, *, basic: bool = False
    ) -> str | Denied:
        """The key's name when `authorization` carries a key with `scope`, else why not.

        With `basic`, HTTP basic is taken too, the key as user name and an empty password:
        the vendor-compatible routes answer the vendor's own clients as the vendor does.
        """
        expected = (
            "'Bearer <key>' or HTTP basic with the key as user name"
            if basic
            else ("'Bearer <key>'")
        )
        if not authorization:
            return Denied(401, f"missing Authorization: {expected}")
        kind, _, token = authorization.partition(" ")
        if basic and kind.lower() == "basic":
            found = _basic_key(token)
            if isinstance(found, Denied):
                return found
            return self._match(found, scope)
        if kind.lower() != "bearer" or not token.strip():
            return Denied(401, f"Authorization must be {expected}")
        return self._match(token.strip().encode(), scope)

    def _match(self, presented: bytes, scope: str) -> str | Denied:
        found: tuple[str, frozenset[str]] | None = None
        for name, key, scopes in self._keys:
            # Compare against every key so timing does not tell which one matched.
            if hmac.compare_digest(presented, key) and found is None:
                found = (name, scopes)
        if found is None:
            return Denied(401, "unknown API key")
        if scope not in found[1]:
            return Denied(403, f"key {found[0]!r} lacks scope {scope!r}")
        return found[0]


def _basic_key(token: str) -> bytes | Denied:
    """The key of an HTTP basic credential: ``base64(key + ":")``."""
    try:
        decoded = base64.b64decode(token.strip(), validate=True)
    except (binascii.Error, ValueError):
        return Denied(401, "HTTP basic credentials are not valid base64")
    user, colon, password = decoded.partition(b":")
    if not colon or not user:
        return Denied(401, "HTTP basic: the API key is the user name, then ':'")
    if password:
        return Denied(401, "HTTP basic: the API key is the user name; the password is empty")
    return user
