"""What a reconciliation poller yields: pages of task snapshots, and checkpoints.

Every poller turns its vendor's view of a task into the same Refonte-shaped callback body
(``{"task_id", "status", "response", "task": {...}}``), so the ledger's rules, staleness
checks and dedup apply to polled tasks exactly as to called-back ones. The vendor's own
status is kept in ``task.metadata``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from receiver import times


@dataclass(frozen=True, slots=True)
class Page:
    """Snapshots to feed, then (when set) the cursor to save once they are all stored."""

    snapshots: list[dict[str, Any]] = field(default_factory=list)
    cursor: str | None = None


class Poller(Protocol):
    async def poll(self, cursor: str | None, started: float) -> AsyncIterator[Page]:
        """Pages of what changed since `cursor` (None on the first pass). `started` is when
        this pass began, on the wall clock."""
        yield Page()  # pragma: no cover - protocol

    async def aclose(self) -> None: ...


def callback(task: dict[str, Any]) -> dict[str, Any]:
    """A task object as its completion callback carries it."""
    return {
        "task_id": task["task_id"],
        "status": task.get("status"),
        "response": task.get("response"),
        "task": task,
    }


def iso(at: float) -> str:
    return times.iso(at, "auto")
