"""TaskMonk (seed 000), which never calls back: batch status, then the batch's output.

The integration workflow is batch → upload job → job progress → batch status → output. A pass
reads the project's batches and each one's status (new / in progress / completed / total);
when a batch's counts moved since the last pass, it asks for the batch's output (an export
job), follows that job's progress until its file is ready, reads the file and turns each
task in it into a snapshot. The cursor keeps each batch's last counts, saved batch by
batch, so a pass cut short resumes at the first batch whose output was not fed.

Authentication is OAuth2 client credentials; the token is cached until shortly before it
expires (and fetched again if the API rejects it early).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import orjson

from receiver.config import ReconcileSettings
from receiver.errors import VendorError
from receiver.reconcile.base import Page, callback
from receiver.reconcile.http import ClientCredentials, Sleep, VendorClient

STATUS = {
    "completed": "completed",
    "done": "completed",
    "submitted": "completed",
    "rejected": "error",
    "failed": "error",
    "error": "error",
    "cancelled": "canceled",
    "canceled": "canceled",
    "deleted": "canceled",
}
JOB_DONE = frozenset({"completed", "complete", "done", "success", "succeeded"})
JOB_FAILED = frozenset({"failed", "error", "cancelled", "canceled"})


def _items(doc: Any, *keys: str) -> list[dict[str, Any]]:
    """A list the API answers bare or wrapped in one of `keys`."""
    if isinstance(doc, dict):
        doc = next((doc[k] for k in keys if isinstance(doc.get(k), list)), None)
    return [item for item in doc or [] if isinstance(item, dict)]


def _count(doc: dict[str, Any], *names: str) -> int:
    for name in names:
        value = doc.get(name)
        if isinstance(value, int):
            return value
    return 0


def snapshot(task: dict[str, Any], *, project: str, batch: str) -> dict[str, Any] | None:
    task_id = task.get("task_id") or task.get("id")
    if task_id is None:
        return None
    vendor_status = str(task.get("status") or "")
    status = STATUS.get(vendor_status.lower(), "pending")
    output = task.get("output")
    body: dict[str, Any] = {
        "task_id": str(task_id),
        "status": status,
        "project": project,
        "batch": batch,
        "created_at": task.get("created_at"),
        "updated_at": task.get("updated_at"),
        "completed_at": task.get("completed_at") if status == "completed" else None,
        "metadata": {
            "vendor_status": vendor_status,
            "external_id": task.get("external_id"),
        },
        "response": output if output is not None else None,
    }
    if status == "error" and not isinstance(output, dict):
        body["response"] = {"error": task.get("reason") or vendor_status}
    return callback({k: v for k, v in body.items() if v is not None})


class TaskMonkPoller:
    def __init__(
        self, source: str, base_url: str, settings: ReconcileSettings, *, sleep: Sleep
    ) -> None:
        assert settings.client_id and settings.client_secret and settings.project_id
        self.source = source
        self.settings = settings
        self.project = settings.project_id
        self.credentials = ClientCredentials(
            settings.token_url or f"{base_url}/api/oauth2/token",
            settings.client_id,
            settings.client_secret.get_secret_value(),
        )
        self.client = VendorClient(
            source, base_url, settings, authorization=self.credentials, sleep=sleep
        )
        self._sleep = sleep
        self._host = urlsplit(base_url).netloc

    async def aclose(self) -> None:
        await self.client.aclose()

    async def poll(self, cursor: str | None, started: float) -> AsyncIterator[Page]:
        seen: dict[str, Any] = orjson.loads(cursor) if cursor else {}
        batches: dict[str, Any] = dict(seen.get("batches") or {})
        root = f"/api/project/{self.project}"
        listed = _items(await self.client.json("GET", f"{root}/batch"), "batches", "items")
        for batch in listed:
            batch_id = str(batch.get("id") or batch.get("batch_id") or "")
            if not batch_id:
                continue
            doc = await self.client.json("GET", f"{root}/batch/{batch_id}/status")
            counts = {
                "new": _count(doc, "new_count", "newCount", "new"),
                "in_progress": _count(doc, "in_progress", "inProgress"),
                "completed": _count(doc, "completed"),
                "total": _count(doc, "total"),
            }
            if batches.get(batch_id) == counts:
                continue
            snapshots: list[dict[str, Any]] = []
            if counts["completed"] or counts["in_progress"]:
                for task in await self._output(root, batch_id):
                    made = snapshot(task, project=self.project, batch=batch_id)
                    if made is not None:
                        snapshots.append(made)
            batches[batch_id] = counts
            yield Page(snapshots, cursor=orjson.dumps({"batches": batches}).decode())

    async def _output(self, root: str, batch_id: str) -> list[dict[str, Any]]:
        """Ask for the batch's output, follow the export job, read its file."""
        ask: dict[str, Any] = {"output_format": "JSON"}
        if self.settings.output_fields:
            ask["fields"] = list(self.settings.output_fields)
        job = await self.client.json("POST", f"{root}/batch/{batch_id}/output", json=ask)
        job_id = job.get("job_id") if isinstance(job, dict) else None
        if not job_id:
            raise VendorError(self.source, f"batch {batch_id}: output request gave no job_id")
        deadline = time.monotonic() + self.settings.timeout_seconds * 10
        wait = min(0.5, self.settings.backoff_base_seconds) or 0.01
        while True:
            progress = await self.client.json("GET", f"{root}/job/{job_id}/status")
            state = str(progress.get("status") or progress.get("state") or "").lower()
            url = progress.get("file_url") or progress.get("url")
            if state in JOB_FAILED:
                raise VendorError(self.source, f"output job {job_id} of batch {batch_id} {state}")
            if url and (state in JOB_DONE or progress.get("completed") is True):
                break
            if time.monotonic() > deadline:
                raise VendorError(self.source, f"output job {job_id} did not finish in time")
            await self._sleep(wait)
            wait = min(wait * 2, max(self.settings.backoff_max_seconds, 0.01))
        # The file may sit elsewhere (a signed storage URL): the token goes only to TaskMonk.
        ours = urlsplit(str(url)).netloc in ("", self._host)
        output = await self.client.json("GET", str(url), authenticate=ours)
        return _items(output, "tasks", "items", "data")
