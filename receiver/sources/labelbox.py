"""Labelbox webhooks: a topic in ``X-Labelbox-Event``, a label (or a data row) in the body.

The wire format, as Labelbox documents it (docs.labelbox.com "Webhooks", the SDK's
`Webhook.Topic` and its receiving example): a JSON POST signed ``X-Hub-Signature:
sha1=<hex HMAC-SHA1 of the raw body keyed by the webhook's secret>`` (``verify =
"hmac-sha1"``), naming its topic in ``X-Labelbox-Event`` and its delivery in ``X-Labelbox-Id``.
Topics: LABEL_CREATED, LABEL_UPDATED, LABEL_DELETED, REVIEW_CREATED, REVIEW_UPDATED,
REVIEW_DELETED, WORKFLOW_ACTION. A body is one of two shapes:

- v1, the label itself: ``{"id", "label": "<the label as JSON text>", "createdAt",
  "updatedAt", "createdBy", "project": {"id", ...}, "dataRow": {"id", "externalId"?}}``;
- v2, which "mimics the Export v2 payload": one exported data row, ``{"data_row": {"id",
  "global_key"?, "external_id"?}, "projects": {"<project id>": {"name", "labels": [{"id",
  "label_details": {"created_at", "updated_at", "created_by"}, "annotations"}]}}}``.

The task is the data row (what a labeler is given, and what its deliveries are ordered by).
LABEL_CREATED is `task.completed` once per label (its id is the event's identity, so a label
repeated by a later payload is the same event) and LABEL_UPDATED `task.updated`; every other
topic is `labelbox.<topic>` with the body as payload (a review is not a task state: Labelbox
fires REVIEW_UPDATED when a review is removed, too). The topic travels in a header, so it is
read from the stored delivery's headers when its events are derived: a delivery without a
known topic is quarantined then, with the reason.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any

import orjson
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from receiver.bodies import decode
from receiver.errors import PayloadError
from receiver.events import Event, event_id
from receiver.records import DeliveryRecord
from receiver.sources.base import Parsed, field_errors, invalid

KIND = "labelbox"
EVENT_HEADER = "x-labelbox-event"
TOPICS = frozenset({"LABEL_CREATED", "LABEL_UPDATED", "LABEL_DELETED", "REVIEW_CREATED",
                    "REVIEW_UPDATED", "REVIEW_DELETED", "WORKFLOW_ACTION"})  # fmt: skip
# The topics that say what a data row's labelling task now is; the rest keep their own name.
STATE_EVENTS = {"LABEL_CREATED": "task.completed", "LABEL_UPDATED": "task.updated"}


def _text_id(value: Any) -> Any:
    # Labelbox ids are cuid strings; a number is taken as its text rather than refused.
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


Id = Annotated[str, BeforeValidator(_text_id), Field(min_length=1)]


class Ref(BaseModel):
    model_config = ConfigDict(extra="allow")

    id: Id


class LabelV1(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)

    id: Id
    label: Any = None
    created_at: datetime | None = Field(default=None, alias="createdAt")
    updated_at: datetime | None = Field(default=None, alias="updatedAt")
    created_by: Any = Field(default=None, alias="createdBy")
    project: Ref | None = None
    data_row: Ref = Field(alias="dataRow")


class LabelDetails(BaseModel):
    model_config = ConfigDict(extra="allow")

    created_at: datetime | None = None
    updated_at: datetime | None = None
    created_by: Any = None


class LabelV2(BaseModel):
    model_config = ConfigDict(extra="allow")

    id: Id
    label_details: LabelDetails | None = None
    annotations: Any = None


class ProjectV2(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: str | None = None
    labels: list[LabelV2] = []


class RowV2(BaseModel):
    model_config = ConfigDict(extra="allow")

    data_row: Ref
    projects: dict[str, ProjectV2] = {}


@dataclass(frozen=True, slots=True)
class Label:
    """One label of a body, whichever shape it came in."""

    label_id: str
    project_id: str | None
    response: Any
    created_at: datetime | None
    updated_at: datetime | None
    created_by: Any


@dataclass(frozen=True, slots=True)
class Body:
    value: dict[str, Any]
    data_row: dict[str, Any] | None
    labels: list[Label]

    @property
    def task_id(self) -> str | None:
        # Validated to be there (`Ref`); a number is taken as its text.
        return str(self.data_row["id"]) if self.data_row else None


def _utc(value: datetime | None) -> datetime | None:
    return value.replace(tzinfo=UTC) if value is not None and value.tzinfo is None else value


def _label_text(text: Any) -> Any:
    """v1 carries the label as JSON text: handlers get it decoded when it is JSON."""
    if isinstance(text, str):
        try:
            return orjson.loads(text)
        except orjson.JSONDecodeError:
            return text
    return text


def _v2_label(project_id: str, label: LabelV2) -> Label:
    details = label.label_details or LabelDetails()
    return Label(label.id, project_id, label.annotations, _utc(details.created_at),
                 _utc(details.updated_at), details.created_by)  # fmt: skip


def read(body: bytes, content_type: str) -> Body:
    value = decode(body, content_type)
    if not isinstance(value, dict):
        raise PayloadError("a Labelbox webhook body is a JSON object")
    try:
        if "dataRow" in value:
            v1 = LabelV1.model_validate(value)
            label = Label(v1.id, v1.project.id if v1.project else None, _label_text(v1.label),
                          _utc(v1.created_at), _utc(v1.updated_at), v1.created_by)  # fmt: skip
            return Body(value, value["dataRow"], [label])
        if "data_row" in value:
            v2 = RowV2.model_validate(value)
            labels = [_v2_label(pid, lb) for pid, project in v2.projects.items()
                      for lb in project.labels]  # fmt: skip
            return Body(value, value["data_row"], labels)
    except ValidationError as exc:
        raise invalid("not a Labelbox webhook payload", field_errors(exc)) from None
    # Review and workflow payloads name no data row we can rely on: no task, events only.
    return Body(value, None, [])


class LabelboxAdapter:
    kind = KIND

    def parse(self, body: bytes, content_type: str) -> Parsed:
        read_body = read(body, content_type)
        return Parsed(task_id=read_body.task_id, value=read_body)

    def events(self, source: str, delivery: DeliveryRecord) -> list[Event]:
        assert delivery.body is not None
        topic = delivery.headers.get(EVENT_HEADER, "").strip().upper()
        if topic not in TOPICS:
            raise PayloadError(f"header {EVENT_HEADER} names no Labelbox topic: {topic!r}")
        body = read(delivery.body, delivery.content_type)
        task_id = body.task_id
        received = datetime.fromtimestamp(delivery.received_at, UTC)
        digest = hashlib.sha256(delivery.body).hexdigest()
        name = STATE_EVENTS.get(topic)
        if name is None:
            name = f"{KIND}.{topic.lower()}"
            return [Event(event_id=event_id(name, source, task_id, digest), name=name,
                          source=source, task_id=task_id, delivery_id=delivery.id,
                          occurred_at=received, payload=body.value)]  # fmt: skip
        if task_id is None or not body.labels:
            raise PayloadError(f"a {topic} payload names no label of a data row")
        out = []
        for label in body.labels:
            if name == "task.completed":
                identity: tuple[str, ...] = (label.label_id,)
                at = label.created_at
            else:  # an update is a new fact each time the label changes
                stamp = label.updated_at.isoformat() if label.updated_at else digest
                identity, at = (label.label_id, stamp), label.updated_at
            payload = {
                "status": "completed", "response": label.response, "label_id": label.label_id,
                "project_id": label.project_id, "data_row": body.data_row,
                "created_by": label.created_by, "topic": topic,
            }  # fmt: skip
            out.append(Event(event_id=event_id(name, source, task_id, *identity), name=name,
                             source=source, task_id=task_id, delivery_id=delivery.id,
                             occurred_at=at or received, payload=payload))  # fmt: skip
        return out
