"""Clarifai labeling tasks (seed 002), which never call back: ``GET /v2/tasks`` by page.

A task's ``status.code`` says where it is: 54001 in progress, 54002 done, 54003 won't do,
54005 failed, 54006 idle. Each task becomes a snapshot with ``updated_at`` = ``modified_at``,
so the ledger orders them as it orders callbacks; worker and review strategies and the
vendor status go to ``task.metadata``. Clarifai has no "updated since" filter, so each pass
reads every task and feeds only those whose snapshot changed.

The answers are protobuf JSON, which has variants: an enum is written as its name (the
default) or as its number (``use_integers_for_enums``), a number also as its decimal text,
and a field under its proto name (``modified_at``) or in lowerCamelCase (``modifiedAt``).
Every variant of one task makes the same snapshot, bytes included, so a change of rendering
is not a change of the task. A task that cannot be read at all is handed on with the reason,
to be stored quarantined and to fail the pass, never dropped.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Any

from receiver.config import ReconcileSettings
from receiver.errors import VendorError
from receiver.reconcile.base import Page, callback, iso
from receiver.reconcile.http import Sleep, VendorClient
from receiver.reconcile.runner import ReadPage

OK = 10000
STATUS = {
    54001: "pending",  # TASK_IN_PROGRESS
    54002: "completed",  # TASK_DONE
    54003: "canceled",  # TASK_WONT_DO
    54005: "error",  # TASK_FAILED
    54006: "pending",  # TASK_IDLE
}
# The StatusCode names (clarifai/api/status/status_code.proto) this poller acts on.
CODES = {
    "SUCCESS": OK,
    "TASK_IN_PROGRESS": 54001,
    "TASK_DONE": 54002,
    "TASK_WONT_DO": 54003,
    "TASK_FAILED": 54005,
    "TASK_IDLE": 54006,
}
# The enums of a task, number → name, from clarifai/api/resources.proto. Snapshots carry
# names, as Clarifai's documentation writes them.
TASK_TYPES = {
    0: "TYPE_NOT_SET",
    1: "CONCEPTS_CLASSIFICATION",
    2: "BOUNDING_BOX_DETECTION",
    3: "POLYGON_DETECTION",
}
WORKER_STRATEGIES = {0: "WORKER_STRATEGY_NOT_SET", 2: "PARTITIONED", 3: "FULL", 4: "DYNAMIC"}
REVIEW_STRATEGIES = {0: "TASK_REVIEW_STRATEGY_NOT_SET", 1: "NONE", 2: "MANUAL", 3: "CONSENSUS"}
INPUT_SOURCE_TYPES = {
    0: "INPUT_SOURCE_TYPE_NOT_SET",
    1: "ALL_INPUTS",
    2: "SAVED_SEARCH",
    3: "DATASET",
}


class Unreadable(ValueError):
    """A task that cannot be made a snapshot; the message says why."""


def shown(value: Any) -> str:
    # Reasons are stored and printed: a huge or hostile value must not make them so.
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def number(value: Any) -> int | None:
    """An integer as protobuf JSON may write it: a JSON number or its decimal text."""
    if isinstance(value, bool):  # JSON true is not 1
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.isascii() and value.isdigit():
        return int(value)
    return None


def pick(obj: Mapping[str, Any], name: str) -> Any:
    """A field by its proto name, else by the lowerCamelCase name protobuf JSON prints."""
    if name in obj:
        return obj[name]
    head, *rest = name.split("_")
    return obj.get(head + "".join(part.capitalize() for part in rest))


def enum(value: Any, names: Mapping[int, str], where: str) -> str | None:
    """An enum field as its name, written either way; absent stays absent."""
    if value is None:
        return None
    if (n := number(value)) is not None:
        # A number Clarifai added after this table keeps its digits rather than failing
        # the task: the snapshot stays readable and the value stays visible.
        return names.get(n, str(n))
    if isinstance(value, str):
        return value
    raise Unreadable(f"{where} is {shown(value)}: neither an enum name nor a number")


def status_code(status: Any, where: str = "status") -> int | str | None:
    """`status.code` as a number, whether written as one, as its text or as its name; a
    name this poller does not know stays as written, None when there is no code."""
    if status is None:
        return None
    if not isinstance(status, dict):
        raise Unreadable(f"{where} is {shown(status)}, not an object")
    code = status.get("code")
    if code is None:
        return None
    if (n := number(code)) is not None:
        return n
    if isinstance(code, str):
        return CODES.get(code, code)
    raise Unreadable(f"{where}.code is {shown(code)}: neither a status code nor its name")


def part(obj: Mapping[str, Any], name: str, where: str) -> dict[str, Any]:
    """A nested message; absent is empty, anything but an object cannot be read."""
    value = pick(obj, name)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise Unreadable(f"{where}: {name} is {shown(value)}, not an object")
    return value


def snapshot(task: Any, *, project: str | None) -> dict[str, Any]:
    """The Refonte-shaped snapshot of one task; `Unreadable` if there is none to make."""
    if not isinstance(task, dict):
        raise Unreadable(f"a task that is not an object: {shown(task)}")
    raw_id = task.get("id")
    if isinstance(raw_id, bool) or not isinstance(raw_id, str | int) or raw_id == "":
        raise Unreadable(f"a task without an id (id: {shown(raw_id)})")
    task_id = str(raw_id)
    where = f"task {task_id!r}"
    vendor = part(task, "status", where)
    code = status_code(vendor, f"{where}: status")
    status = STATUS.get(code, "pending") if isinstance(code, int) else "pending"
    worker = part(task, "worker", where)
    review = part(task, "review", where)
    modified = pick(task, "modified_at")
    metadata = {
        "name": task.get("name"),
        "vendor_status": {"code": code, "description": vendor.get("description")},
        "worker_strategy": enum(
            worker.get("strategy"), WORKER_STRATEGIES, f"{where}: worker.strategy"
        ),
        "worker_user_ids": pick(worker, "user_ids") or [],
        "review_strategy": enum(
            review.get("strategy"), REVIEW_STRATEGIES, f"{where}: review.strategy"
        ),
        "review_user_ids": pick(review, "user_ids") or [],
    }
    params: dict[str, Any] = {}
    if (concept_ids := pick(task, "concept_ids")) is not None:
        params["concept_ids"] = concept_ids
    if pick(task, "input_source") is not None:
        source = dict(part(task, "input_source", where))
        if "type" in source:
            source["type"] = enum(source["type"], INPUT_SOURCE_TYPES, f"{where}: input_source.type")
        params["input_source"] = source
    body: dict[str, Any] = {
        "task_id": task_id,
        "status": status,
        "type": enum(task.get("type"), TASK_TYPES, f"{where}: type"),
        "created_at": pick(task, "created_at"),
        "updated_at": modified,
        "project": project,
        "metadata": metadata,
        "params": params,
    }
    if status == "completed" and modified:
        body["completed_at"] = modified
    if status == "error":
        body["response"] = {"error": vendor.get("description") or "task failed"}
    return callback({k: v for k, v in body.items() if v is not None})


def answered_ok(doc: Any) -> bool:
    """Whether a response's own `status.code` is SUCCESS, however it is written."""
    try:
        return status_code(doc.get("status") if isinstance(doc, dict) else None) == OK
    except Unreadable:
        return False


