"""Posting the outbox: claim the oldest due alert, post it, mark it sent or keep it.

A pass stops at the first alert the webhook refuses or cannot be reached for: the ones
after it would most likely fail the same way, and each failure costs up to the timeout.
They stay due and the next pass (the periodic job, or the next signal) tries again, the
failed one after its backoff. Every failure is logged with the alert's id; none is dropped.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import httpx
import structlog

from handlers.alerts.format import Format, body_of, headers_of
from handlers.alerts.outbox import Alert, Outbox
from receiver.times import iso

log = structlog.get_logger("taskhook.alerts")

Clock = Callable[[], float]


class Sender:
    def __init__(
        self,
        outbox: Outbox,
        *,
        url: str,
        fmt: Format,
        secret: str | None,
        timeout: float,
        clock: Clock,
        public_url: str | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._outbox = outbox
        self._url = url
        self._fmt = fmt
        self._secret = secret
        self._timeout = timeout
        self._clock = clock
        self._public_url = public_url
        self._transport = transport
        # Longer than a post can take, so no other replica claims a row being posted.
        self.lease = 2 * timeout + 30.0

    async def flush(self, limit: int = 50) -> int:
        """Post due alerts (at most `limit`); how many went through."""
        alert = await self._outbox.claim(self._clock(), self.lease)
        if alert is None:
            return 0
        posted = 0
        async with httpx.AsyncClient(timeout=self._timeout, transport=self._transport) as client:
            while alert is not None:
                if not await self._deliver(client, alert):
                    break
                posted += 1
                if posted >= limit:
                    break
                alert = await self._outbox.claim(self._clock(), self.lease)
        return posted

    async def _deliver(self, client: httpx.AsyncClient, alert: Alert) -> bool:
        bound = log.bind(alert_id=alert.id, kind=alert.kind, key=alert.key)
        error = await self._post(client, alert)
        if error is None:
            await self._outbox.sent(alert.id, self._clock())
            bound.info("alert sent", attempts=alert.attempts)
            return True
        due = await self._outbox.failed(alert, error, self._clock())
        bound.warning("alert not delivered; kept for a retry", error=error,
                      attempts=alert.attempts, retry_at=iso(due))  # fmt: skip
        return False

    async def _post(self, client: httpx.AsyncClient, alert: Alert) -> str | None:
        """None when the webhook took it (2xx), else why not."""
        body = body_of(alert, self._fmt, public_url=self._public_url)
        headers = headers_of(alert, body, secret=self._secret, now=self._clock())
        try:
            # One deadline for the whole exchange: httpx's timeout is per read, and a
            # webhook that drips its answer must not hold the claim past its lease.
            async with asyncio.timeout(self._timeout):
                answer = await client.post(self._url, content=body, headers=headers)
        except TimeoutError:
            return f"no answer within {self._timeout:g}s"
        except httpx.HTTPError as exc:
            return f"{type(exc).__name__}: {exc}"
        if answer.is_success:
            return None
        return f"answered {answer.status_code}: {answer.text[:200]}"
