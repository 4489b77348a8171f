"""A configured source as the intake uses it: resolved once at start-up.

It knows how to check a delivery of its source (before the body where the scheme allows,
after it otherwise), which headers are redacted by name, and how to name the secret that
verified a delivery (a fingerprint keyed with the installation's key).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from receiver import verify
from receiver.config import SourceSettings
from receiver.errors import VerificationError
from receiver.redaction import REDACTED
from receiver.sources import SourceAdapter

ALWAYS_REDACTED = frozenset({"authorization", "proxy-authorization", "cookie", "x-api-key"})
UNVERIFIED = verify.Verified(key_index=-1)


@dataclass(frozen=True, slots=True)
class SourceRuntime:
    name: str
    settings: SourceSettings
    adapter: SourceAdapter
    secrets: tuple[str, ...]
    redact: frozenset[str]

    @classmethod
    def build(cls, name: str, settings: SourceSettings, adapter: SourceAdapter) -> SourceRuntime:
        redact = set(ALWAYS_REDACTED)
        if settings.scheme == "header-token":
            redact.add(settings.header_name)  # the header carries the shared secret itself
        return cls(name, settings, adapter, settings.secret_values(), frozenset(redact))

    def precheck(self, headers: Mapping[str, str], now: float) -> verify.Verified | None:
        """Checks that need no body (`verify.precheck`): `Verified` when that is the whole
        check, None when the body must be read and `check`ed."""
        return verify.precheck(
            self.settings.scheme,
            headers,
            self.secrets,
            header=self.settings.header_name,
            now=now,
            tolerance_seconds=self.settings.tolerance_seconds,
        )

    def check(
        self,
        body: bytes,
        headers: Mapping[str, str],
        now: float,
        *,
        recorded: bool = False,
        alternate: bytes | None = None,
    ) -> verify.Verified:
        """Verify a delivery. `recorded` traffic (replay) is checked without freshness, and
        a header token redacted at receipt stands for the check passed then. `alternate` is
        the body as it came over the wire when it came compressed: a signature over the
        payload is the rule, one over the compressed bytes is accepted too."""
        redacted = headers.get(self.settings.header_name) == REDACTED
        if recorded and self.settings.scheme == "header-token" and redacted:
            return UNVERIFIED
        try:
            return self._verify(body, headers, now, recorded)
        except VerificationError:
            if alternate is None:
                raise
            return self._verify(alternate, headers, now, recorded)

    def _verify(
        self, body: bytes, headers: Mapping[str, str], now: float, recorded: bool
    ) -> verify.Verified:
        return verify.verify(
            self.settings.scheme,
            body,
            headers,
            self.secrets,
            header=self.settings.header_name,
            now=now,
            tolerance_seconds=self.settings.tolerance_seconds,
            check_timestamp=not recorded,
        )

    def fingerprint(self, verified: verify.Verified, key: bytes) -> str | None:
        if verified.key_index < 0:
            return None
        return verify.fingerprint(self.secrets[verified.key_index], key)