class ClarifaiPoller:
    def __init__(
        self, source: str, base_url: str, settings: ReconcileSettings, *, sleep: Sleep
    ) -> None:
        self.source = source
        self.settings = settings
        self.client = VendorClient(
            source, base_url, settings, authorization=f"Key {settings.secret()}", sleep=sleep
        )
        if settings.user_id and settings.app_id:
            self.path = f"/v2/users/{settings.user_id}/apps/{settings.app_id}/tasks"
        else:
            self.path = "/v2/tasks"

    async def aclose(self) -> None:
        await self.client.aclose()

    async def poll(self, cursor: str | None, started: float) -> AsyncIterator[Page]:
        per_page = self.settings.page_size
        page = 1
        while True:
            doc = await self.client.json(
                "GET", self.path, params={"page": page, "per_page": per_page}
            )
            if not answered_ok(doc):
                status = doc.get("status") if isinstance(doc, dict) else doc
                raise VendorError(self.source, f"GET {self.path} answered status {shown(status)}")
            # Protobuf JSON leaves an empty list out: no `tasks` is a page without tasks.
            tasks = doc.get("tasks")
            if tasks is None:
                tasks = []
            if not isinstance(tasks, list):
                raise VendorError(
                    self.source, f"GET {self.path} answered tasks that are not a list"
                )
            snapshots: list[dict[str, Any]] = []
            unreadable: list[tuple[Any, str]] = []
            for task in tasks:
                try:
                    snapshots.append(snapshot(task, project=self.settings.app_id))
                except Unreadable as exc:
                    unreadable.append((task, f"unreadable Clarifai task: {exc}"))
            yield ReadPage(snapshots, unreadable=unreadable)
            if len(tasks) < per_page:
                break
            page += 1
        yield Page(cursor=iso(started))
