"""Refonte tasks whose callbacks stopped: ``GET /v1/tasks?updated_after=&next_token=``, and
one task asked for by id (``GET /v1/task/{task_id}``, the watchdog's targeted reconcile).

The API's task objects are what its callbacks carry, so each becomes a callback body as is.
The cursor is when the last complete pass began, less `overlap_seconds`: tasks updated
while a pass ran, or stamped by a clock a little behind ours, are read again next time
(and skipped as already fed when nothing changed).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

from receiver.config import ReconcileSettings
from receiver.errors import VendorError
from receiver.reconcile.base import Page, callback, iso
from receiver.reconcile.http import Sleep, VendorClient


class RefontePoller:
    def __init__(
        self, source: str, base_url: str, settings: ReconcileSettings, *, sleep: Sleep
    ) -> None:
        self.source = source
        self.settings = settings
        self.client = VendorClient(
            source, base_url, settings, basic=(settings.secret(), ""), sleep=sleep
        )

    async def aclose(self) -> None:
        await self.client.aclose()

    async def fetch(self, task_id: str) -> dict[str, Any] | None:
        """The task as the API has it now; None when the API does not know it (404)."""
        path = f"/v1/task/{quote(task_id, safe='')}"
        try:
            doc = await self.client.json("GET", path)
        except VendorError as exc:
            if exc.status == 404:
                return None
            raise
        if not isinstance(doc, dict) or not doc.get("task_id"):
            raise VendorError(self.source, f"GET {path} answered without a task object")
        return doc

    async def poll(self, cursor: str | None, started: float) -> AsyncIterator[Page]:
        params: dict[str, Any] = {"limit": self.settings.page_size}
        if cursor:
            params["updated_after"] = cursor
        while True:
            doc = await self.client.json("GET", "/v1/tasks", params=params)
            docs = doc.get("docs") if isinstance(doc, dict) else None
            if not isinstance(docs, list):
                raise VendorError(self.source, "GET /v1/tasks answered without a `docs` list")
            yield Page([callback(t) for t in docs if isinstance(t, dict) and t.get("task_id")])
            token = doc.get("next_token")
            if not token or doc.get("has_more") is False:
                break
            params["next_token"] = token
        yield Page(cursor=iso(started - self.settings.overlap_seconds))
