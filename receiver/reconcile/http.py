"""The HTTP side of polling a vendor: retries with backoff, and OAuth2 client credentials.

429 and 5xx answers and transport failures are retried up to `max_retries` times, waiting
what ``Retry-After`` asks (capped) or an exponential backoff with jitter. Any other 4xx is the
caller's mistake (bad key, unknown project) and fails at once with the vendor's own words.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from email.utils import parsedate_to_datetime
from typing import Any

import httpx
import structlog

from receiver.config import ReconcileSettings
from receiver.errors import VendorError

log = structlog.get_logger("taskhook.reconcile")

Sleep = Callable[[float], Awaitable[None]]
RETRYABLE = frozenset({429, 500, 502, 503, 504})


def retry_after(value: str | None, *, now: float) -> float | None:
    """Seconds a ``Retry-After`` header asks for (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - now)
    except (TypeError, ValueError):
        return None


class ClientCredentials:
    """An OAuth2 client-credentials token, fetched once and reused until shortly before it
    expires. Concurrent callers share one fetch."""

    REFRESH_MARGIN = 60.0

    def __init__(
        self, token_url: str, client_id: str, client_secret: str, *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:  # fmt: skip
        self.token_url = token_url
        self._form = {
            "grant_type": "client_credentials",
            "client_id": client_id,
            "client_secret": client_secret,
        }
        self._clock = clock
        self._token: str | None = None
        self._expires = 0.0
        self._lock = asyncio.Lock()
        self.fetches = 0

    def invalidate(self) -> None:
        self._token = None

    #: The credentials as a form body (RFC 6749 §2.3.1), or as query parameters.
    IN_BODY = True

    async def header(self, client: VendorClient) -> str:
        async with self._lock:
            if self._token is None or self._clock() >= self._expires - self.REFRESH_MARGIN:
                where = {"data": self._form} if self.IN_BODY else {"params": self._form}
                answer = await client.call("POST", self.token_url, authenticate=False, **where)
                doc = answer.json()
                token = doc.get("access_token") if isinstance(doc, dict) else None
                if not isinstance(token, str) or not token:
                    raise VendorError(client.source, "token endpoint gave no access_token")
                self.fetches += 1
                self._token = token
                self._expires = self._clock() + float(doc.get("expires_in") or 3600)
            return f"Bearer {self._token}"


class VendorClient:
    """One vendor API: base URL, authentication and the retry policy of a source."""

    def __init__(
        self,
        source: str,
        base_url: str,
        settings: ReconcileSettings,
        *,
        authorization: str | ClientCredentials | None = None,
        basic: tuple[str, str] | None = None,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self.source = source
        self.settings = settings
        self._authorization = authorization
        self._http = httpx.AsyncClient(
            base_url=base_url,
            auth=basic,
            timeout=settings.timeout_seconds,
            headers={"accept": "application/json", "user-agent": "taskhook-reconcile"},
        )
        self._sleep = sleep

    async def aclose(self) -> None:
        await self._http.aclose()

    def _delay(self, attempt: int, answer: httpx.Response | None) -> float:
        cap = self.settings.backoff_max_seconds
        if answer is not None:
            asked = retry_after(answer.headers.get("retry-after"), now=time.time())
            if asked is not None:
                return min(asked, cap)
        backoff: float = min(cap, self.settings.backoff_base_seconds * 2**attempt)
        return backoff * random.uniform(0.5, 1)

    async def call(
        self,
        method: str,
        url: str,
        *,
        params: dict[str, Any] | None = None,
        json: Any = None,
        data: dict[str, str] | None = None,
        authenticate: bool = True,
    ) -> httpx.Response:
        """One request with retries; the answer when it is a 2xx, else `VendorError`."""
        attempt = 0
        refreshed = False
        while True:
            headers: dict[str, str] = {}
            auth = self._authorization
            if authenticate and isinstance(auth, ClientCredentials):
                headers["authorization"] = await auth.header(self)
            elif authenticate and isinstance(auth, str):
                headers["authorization"] = auth
            answer: httpx.Response | None = None
            try:
                answer = await self._http.request(
                    method, url, params=params, json=json, data=data, headers=headers
                )
            except httpx.TransportError as exc:
                problem = f"{method} {url} failed: {exc!r}"
            else:
                if answer.is_success:
                    return answer
                problem = f"{method} {url} answered {answer.status_code}: {answer.text[:300]}"
                if (
                    answer.status_code == 401
                    and isinstance(self._authorization, ClientCredentials)
                    and authenticate
                    and not refreshed
                ):
                    # A token revoked or expired early: fetch a new one, once.
                    self._authorization.invalidate()
                    refreshed = True
                    continue
                if answer.status_code not in RETRYABLE:
                    raise VendorError(self.source, problem, status=answer.status_code)
            if attempt >= self.settings.max_retries:
                raise VendorError(
                    self.source,
                    f"{problem} (gave up after {attempt + 1} attempts)",
                    status=answer.status_code if answer is not None else None,
                )
            delay = self._delay(attempt, answer)
            log.warning("vendor API call failed; retrying", problem=problem, wait=round(delay, 3))
            await self._sleep(delay)
            attempt += 1

    async def json(self, method: str, url: str, **kwargs: Any) -> Any:
        answer = await self.call(method, url, **kwargs)
        try:
            return answer.json()
        except ValueError:
            raise VendorError(self.source, f"{method} {url} did not answer JSON") from None
