"""Bearer keys with scopes for the ``/v1`` read/admin API."""

from __future__ import annotations

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

    def authorize(self, authorization: str | None, scope: str) -> str | Denied:
        """The key's name when `authorization` carries a key with `scope`, else why not."""
        if not authorization:
            return Denied(401, "missing Authorization: Bearer <key>")
        kind, _, token = authorization.partition(" ")
        if kind.lower() != "bearer" or not token.strip():
            return Denied(401, "Authorization must be 'Bearer <key>'")
        presented = token.strip().encode()
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
