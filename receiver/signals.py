"""Operational signals: what an operator should hear about, as plain data.

The app and plugins raise them (`HandlerRegistry.signal`); plugins that tell people — the
built-in ``alerts`` handler posts them to a webhook — receive them (`HandlerRegistry.on_signal`).
A signal is not an event: events are facts about tasks that handlers process exactly once;
a signal is a notice about the receiver itself (a dead delivery, failing verification, an old
backlog, a task whose callback is late), and who hears it decides how often to pass it on.
A leaf module: it imports nothing of ours.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

# What each kind means (and its `key`):
#   delivery.dead         a delivery used up its attempts (key: the delivery id)
#   verification.failing  a source's verification failures passed the configured rate
#                         within the window (key: the source name)
#   backlog.stale         the oldest delivery waiting is older than the threshold
#                         (key: "backlog")
#   task.late             an expected task's callback did not come by its deadline
#                         (key: "SOURCE/TASK" or "SOURCE/unique:UNIQUE_ID")
SIGNAL_KINDS = frozenset({"delivery.dead", "verification.failing", "backlog.stale", "task.late"})


@dataclass(frozen=True, slots=True)
class Signal:
    kind: str
    key: str  # what it is about: listeners de-duplicate on (kind, key)
    summary: str  # one line for a person; never a secret or a body
    at: float  # when it was raised (epoch seconds, the app's clock)
    details: Mapping[str, Any] = field(default_factory=dict)  # JSON-serialisable
    link: str | None = None  # a dashboard path about it (``/ui/deliveries/ID``)

    def __post_init__(self) -> None:
        if self.kind not in SIGNAL_KINDS:
            raise ValueError(f"unknown signal kind {self.kind!r}")


SignalHook = Callable[[Signal], Awaitable[None] | None]
Job = Callable[[], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Periodic:
    """A plugin's job that `taskhook serve` runs every `seconds` (first after `seconds`)."""

    name: str
    seconds: float
    job: Job


@dataclass(frozen=True, slots=True)
class NavLink:
    """A page a plugin adds to the dashboard's navigation (its route under ``/ui/``)."""

    title: str
    path: str
    # Shown only to keys with one of these scopes (empty: to every signed-in key).
    scopes: tuple[str, ...] = ()
