"""Which secrets kept in the environment a command resolves, and how one is read.

Split from `receiver.config` so that the sections other modules add (`receiver.ops_settings`)
resolve their ``*_env`` keys the same way.
"""

from __future__ import annotations

import base64
import secrets as random_secrets
from collections.abc import Mapping
from dataclasses import dataclass

from receiver.errors import ConfigError


@dataclass(frozen=True, slots=True)
class SecretNeeds:
    """Which secrets kept in the environment a command resolves.

    Read-only commands (listings, export, migrate) never verify, sign or poll, so they must
    run where those variables are unset. A secret a command does not need whose variable is
    unset is replaced by a random key nobody holds: validation still passes, and should it
    ever be used it fails closed (nothing verifies against it, a vendor refuses it). Its key
    is named in `Settings.unresolved`. A variable that is set is always read (its value is
    then redacted like any other secret).
    """

    sources: frozenset[str] | None = None  # verification secrets of these sources; None: all
    pollers: frozenset[str] | None = None  # reconcile credentials of these sources; None: all
    api_keys: bool = True

    def source(self, name: str) -> bool:
        return self.sources is None or name in self.sources

    def poller(self, name: str) -> bool:
        return self.pollers is None or name in self.pollers


ALL_SECRETS = SecretNeeds()
NO_SECRETS = SecretNeeds(sources=frozenset(), pollers=frozenset(), api_keys=False)


def unknowable_key() -> str:
    """A key nobody holds, valid for every scheme (a Standard Webhooks key of 32 bytes)."""
    return "whsec_" + base64.b64encode(random_secrets.token_bytes(32)).decode()


def env_value(env: Mapping[str, str], var: object, *, where: str, key: str) -> str:
    """The value of the environment variable a ``*_env`` key names; empty or unset is an
    error naming that key."""
    value = env.get(str(var), "")
    if not value:
        raise ConfigError(f"environment variable {var} is empty or unset", where=where, key=key)
    return value
