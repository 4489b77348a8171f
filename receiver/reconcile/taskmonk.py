"""TaskMonk (seed 000), which never calls back: batch status, then the batch's output file.

The paths, parameters and answers are those of TaskMonk's public Python SDK
(``taskmonk/taskmonk-sdk-python``, ``taskmonk/TaskMonkClient.py``):

- ``_refresh_token``: ``POST /api/oauth2/token`` with ``grant_type``, ``client_id`` and
  ``client_secret`` as query parameters; the answer has ``access_token`` and ``expires_in``.
- ``_get_batch``: ``GET /api/project/{project}/batch``.
- ``get_batch_status``: ``GET /api/project/{project}/batch/{batch}/status``, answering
  ``not_started``, ``in_progress``, ``completed`` and ``total`` (the SDK's ``BatchStatus`` and
  the Java SDK's name the first ``new_count``: both are read).
- ``get_batch_output``: ``POST /api/project/v2/{project}/batch/{batch}/output?output_format=CSV``
  with ``{"field_names": [...]}``, answering ``{job_id, file_url}``; it waits for the job, then
  downloads ``file_url`` as it is (no token: a storage URL).
- ``get_job_progress`` / ``is_job_complete``: ``GET /api/project/{project}/job/{job}/status``
  answers ``{percentage, completed, total}`` (no status); done when ``completed == total``.

A batch whose counts moved since the last pass has its output asked for, its job followed for
at most ``job_wait_seconds``, and its file (CSV, or JSON) streamed row by row into snapshots a
page at a time: a large output never sits whole in memory. The cursor keeps each batch's
counts, saved once its output is fed: a pass cut short resumes at the first batch not fed.
"""

from __future__ import annotations

import codecs
import csv
import json
import re
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import aclosing
from typing import Any
from urllib.parse import urljoin

import httpx
import orjson

from receiver.config import ReconcileSettings
from receiver.errors import VendorError
from receiver.reconcile.base import Page, callback
from receiver.reconcile.http import RETRYABLE, ClientCredentials, Sleep, VendorClient, retry_after

STATUS = {
    "completed": "completed", "done": "completed", "submitted": "completed",
    "rejected": "error", "failed": "error", "error": "error",
    "cancelled": "canceled", "canceled": "canceled", "deleted": "canceled",
}  # fmt: skip
# Columns describing the task itself; in a flat row every other column is an output field.
TASK_COLUMNS = frozenset({
    "task_id", "id", "external_id", "externalId", "status", "batch_id", "project_id",
    "created_at", "updated_at", "completed_at", "reason", "input", "output",
})  # fmt: skip
# One CSV record or JSON element larger than this is refused: an unclosed quote or bracket
# would otherwise buffer the rest of the file.
MAX_RECORD_CHARS = 8 * 1024 * 1024
# The SDKs poll a job every 1 s (Python) or 5 s (Java); start fast, never slower than that.
JOB_POLL_MAX_SECONDS = 5.0
_SKIP = re.compile(r"[\s,]*")


class BadOutput(ValueError):
    """The output file cannot be read as the format it was asked in."""


class SdkCredentials(ClientCredentials):
    """The token as the SDK's ``_refresh_token`` asks for it: the client credentials as query
    parameters, not a form body. Caching, refresh margin and the shared lock are unchanged."""

    IN_BODY = False


def _items(doc: Any, *keys: str) -> list[dict[str, Any]]:
    """A list the API answers bare or wrapped in one of `keys`."""
    if isinstance(doc, dict):
        doc = next((doc[k] for k in keys if isinstance(doc.get(k), list)), None)
    return [item for item in doc or [] if isinstance(item, dict)]


def _int(doc: Any, *names: str) -> int | None:
    for name in names:
        value = doc.get(name) if isinstance(doc, dict) else None
        if isinstance(value, int | float) and not isinstance(value, bool):
            return int(value)
    return None


def batch_counts(doc: Any) -> dict[str, int]:
    return {
        "not_started": _int(doc, "not_started", "new_count") or 0,
        "in_progress": _int(doc, "in_progress") or 0,
        "completed": _int(doc, "completed") or 0,
        "total": _int(doc, "total") or 0,
    }


