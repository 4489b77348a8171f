"""The readiness probe: a real write, at most one a second, shared by concurrent callers.

Answering "ready" because ``SELECT 1`` works is a lie a read-only replica, a full disk or a
write lock held elsewhere all tell: each answers reads and refuses the delivery. So the probe
writes (each backend's `probe_write`: one row of ``taskhook_probe``, and on SQLite room for a
page or two) and commits. A load balancer may ask many times a second; the database is asked
at most once per `ttl`, the answer (success or the failure) reused meanwhile, and callers that
arrive while a probe runs wait for that one instead of starting their own. A probe that has
not committed within `deadline` seconds counts as failed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from receiver.errors import StorageUnavailable


class Probe:
    def __init__(
        self,
        write: Callable[[], Awaitable[None]],
        *,
        ttl: float = 1.0,
        deadline: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._write = write
        self._ttl = ttl
        self._deadline = deadline
        self._clock = clock
        self._at: float | None = None  # when the last answer was had
        self._error: StorageUnavailable | None = None
        self._running: asyncio.Task[None] | None = None

    def forget(self) -> None:
        """Drop the cached answer (the storage closed or reopened)."""
        self._at = None
        self._error = None

    async def __call__(self) -> None:
        """Return if the database took a write within the last `ttl` seconds; else raise
        `StorageUnavailable` with why it did not."""
        fresh = self._at is not None and self._clock() - self._at < self._ttl
        if not fresh:
            if self._running is None:
                self._running = asyncio.ensure_future(self._run())
            # Shielded: a caller that goes away (a client disconnecting) does not cancel
            # the probe others wait for.
            await asyncio.shield(self._running)
        if self._error is not None:
            raise StorageUnavailable(str(self._error)) from self._error

    async def _run(self) -> None:
        try:
            # A health check gives up after a few seconds; a write that takes longer (a
            # lock held elsewhere, no connection free) is as good as a refusal.
            async with asyncio.timeout(self._deadline):
                await self._write()
        except TimeoutError:
            self._error = StorageUnavailable(f"probe write took over {self._deadline:g} s")
        except StorageUnavailable as exc:
            self._error = exc
        except Exception as exc:  # any other failure to write is as truthful a "not ready"
            self._error = StorageUnavailable(f"probe write failed: {exc!r}")
            self._error.__cause__ = exc
        else:
            self._error = None
        finally:
            self._at = self._clock()
            self._running = None
