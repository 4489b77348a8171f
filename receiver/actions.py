"""Operator actions as deliveries: what an operator does to a task goes down the same pipeline
as what a vendor says about it.

An action (complete, discard, unlock, report a document-review task, ...) is stored as a
synthesized delivery of the task's own source, marked with the API key name that made it
(``operator``), in the task's lane of the dispatch queue. The plugin that owns the action
interprets it inside the transaction that stores it, so the HTTP answer is decided together
with the state change; the dispatcher then hands its events to handlers in the task's
receipt order, and ``taskhook rebuild`` and ``export`` / ``replay`` see it like any callback.

The `operator` mark is set only here (and by a local ``replay`` of an exported action): a
vendor's callback can never pass for an operator's action, whatever its body says.
"""

from __future__ import annotations

import hashlib

import orjson
from pydantic import BaseModel, ConfigDict, ValidationError

from receiver.errors import PayloadError
from receiver.records import DeliveryStatus, NewDelivery, new_id

CONTENT_TYPE = "application/json"


class OperatorAction(BaseModel):
    """The body of an operator action's delivery."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    action_id: str
    task_id: str
    action: str
    by: str
    reason: str | None = None


def parse_action(body: bytes) -> OperatorAction:
    try:
        return OperatorAction.model_validate_json(body)
    except ValidationError as exc:
        raise PayloadError(f"not an operator action: {exc.errors()[0]['msg']}") from None


def action_delivery(
    *,
    source: str,
    kind: str,
    task_id: str,
    action: str,
    actor: str,
    reason: str | None,
    now: float,
) -> NewDelivery:
    """The delivery that records `actor`'s `action` on `task_id` at `now`."""
    body = orjson.dumps(
        OperatorAction(
            action_id=new_id("act_", now), task_id=task_id, action=action, by=actor, reason=reason
        ).model_dump(exclude_none=True)
    )
    return NewDelivery(
        id=new_id("dlv_", now),
        source=source,
        kind=kind,
        received_at=now,
        headers={"content-type": CONTENT_TYPE},
        body=body,
        content_type=CONTENT_TYPE,
        dedup_key="sha256:" + hashlib.sha256(body).hexdigest(),
        status=DeliveryStatus.RECEIVED,
        task_id=task_id,
        operator=actor,
    )
