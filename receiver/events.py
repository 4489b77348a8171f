"""Typed events: what handlers receive.

An event is a small immutable record: a stable `event_id` (the same fact always gets the same
id, so re-deriving it on a retry or a replay does not run a handler twice), the `task_id`, the
`delivery_id` it came from, `occurred_at` and a typed payload.
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict

from receiver.records import StoredEvent

TASK_EVENTS = frozenset(
    {
        "task.completed",
        "task.canceled",
        "task.errored",
        "task.audited",
        "task.recalled",
        "task.updated",
        "unique_id.released",
        "unique_id.conflict",
    }
)
OTHER_EVENTS = frozenset(
    {
        "throughput.recorded",
        "task.reported",
        "task.processing",
        "task.reviewing",
        "task.failed",
        "task.discarded",
        "task.filtered",
    }
)
# What Labelbox and Label Studio send that is not a task's state (a deletion, a review, a
# project or import change) keeps the vendor's own name: `<kind>.<name, lower case>`. What is
# a task's state (a label or annotation submitted or changed) is a task.* event above.
LABELBOX_EVENTS = frozenset(
    f"labelbox.{topic}"
    for topic in ("label_deleted", "review_created", "review_updated", "review_deleted",
                  "workflow_action")
)  # fmt: skip
LABEL_STUDIO_EVENTS = frozenset(
    f"label-studio.{action}"
    for action in ("annotation_created", "annotations_created", "annotation_updated",
                   "annotations_deleted", "tasks_created", "tasks_deleted", "project_created",
                   "project_updated", "project_deleted", "label_link_created",
                   "label_link_updated", "label_link_deleted")
)  # fmt: skip
EVENT_NAMES = TASK_EVENTS | OTHER_EVENTS | LABELBOX_EVENTS | LABEL_STUDIO_EVENTS


class Event(BaseModel):
    """One fact about a task, derived from a stored delivery."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    event_id: str
    name: str
    source: str
    task_id: str | None
    delivery_id: str
    occurred_at: datetime
    payload: dict[str, Any]


def event_id(name: str, source: str, task_id: str | None, *parts: str) -> str:
    """A deterministic id for the fact (`name`, `task_id`, `parts`) from `source`."""
    digest = hashlib.sha256("\x1f".join((name, source, task_id or "", *parts)).encode()).hexdigest()
    return "evt_" + digest[:32]


def persisted(event: Event) -> StoredEvent:
    """The persisted form of `event` (its JSON is what handlers see again on a retry)."""
    return StoredEvent(
        event.event_id, event.name, event.task_id, event.delivery_id, event.model_dump_json()
    )
