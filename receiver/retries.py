"""How a failed attempt ends: retried later with backoff, or dead after `max_attempts`."""

from __future__ import annotations

import random
from collections.abc import Sequence

from receiver.config import DispatchSettings
from receiver.records import DeliveryOutcome, DeliveryRecord, DeliveryStatus, HandlerRun


def backoff_delay(attempts: int, *, base: float, cap: float, rng: random.Random) -> float:
    """Exponential backoff with "equal jitter": half fixed, half random, capped."""
    ceiling = min(cap, base * (2 ** max(0, attempts - 1)))
    delay: float = ceiling / 2 + rng.uniform(0, ceiling / 2)
    return delay


def failed(
    delivery: DeliveryRecord,
    error: str,
    runs: Sequence[HandlerRun],
    tb: str | None,
    *,
    settings: DispatchSettings,
    rng: random.Random,
    now: float,
) -> DeliveryOutcome:
    """The outcome of an attempt that failed with `error`: its error and traceback kept, the
    runs that did happen recorded."""
    attempts = delivery.attempts + 1
    if attempts >= settings.max_attempts:
        return DeliveryOutcome(
            delivery.id, DeliveryStatus.DEAD, attempts, error=error, traceback=tb,
            runs=tuple(runs),
        )  # fmt: skip
    delay = backoff_delay(
        attempts, base=settings.backoff_base_seconds, cap=settings.backoff_max_seconds, rng=rng
    )
    return DeliveryOutcome(
        delivery.id, DeliveryStatus.FAILED, attempts, next_attempt_at=now + delay, error=error,
        traceback=tb, runs=tuple(runs),
    )  # fmt: skip


__all__ = ["backoff_delay", "failed"]
