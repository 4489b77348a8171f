"""Failed sign-ins per client address: a sliding window that blunts key guessing."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

# Addresses remembered at most; past it, the quietest are forgotten first (a flood of
# spoofed addresses cannot grow memory without bound).
MAX_CLIENTS = 10_000


class FailureLimiter:
    def __init__(self, limit: int, window: float, clock: Callable[[], float]) -> None:
        self.limit = limit
        self.window = window
        self._clock = clock
        self._failures: dict[str, deque[float]] = {}

    def _recent(self, client: str) -> deque[float]:
        times = self._failures.get(client)
        if times is None:
            return deque()
        cutoff = self._clock() - self.window
        while times and times[0] <= cutoff:
            times.popleft()
        if not times:
            del self._failures[client]
        return times

    def retry_after(self, client: str) -> float | None:
        """Seconds until `client` may try again, or None when it may try now."""
        times = self._recent(client)
        if len(times) < self.limit:
            return None
        return max(1.0, times[0] + self.window - self._clock())

    def failed(self, client: str) -> None:
        times = self._recent(client)
        if not times:
            if len(self._failures) >= MAX_CLIENTS:
                oldest = min(self._failures, key=lambda c: self._failures[c][-1])
                del self._failures[oldest]
            self._failures[client] = times
        times.append(self._clock())