def job_done(progress: Any) -> bool:
    """The SDK's ``is_job_complete`` (``completed == total``), or ``percentage`` at 100.
    0 of 0 is not done: output is only asked for a batch with tasks under way, so a job with
    nothing counted yet has not started counting."""
    percentage = _int(progress, "percentage")
    completed, total = _int(progress, "completed"), _int(progress, "total")
    if percentage is not None and percentage >= 100:
        return True
    return completed is not None and total is not None and 0 < total <= completed


def snapshot(
    row: dict[str, Any], *, project: str, batch: str, fields: tuple[str, ...] = ()
) -> dict[str, Any] | None:
    """One row of the output file as a Refonte-shaped snapshot. A JSON row may carry the
    output as an object (the SDKs' Task has ``input``/``output`` maps); a CSV row is flat, its
    output the asked-for `fields` (or every column not about the task). Empty CSV cells are
    dropped: CSV cannot tell an empty answer from none yet."""
    task_id = row.get("task_id") or row.get("id")
    if task_id is None or task_id == "":
        return None
    output = row.get("output")
    if not isinstance(output, dict):
        names = fields or [k for k in row if k not in TASK_COLUMNS]
        output = {k: row[k] for k in names if row.get(k) not in (None, "")} or None
    vendor_status = str(row.get("status") or "")
    status = STATUS.get(vendor_status.lower(), "pending")
    external = row.get("external_id") if "external_id" in row else row.get("externalId")
    body: dict[str, Any] = {
        "task_id": str(task_id),
        "status": status,
        "project": project,
        "batch": batch,
        "created_at": row.get("created_at") or None,
        "updated_at": row.get("updated_at") or None,
        "completed_at": (row.get("completed_at") or None) if status == "completed" else None,
        "metadata": {"vendor_status": vendor_status, "external_id": external or None},
        "response": output,
    }
    if status == "error" and not isinstance(output, dict):
        body["response"] = {"error": row.get("reason") or vendor_status}
    return callback({k: v for k, v in body.items() if v is not None})


async def _text(chunks: AsyncIterator[bytes]) -> AsyncIterator[str]:
    """Decoded text as it arrives; a UTF-8 sequence split across chunks is kept whole, and
    the byte-order mark spreadsheet exports start with is dropped."""
    decoder = codecs.getincrementaldecoder("utf-8-sig")()
    try:
        async for chunk in chunks:
            if text := decoder.decode(chunk):
                yield text
        if text := decoder.decode(b"", final=True):
            yield text
    except UnicodeDecodeError as exc:
        raise BadOutput(f"not UTF-8: {exc}") from None


async def _lines(chunks: AsyncIterator[bytes]) -> AsyncIterator[str]:
    """Lines with their ``\\n`` kept (a CSV field may span lines); split on ``\\n`` only, as
    the csv module does, never on the other separators `str.splitlines` knows."""
    rest = ""
    async for text in _text(chunks):
        *lines, rest = (rest + text).split("\n")
        for line in lines:
            yield line + "\n"
        if len(rest) > MAX_RECORD_CHARS:
            raise BadOutput(f"a line longer than {MAX_RECORD_CHARS} characters")
    if rest:
        yield rest


async def csv_rows(chunks: AsyncIterator[bytes]) -> AsyncIterator[dict[str, str]]:
    """CSV rows keyed by the header row, one record at a time. A record ends at a newline
    outside quotes: with the default dialect quotes inside a field are doubled, so an even
    count of quotes so far means none is open."""
    header: list[str] | None = None
    record, quotes = "", 0
    async for line in _lines(chunks):
        record += line
        quotes += line.count('"')
        if quotes % 2:
            if len(record) > MAX_RECORD_CHARS:
                raise BadOutput(f"a CSV record longer than {MAX_RECORD_CHARS} characters")
            continue
        text, record, quotes = record, "", 0
        if not text.strip():
            continue
        try:
            row = next(csv.reader([text]))
        except csv.Error as exc:
            raise BadOutput(f"bad CSV record: {exc}") from None
        if header is None:
            header = [name.strip() for name in row]
        else:
            yield dict(zip(header, row, strict=False))
    if record.strip():
        raise BadOutput("the CSV file ends inside a quoted field")


