"""The document-review lifecycle (seed 004) as pure rules.

States: PROCESSING → REVIEWING → COMPLETED | DISCARDED, with FAILED and FILTERED decided by
processing. A task may be completed or discarded only from REVIEWING, and unlocked (back to
REVIEWING) only from a finalized state (COMPLETED, DISCARDED, FILTERED) that was not exported.
An impossible transition is recorded as rejected and not applied.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from receiver.sources.review import STATE_EVENTS as EVENTS
from receiver.sources.review import parse_review as parse

FINAL = frozenset({"COMPLETED", "DISCARDED", "FILTERED"})
Action = Literal["complete", "discard", "unlock", "report"]

# Which states each state may be entered from (None: a task seen for the first time).
ALLOWED: dict[str, frozenset[str | None]] = {
    "PROCESSING": frozenset({None, "PROCESSING", "REVIEWING"}),
    "REVIEWING": frozenset({None, "PROCESSING", "REVIEWING", *FINAL}),  # from FINAL: unlock
    "COMPLETED": frozenset({None, "REVIEWING"}),
    "DISCARDED": frozenset({None, "REVIEWING"}),
    "FAILED": frozenset({None, "PROCESSING"}),
    "FILTERED": frozenset({None, "PROCESSING"}),
}
ACTION_TARGET: dict[str, str] = {
    "complete": "COMPLETED",
    "discard": "DISCARDED",
    "unlock": "REVIEWING",
}


@dataclass(frozen=True, slots=True)
class Transition:
    allowed: bool
    reason: str = ""


def check(current: str | None, target: str, *, exported: bool) -> Transition:
    """May a task in `current` (None: unseen) move to `target`?"""
    if current == target:
        return Transition(True)
    if current not in ALLOWED[target]:
        return Transition(False, f"{target} is not reachable from {current}")
    if target == "REVIEWING" and current in FINAL and exported:
        return Transition(False, "an exported task cannot be unlocked")
    return Transition(True)


def action_target(action: str, current: str, *, exported: bool) -> tuple[str, Transition]:
    """The state an operator `action` leads to, and whether the task's state allows it."""
    target = ACTION_TARGET[action]
    if action == "unlock" and current not in FINAL:
        return target, Transition(False, f"only a finalized task can be unlocked, not {current}")
    if action in ("complete", "discard") and current != "REVIEWING":
        return target, Transition(False, f"only a REVIEWING task can {action}, not {current}")
    return target, check(current, target, exported=exported)


def event_payload(snapshot: dict[str, Any], previous: str | None) -> dict[str, Any]:
    return {"status": snapshot.get("status"), "previous_status": previous, "task": snapshot}


__all__ = ["EVENTS", "FINAL", "Action", "Transition", "action_target", "check", "parse"]
