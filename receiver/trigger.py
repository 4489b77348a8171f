"""``taskhook trigger EVENT --to URL [--source NAME]``: one realistic delivery, as the vendor.

Like ``stripe trigger``: it builds a fresh delivery of the kind that yields EVENT (new ids,
times of now, the samples' shapes), signs it as the source's sender would (its scheme, its
first secret) and POSTs it where the vendor would: ``/callbacks/{source}``, or a CloudFactory
workstream's ``/v1/workstreams/{id}/task_completed``.

- Refonte-style sources: ``task.completed``, ``task.errored`` (``clear_unique_id_on_error``,
  so ``unique_id.released`` too), ``task.audited``, ``task.canceled`` and ``task.recalled``
  (a completed snapshot, then the pending one that recalls it: two deliveries).
- CloudFactory Throughput: ``throughput.recorded`` (a worker's completed-work report).
- Document review: each lifecycle state's event (``task.reviewing``, ``task.completed``, ...)
  and ``task.reported`` (a state with a report).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import orjson

from receiver.records import new_id
from receiver.signing import sign

if TYPE_CHECKING:  # for annotations only: `taskhook --help` lists EVENTS without pydantic
    from receiver.config import Settings, SourceSettings

Delivery = tuple[bytes, dict[str, str]]

REFONTE_EVENTS = ("task.completed", "task.errored", "task.audited", "task.recalled",
                  "task.canceled")  # fmt: skip
REVIEW_STATES = {
    "task.processing": "PROCESSING", "task.reviewing": "REVIEWING",
    "task.completed": "COMPLETED", "task.failed": "FAILED", "task.discarded": "DISCARDED",
    "task.filtered": "FILTERED", "task.reported": "REVIEWING",
}  # fmt: skip
KIND_EVENTS: dict[str, tuple[str, ...]] = {
    "refonte": REFONTE_EVENTS,
    "cloudfactory": ("throughput.recorded",),
    "document-review": tuple(REVIEW_STATES),
}
EVENTS = tuple(dict.fromkeys(e for events in KIND_EVENTS.values() for e in events))


class TriggerError(ValueError):
    """The event cannot be triggered as asked (no such event, or no source that sends it)."""


def _iso(at: datetime) -> str:
    return at.strftime("%Y-%m-%dT%H:%M:%S.") + f"{at.microsecond // 1000:03d}Z"


def _refonte(event: str, at: datetime, task_id: str) -> dict[str, Any]:
    """A task snapshot of the kind that yields `event` (samples/refonte's shapes)."""
    task: dict[str, Any] = {
        "task_id": task_id, "type": "imageannotation",
        "created_at": _iso(at - timedelta(hours=3)), "updated_at": _iso(at),
        "project": "street_scenes", "batch": f"street_scenes_{at:%Y-%m}",
        "instruction": "Label every object in this image",
        "params": {"attachment": "https://example.com/image.jpg",
                   "geometries": {"box": {"objects_to_annotate": ["vehicle", "pedestrian"]}}},
        "metadata": {"scene": "s-17", "triggered_by": "taskhook trigger"},
        "tags": ["experiment_1"], "unique_id": f"trigger/{task_id}",
        "callback_url": "http://www.example.com/callback", "audits": [],
    }  # fmt: skip
    answer: Any = {"annotations": [{"uuid": "a1", "label": "vehicle", "left": 10, "top": 20,
                                    "width": 50, "height": 30, "geometry": "box"}]}  # fmt: skip
    status = "completed"
    if event == "task.errored":
        status = "error"
        task["clear_unique_id_on_error"] = True
        answer = {
            "error": "One or more attachments could not be downloaded.",
            "attachments": [{"statusCode": 403, "url": "https://example.com/image.jpg"}],
        }
    elif event == "task.canceled":
        status, answer = "canceled", None
        task["clear_unique_id"] = True
    elif event == "task.recalled":
        status, answer = "pending", None
        task["completed_at"] = _iso(at - timedelta(hours=1))
    else:
        task["completed_at"] = _iso(at - timedelta(hours=1))
        task["callback_completed"] = True
    if event == "task.audited":
        task["audits"] = [{"audited_by": "qa@example.com", "audited_at": _iso(at),
                           "audit_time_secs": 42.5, "audit_result": "accepted",
                           "audit_source": "customer"}]  # fmt: skip
        task["customer_review_status"] = "accepted"
    task["status"], task["response"] = status, answer
    return {"task_id": task_id, "status": status, "response": answer, "task": task}


def _throughput(settings: SourceSettings, at: datetime) -> dict[str, Any]:
    """A completed-work report (samples/cloudfactory/task_completed.json's shape)."""
    task_id = str(uuid.uuid4())
    use_case = settings.use_case_ids[0] if settings.use_case_ids else str(uuid.uuid4())
    definitions = settings.task_definition_ids
    return {
        "worker_id": "worker@example.com", "task_id": task_id,
        "task_url": f"https://example.com/annotate/{task_id}", "task_count": 10,
        "subtask_count": 10, "use_case_id": use_case,
        "task_definition_id": definitions[0] if definitions else str(uuid.uuid4()),
        "task_started_at": _iso(at - timedelta(hours=1)), "task_completed_at": _iso(at),
        "duration": 3600, "task_created_at": _iso(at - timedelta(hours=2)),
        "task_measurements": {"attribute_1_count": 340, "attribute_1_label": "Words"},
        "data_source": "api", "task_metadata": {"Person Label": "29", "Date Label": "120"},
        "dataset_id": "6c24f094dfcf", "asset_id": "6c24f094dfcf", "unique_id": task_id,
    }  # fmt: skip


def _review(event: str, task_id: str) -> dict[str, Any]:
    body: dict[str, Any] = {
        "task_id": task_id,
        "status": REVIEW_STATES[event],
        "project_id": "invoices",
        "exported": event == "task.completed",
    }
    if event == "task.reported":
        body["report"] = {"reason": "Illegible scan: page 2 is cut off"}
    return body


def _check(event: str, settings: SourceSettings) -> None:
    if event not in EVENTS:
        raise TriggerError(f"unknown event {event!r}; taskhook trigger knows: {', '.join(EVENTS)}")
    if event not in KIND_EVENTS.get(settings.kind, ()):
        kinds = ", ".join(k for k, events in KIND_EVENTS.items() if event in events)
        raise TriggerError(f"a {settings.kind} source does not send {event} (a {kinds} one does)")


def signed(settings: SourceSettings, body: bytes, now: float) -> dict[str, str]:
    """The headers the source's sender adds to `body`: its content type and signature."""
    headers = {"content-type": "application/json"}
    if settings.scheme != "none":
        headers |= sign(
            settings.scheme, body, settings.secret_values()[0], header=settings.header_name,
            msg_id=new_id("msg_", now), timestamp=int(now),
        )  # fmt: skip
    return headers


def build(event: str, source_settings: SourceSettings, *, now: float | None = None) -> Delivery:
    """One realistic delivery (body, signed headers) that yields `event` from a source of
    `source_settings`' kind. Raises `TriggerError` when that kind does not send it."""
    return deliveries(event, source_settings, now=now)[-1]


def deliveries(
    event: str, source_settings: SourceSettings, *, now: float | None = None
) -> list[Delivery]:
    """What the vendor sends for `event`, in order: one delivery, or for a recall the
    completion then the snapshot that recalls it (a recall needs a completed task)."""
    _check(event, source_settings)
    stamp = time.time() if now is None else now
    at = datetime.fromtimestamp(stamp, UTC)
    kind = source_settings.kind
    if kind == "cloudfactory":
        bodies = [_throughput(source_settings, at)]
    elif kind == "document-review":
        bodies = [_review(event, f"doc-{uuid.uuid4().hex[:16]}")]
    else:
        task_id = uuid.uuid4().hex[:24]  # 24 hex digits, as the vendor's ids
        bodies = [_refonte(event, at, task_id)]
        if event == "task.recalled":
            bodies.insert(0, _refonte("task.completed", at - timedelta(minutes=30), task_id))
    encoded = [orjson.dumps(body, option=orjson.OPT_INDENT_2) for body in bodies]
    return [(body, signed(source_settings, body, stamp)) for body in encoded]


def path_for(name: str, settings: SourceSettings) -> str:
    """Where the vendor POSTs a delivery of source `name`."""
    if settings.kind == "cloudfactory":
        return f"/v1/workstreams/{settings.workstream_id or name}/task_completed"
    return f"/callbacks/{name}"


def pick_source(event: str, settings: Settings, name: str | None = None) -> str:
    """`name` if given (it must be configured), else the configured source that sends
    `event` (``refonte`` first, then in configuration order)."""
    if name is not None:
        if name not in settings.sources:
            known = ", ".join(sorted(settings.sources)) or "none"
            raise TriggerError(f"no source {name!r} (configured: {known})")
        return name
    takers = [n for n, s in settings.sources.items()
              if not s.polled and event in KIND_EVENTS.get(s.kind, ())]  # fmt: skip
    if not takers:
        if event not in EVENTS:
            raise TriggerError(f"unknown event {event!r}; taskhook trigger knows: "
                               f"{', '.join(EVENTS)}")  # fmt: skip
        kinds = ", ".join(k for k, events in KIND_EVENTS.items() if event in events)
        raise TriggerError(f"no configured source sends {event} (a {kinds} source does)")
    return "refonte" if "refonte" in takers else takers[0]


async def send(
    event: str,
    url: str,
    settings: Settings,
    source: str | None = None,
    *,
    transport: Any = None,
) -> list[tuple[int, str]]:
    """Build and POST `event`'s delivery (or deliveries) to the receiver at `url`; each
    answer's status and text. Raises `TriggerError` when it cannot be built. `transport`:
    an httpx transport to send through instead of the network (tests, in-process apps)."""
    import httpx

    name = pick_source(event, settings, source)
    cfg = settings.sources[name]
    answers: list[tuple[int, str]] = []
    base = url.rstrip("/")
    async with httpx.AsyncClient(base_url=base, timeout=30, transport=transport) as client:
        for body, headers in deliveries(event, cfg):
            response = await client.post(path_for(name, cfg), content=body, headers=headers)
            answers.append((response.status_code, response.text))
            if response.status_code >= 300:
                break
    return answers


__all__: Sequence[str] = ("EVENTS", "TriggerError", "build", "deliveries", "send")