async def json_rows(chunks: AsyncIterator[bytes]) -> AsyncIterator[Any]:
    """The elements of a JSON array, or the objects of a JSON-lines file, as they arrive. No
    TaskMonk document shows the JSON file's layout, so the first character decides."""
    decoder = json.JSONDecoder()
    buf, layout = "", ""
    async for text in _text(chunks):
        buf += text
        if not layout:
            buf = buf.lstrip()
            if not buf:
                continue
            layout = "array" if buf.startswith("[") else "lines"
            buf = buf.removeprefix("[")
        if layout == "lines":
            *lines, buf = buf.split("\n")
            for line in lines:
                if line.strip():
                    yield _loads(line)
        elif layout == "array":
            pos = 0
            while (pos := _skip(buf, pos)) < len(buf):
                if buf[pos] == "]":
                    layout, pos = "done", pos + 1
                    break
                try:
                    value, pos = decoder.raw_decode(buf, pos)
                except json.JSONDecodeError:
                    break  # the element is not whole yet: read on
                yield value
            buf = buf[pos:]
        if layout == "done" and buf.strip():
            raise BadOutput("data after the end of the JSON array")
        if len(buf) > MAX_RECORD_CHARS:
            raise BadOutput(f"a JSON element longer than {MAX_RECORD_CHARS} characters")
    if layout == "lines" and buf.strip():
        yield _loads(buf)
    elif layout == "array":
        raise BadOutput(f"the JSON array is cut short or invalid near {buf[:80]!r}")


def _skip(buf: str, pos: int) -> int:
    """Past the whitespace and commas between array elements."""
    found = _SKIP.match(buf, pos)
    return found.end() if found else pos


def _loads(line: str) -> Any:
    try:
        return orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        raise BadOutput(f"bad JSON line: {exc}") from None


