"""Label Studio webhooks: ``{"action", <the entity>, "project"}``, with headers the user sets.

The wire format, as Label Studio documents it ("Webhook event format reference") and sends it
(`webhooks/utils.py` posts ``{"action": ..., **payload}`` as JSON with the webhook's own
``headers``; `webhooks/models.py` lists the actions and each one's key):

=====================================  ==========================================
``ANNOTATION_CREATED``, ``_UPDATED``   ``"annotation": {...}``, ``"task": {...}``
``ANNOTATIONS_CREATED`` (bulk)         ``"annotation": [...]``, ``"task": [...]``
``ANNOTATIONS_DELETED``                ``"annotations": [{"id"}]``
``TASKS_CREATED``                      ``"tasks": [{...}]``
``TASKS_DELETED``                      ``"tasks": [{"id"}]``
``PROJECT_CREATED``, ``_UPDATED``      ``"project": {...}``
``PROJECT_DELETED``                    ``"project": {"id"}``
``LABEL_LINK_CREATED`` ... ``_DELETED``  ``"label_link": ...``
=====================================  ==========================================

Task and annotation events also carry the whole ``"project"``. The reference also names the
singular ``TASK_CREATED``, ``TASK_DELETED`` and ``ANNOTATION_DELETED``: they are read as their
plural. A webhook set not to send its payload posts ``{"action"}`` alone. Label Studio does
not sign: the user adds a header with a shared token to the webhook (``verify =
"header-token"``, ``header`` naming it), and it does not retry a failed POST.

An annotation that is not a skipped task's (``was_cancelled``) is the task's state: created,
`task.completed`; updated, `task.updated`, one per annotation, the task being the annotation's
``task``. Everything else (skips, deletions, imports, projects, label links, and actions sent
without their payload) is ``label-studio.<action, lower case>``: one per annotation for the
annotation actions, otherwise one per delivery with the body as payload.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from receiver.bodies import decode
from receiver.errors import PayloadError
from receiver.events import Event, event_id
from receiver.records import DeliveryRecord
from receiver.sources.base import Parsed, field_errors, invalid

KIND = "label-studio"
ACTIONS = frozenset({
    "ANNOTATION_CREATED", "ANNOTATIONS_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_DELETED",
    "TASKS_CREATED", "TASKS_DELETED", "PROJECT_CREATED", "PROJECT_UPDATED", "PROJECT_DELETED",
    "LABEL_LINK_CREATED", "LABEL_LINK_UPDATED", "LABEL_LINK_DELETED",
})  # fmt: skip
ALIASES = {"TASK_CREATED": "TASKS_CREATED", "TASK_DELETED": "TASKS_DELETED",
           "ANNOTATION_DELETED": "ANNOTATIONS_DELETED"}  # fmt: skip
# Annotation actions whose (not skipped) annotations are a task's state.
STATE_EVENTS = {
    "ANNOTATION_CREATED": "task.completed",
    "ANNOTATIONS_CREATED": "task.completed",
    "ANNOTATION_UPDATED": "task.updated",
}


def _id(value: Any) -> Any:
    # Label Studio ids are integers; our task ids are text. A nested object stands for its id.
    if isinstance(value, dict):
        value = value.get("id")
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


Id = Annotated[str, BeforeValidator(_id), Field(min_length=1)]


class Annotation(BaseModel):
    model_config = ConfigDict(extra="allow")

    id: Id
    task: Id
    result: Any = None
    was_cancelled: bool = False
    created_at: datetime | None = None
    updated_at: datetime | None = None
    completed_by: Any = None


class Ref(BaseModel):
    model_config = ConfigDict(extra="allow")

    id: Id


class Envelope(BaseModel):
    model_config = ConfigDict(extra="allow")

    action: str
    # One annotation (ANNOTATION_CREATED/_UPDATED) or a list (ANNOTATIONS_CREATED).
    annotation: Annotation | list[Annotation] | None = None
    task: Any = None  # the annotations' tasks, as they are: handlers get them
    tasks: list[Ref] | None = None

    @property
    def kind_of_action(self) -> str:
        action = self.action.strip().upper()
        return ALIASES.get(action, action)

    @property
    def annotations(self) -> list[Annotation]:
        one = self.annotation
        return [] if one is None else one if isinstance(one, list) else [one]

    @property
    def task_ids(self) -> list[str]:
        """The tasks a delivery is about, in order, each once."""
        ids = [a.task for a in self.annotations] + [t.id for t in self.tasks or []]
        return list(dict.fromkeys(ids))


def read(body: bytes, content_type: str) -> tuple[Envelope, dict[str, Any]]:
    value = decode(body, content_type)
    if not isinstance(value, dict):
        raise PayloadError("a Label Studio webhook body is a JSON object with an `action`")
    try:
        envelope = Envelope.model_validate(value)
    except ValidationError as exc:
        raise invalid("not a Label Studio webhook payload", field_errors(exc)) from None
    if envelope.kind_of_action not in ACTIONS:
        raise PayloadError(f"action {envelope.action!r} is not a Label Studio webhook action")
    return envelope, value


def _utc(value: datetime | None) -> datetime | None:
    return value.replace(tzinfo=UTC) if value is not None and value.tzinfo is None else value


def _project(value: dict[str, Any]) -> dict[str, Any] | None:
    """The project, named: its full settings (label config and all) are in generic events."""
    project = value.get("project")
    if not isinstance(project, dict):
        return None
    return {key: project[key] for key in ("id", "title") if key in project}


def _tasks(value: dict[str, Any]) -> dict[str, Any]:
    """The nested task objects, by id, to go with their annotations' events."""
    nested = value.get("task")
    listed = nested if isinstance(nested, list) else [nested]
    return {str(t["id"]): t for t in listed if isinstance(t, dict) and "id" in t}


