"""Clarifai labeling tasks (seed 002), which never call back: ``GET /v2/tasks`` by page.

A task's ``status.code`` says where it is: 54001 in progress, 54002 done, 54003 won't do,
54005 failed, 54006 idle (names such as ``TASK_DONE`` are read too). Each task becomes a
snapshot with ``updated_at`` = ``modified_at``, so the ledger orders them as it orders
callbacks; worker and review strategies and the vendor status go to ``task.metadata``.
Clarifai has no "updated since" filter, so each pass reads every task and feeds only those
whose snapshot changed.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from receiver.config import ReconcileSettings
from receiver.errors import VendorError
from receiver.reconcile.base import Page, callback, iso
from receiver.reconcile.http import Sleep, VendorClient

OK = 10000
STATUS = {
    54001: "pending",  # TASK_IN_PROGRESS
    54002: "completed",  # TASK_DONE
    54003: "canceled",  # TASK_WONT_DO
    54005: "error",  # TASK_FAILED
    54006: "pending",  # TASK_IDLE
}
NAMES = {
    "TASK_IN_PROGRESS": 54001,
    "TASK_DONE": 54002,
    "TASK_WONT_DO": 54003,
    "TASK_FAILED": 54005,
    "TASK_IDLE": 54006,
}


def status_code(status: Any) -> int | None:
    code = status.get("code") if isinstance(status, dict) else None
    if isinstance(code, str):
        return NAMES.get(code) or (int(code) if code.isdigit() else None)
    return code if isinstance(code, int) else None


def snapshot(task: dict[str, Any], *, project: str | None) -> dict[str, Any]:
    raw = task.get("status")
    vendor: dict[str, Any] = raw if isinstance(raw, dict) else {}
    code = status_code(vendor)
    status = STATUS.get(code, "pending") if code is not None else "pending"
    worker = task.get("worker") or {}
    review = task.get("review") or {}
    modified = task.get("modified_at")
    metadata = {
        "name": task.get("name"),
        "vendor_status": {"code": code, "description": vendor.get("description")},
        "worker_strategy": worker.get("strategy"),
        "worker_user_ids": worker.get("user_ids") or [],
        "review_strategy": review.get("strategy"),
        "review_user_ids": review.get("user_ids") or [],
    }
    body: dict[str, Any] = {
        "task_id": str(task["id"]),
        "status": status,
        "type": task.get("type"),
        "created_at": task.get("created_at"),
        "updated_at": modified,
        "project": project,
        "metadata": metadata,
        "params": {k: task[k] for k in ("concept_ids", "input_source") if k in task},
    }
    if status == "completed" and modified:
        body["completed_at"] = modified
    if status == "error":
        body["response"] = {"error": vendor.get("description") or "task failed"}
    return callback({k: v for k, v in body.items() if v is not None})


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
            status = doc.get("status") if isinstance(doc, dict) else None
            if status_code(status) != OK:
                raise VendorError(self.source, f"GET {self.path} answered status {status!r}")
            tasks = [t for t in doc.get("tasks") or [] if isinstance(t, dict) and t.get("id")]
            yield Page([snapshot(t, project=self.settings.app_id) for t in tasks])
            if len(doc.get("tasks") or []) < per_page:
                break
            page += 1
        yield Page(cursor=iso(started))