class TaskMonkPoller:
    def __init__(
        self, source: str, base_url: str, settings: ReconcileSettings, *, sleep: Sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:  # fmt: skip
        assert settings.client_id and settings.client_secret and settings.project_id
        self.source = source
        self.settings = settings
        self.project = settings.project_id
        self.credentials = SdkCredentials(
            settings.token_url or f"{base_url}/api/oauth2/token",
            settings.client_id,
            settings.client_secret.get_secret_value(),
        )
        self.client = VendorClient(
            source, base_url, settings, authorization=self.credentials, sleep=sleep
        )
        # The file is fetched as the SDK's `urlretrieve` does: a plain GET, no token.
        self._files = httpx.AsyncClient(
            timeout=settings.timeout_seconds, follow_redirects=True,
            headers={"user-agent": "taskhook-reconcile"},
        )  # fmt: skip
        self._base_url = base_url
        self._sleep = sleep
        self._clock = clock

    async def aclose(self) -> None:
        await self.client.aclose()
        await self._files.aclose()

    async def poll(self, cursor: str | None, started: float) -> AsyncIterator[Page]:
        seen: dict[str, Any] = orjson.loads(cursor) if cursor else {}
        batches: dict[str, Any] = dict(seen.get("batches") or {})
        root = f"/api/project/{self.project}"
        listed = _items(await self.client.json("GET", f"{root}/batch"), "batches", "items")
        for batch in listed:
            batch_id = str(batch.get("id") or "")
            if not batch_id:
                continue
            counts = batch_counts(await self.client.json("GET", f"{root}/batch/{batch_id}/status"))
            if batches.get(batch_id) == counts:
                continue
            page: list[dict[str, Any]] = []
            if counts["completed"] or counts["in_progress"]:
                # aclosing: a pass stopped mid-file closes the download at once.
                async with aclosing(self._snapshots(batch_id)) as made_rows:
                    async for made in made_rows:
                        page.append(made)
                        if len(page) >= self.settings.page_size:
                            yield Page(page)  # fed now; the cursor moves after the last row
                            page = []
            batches[batch_id] = counts
            yield Page(page, cursor=orjson.dumps({"batches": batches}).decode())

    async def _snapshots(self, batch_id: str) -> AsyncGenerator[dict[str, Any], None]:
        file_url = await self._export(batch_id)
        fields = self.settings.output_fields
        try:
            async with aclosing(self._rows(file_url, batch_id)) as rows:
                async for row in rows:
                    if not isinstance(row, dict):
                        continue
                    if "task_id" not in row and "id" not in row:
                        # Not one task could be named: fail loudly, not with an empty pass.
                        raise BadOutput(f"a row with no task_id or id: {sorted(row)[:20]}")
                    made = snapshot(row, project=self.project, batch=batch_id, fields=fields)
                    if made is not None:
                        yield made
        except BadOutput as exc:
            raise VendorError(self.source, f"output of batch {batch_id}: {exc}") from None

    async def _export(self, batch_id: str) -> str:
        """Ask for the batch's output and wait (bounded) for its job; the file's URL."""
        answer = await self.client.json(
            "POST",
            f"/api/project/v2/{self.project}/batch/{batch_id}/output",
            params={"output_format": self.settings.output_format},
            json={"field_names": list(self.settings.output_fields)},
        )
        job_id = answer.get("job_id") if isinstance(answer, dict) else None
        file_url = answer.get("file_url") if isinstance(answer, dict) else None
        if not job_id or not file_url:
            raise VendorError(
                self.source, f"batch {batch_id}: the output request answered no job_id or "
                f"file_url: {str(answer)[:200]}",
            )  # fmt: skip
        await self._wait(str(job_id), batch_id)
        return urljoin(self._base_url + "/", str(file_url))

    async def _wait(self, job_id: str, batch_id: str) -> None:
        limit = self.settings.job_wait_seconds
        deadline = self._clock() + limit
        wait = min(JOB_POLL_MAX_SECONDS, self.settings.backoff_base_seconds) or 0.01
        cap = max(min(JOB_POLL_MAX_SECONDS, self.settings.backoff_max_seconds), 0.01)
        path = f"/api/project/{self.project}/job/{job_id}/status"
        while not job_done(progress := await self.client.json("GET", path)):
            left = deadline - self._clock()
            if left <= 0:
                raise VendorError(
                    self.source,
                    f"output job {job_id} of batch {batch_id} did not finish within "
                    f"{limit:g} s (job_wait_seconds); last progress {str(progress)[:200]}",
                )
            await self._sleep(min(wait, left))
            wait = min(wait * 2, cap)

    async def _rows(self, url: str, batch_id: str) -> AsyncGenerator[Any, None]:
        """The file's rows, streamed. 429/5xx and network failures before the first byte are
        retried as API calls are; a failure once rows were fed fails the pass (resumed)."""
        parse = csv_rows if self.settings.output_format == "CSV" else json_rows
        where, problem = f"output file of batch {batch_id}", ""
        for attempt in range(self.settings.max_retries + 1):
            delay = min(self.settings.backoff_max_seconds,
                        self.settings.backoff_base_seconds * 2**attempt)  # fmt: skip
            try:
                async with self._files.stream("GET", url) as answer:
                    if answer.is_success:
                        try:
                            async for row in parse(answer.aiter_bytes()):
                                yield row
                        except httpx.HTTPError as exc:
                            raise VendorError(self.source, f"{where}: {exc!r}") from None
                        return
                    head = await anext(answer.aiter_bytes(), b"")
                    problem = f"{where} answered {answer.status_code}: {head[:300]!r}"
                    if answer.status_code not in RETRYABLE:
                        raise VendorError(self.source, problem, status=answer.status_code)
                    asked = retry_after(answer.headers.get("retry-after"), now=time.time())
                    if asked is not None:
                        delay = min(asked, self.settings.backoff_max_seconds)
            except httpx.TransportError as exc:
                problem = f"{where}: {exc!r}"
            if attempt < self.settings.max_retries:
                await self._sleep(delay)
        raise VendorError(
            self.source, f"{problem} (gave up after {self.settings.max_retries + 1} attempts)"
        )