class LabelStudioAdapter:
    kind = KIND

    def parse(self, body: bytes, content_type: str) -> Parsed:
        envelope, _ = read(body, content_type)
        ids = envelope.task_ids
        # A bulk delivery about several tasks is a lane of its own, not one task's.
        return Parsed(task_id=ids[0] if len(ids) == 1 else None, value=envelope)

    def events(self, source: str, delivery: DeliveryRecord) -> list[Event]:
        assert delivery.body is not None
        envelope, value = read(delivery.body, delivery.content_type)
        action = envelope.kind_of_action
        generic = f"{KIND}.{action.lower()}"
        received = datetime.fromtimestamp(delivery.received_at, UTC)
        digest = hashlib.sha256(delivery.body).hexdigest()

        def make(
            name: str, task_id: str | None, payload: dict[str, Any], parts: tuple[str, ...],
            at: datetime | None,
        ) -> Event:  # fmt: skip
            return Event(
                event_id=event_id(name, source, task_id, *parts),
                name=name,
                source=source,
                task_id=task_id,
                delivery_id=delivery.id,
                occurred_at=at or received,
                payload=payload,
            )

        annotations = envelope.annotations
        if action not in STATE_EVENTS or not annotations:
            ids = envelope.task_ids
            return [make(generic, ids[0] if len(ids) == 1 else None, value, (digest,), None)]
        tasks, project = _tasks(value), _project(value)
        # Handlers get each annotation as Label Studio sent it, not as it was validated.
        sent = (
            value["annotation"] if isinstance(value["annotation"], list) else [value["annotation"]]
        )
        out = []
        for annotation, as_sent in zip(annotations, sent, strict=True):
            payload: dict[str, Any] = {
                "action": action,
                "annotation_id": annotation.id,
                "annotation": as_sent,
                "task": tasks.get(annotation.task),
                "project": project,
            }
            if action == "ANNOTATION_UPDATED":  # each change of the annotation is a new fact
                at = _utc(annotation.updated_at)
                parts: tuple[str, ...] = (annotation.id, at.isoformat() if at else digest)
            else:  # a creation happens once, however often a payload repeats it
                at, parts = _utc(annotation.created_at), (annotation.id,)
            if annotation.was_cancelled:  # a skipped task: an empty annotation, not a result
                out.append(make(generic, annotation.task, payload, parts, at))
                continue
            payload |= {"status": "completed", "response": annotation.result}
            out.append(make(STATE_EVENTS[action], annotation.task, payload, parts, at))
        return out
