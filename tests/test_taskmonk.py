"""The TaskMonk poller against a fake that speaks as TaskMonk's public Python SDK does
(taskmonk/taskmonk-sdk-python, TaskMonkClient.py): the wire, job progress by percentage,
batch counts with `not_started`, the bounded wait, and the output file read as a stream.

The end-to-end pass into the ledger (CSV and JSON) is in tests/test_reconcile.py."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from receiver.config import settings_from_mapping
from receiver.errors import VendorError
from receiver.reconcile import taskmonk
from receiver.reconcile.base import Page
from receiver.reconcile.taskmonk import (
    BadOutput,
    TaskMonkPoller,
    batch_counts,
    csv_rows,
    job_done,
    json_rows,
    snapshot,
)
from tests.test_reconcile import taskmonk_settings, taskmonk_task
from tests.vendors import Fake, TaskMonkJobs, serving, taskmonk_api


@asynccontextmanager
async def polling(
    fake: Fake, jobs: TaskMonkJobs, **reconcile: Any
) -> AsyncIterator[tuple[TaskMonkPoller, str]]:
    with serving(taskmonk_api(fake, "cid", "csecret", "p9", jobs=jobs)) as url:
        source = settings_from_mapping(
            {"sources": {"t": taskmonk_settings(url, **reconcile)}}, environ={}
        ).sources["t"]
        assert source.reconcile is not None
        poller = TaskMonkPoller("t", url, source.reconcile, sleep=asyncio.sleep)
        try:
            yield poller, url
        finally:
            if jobs.gate is not None:
                jobs.gate.set()  # never leave the fake's stream waiting
            await poller.aclose()


async def pages(poller: TaskMonkPoller, cursor: str | None = None) -> list[Page]:
    return [page async for page in poller.poll(cursor, 0.0)]


def fed(found: list[Page]) -> dict[str, dict[str, Any]]:
    return {s["task_id"]: s for page in found for s in page.snapshots}


async def chunked(data: bytes, size: int) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


async def collect(rows: AsyncIterator[Any]) -> list[Any]:
    return [row async for row in rows]


# --- the wire, as the SDK speaks it ----------------------------------------------------------


async def test_the_poller_calls_taskmonk_as_its_sdk_does() -> None:
    fake, jobs = Fake(), TaskMonkJobs()
    fake.tasks = {"m1": taskmonk_task("m1", "b1", "Completed", output={"label": "cat"})}
    async with polling(fake, jobs) as (poller, _):
        found = await pages(poller)
    assert fed(found)["m1"]["response"] == {"label": "cat"}
    assert jobs.token_via == ["query"]  # _refresh_token: params=, not a form
    assert [(m, p) for m, p, _ in fake.seen] == [
        ("POST", "/api/oauth2/token"),
        ("GET", "/api/project/p9/batch"),  # _get_batch
        ("GET", "/api/project/p9/batch/b1/status"),  # get_batch_status
        ("POST", "/api/project/v2/p9/batch/b1/output"),  # get_batch_output
        ("GET", "/api/project/p9/job/job-1/status"),  # get_job_progress
        ("GET", "/api/project/p9/job/job-1/status"),
        ("GET", f"/files/{jobs.jobs['job-1']['file']}"),  # file_url, as answered
    ]
    assert fake.seen[3][2] == {"output_format": "CSV"}  # the SDK's default
    assert jobs.jobs["job-1"]["ask"] == {"field_names": ["label"]}
    assert jobs.file_auth == [None]  # urlretrieve sends no token to the storage URL


@pytest.mark.parametrize("key", ["not_started", "new_count"])
async def test_batch_counts_include_not_started(key: str) -> None:
    """`not_started` (the Python SDK's get_batch_status) or `new_count` (its BatchStatus and
    the Java SDK): a batch with only not-started tasks asks for no output."""
    fake, jobs = Fake(), TaskMonkJobs(not_started_key=key)
    fake.tasks = {"m1": taskmonk_task("m1", "b1", "New"), "m2": taskmonk_task("m2", "b1", "New")}
    async with polling(fake, jobs) as (poller, _):
        first = await pages(poller)
        assert [p.snapshots for p in first] == [[]] and not fake.paths("/output")
        assert batch_counts({key: 2, "total": 2}) == {
            "not_started": 2, "in_progress": 0, "completed": 0, "total": 2}  # fmt: skip
        assert '"not_started":2' in (first[-1].cursor or "")
        fake.tasks["m2"] = taskmonk_task("m2", "b1", "InProgress")
        second = await pages(poller, first[-1].cursor)
        assert list(fed(second)) == ["m2"] and len(fake.paths("/output")) == 1


# --- job progress and the bounded wait ------------------------------------------------------


def test_a_job_is_done_at_100_percent_or_when_completed_reaches_total() -> None:
    assert job_done({"percentage": 100, "completed": 3, "total": 3})
    assert job_done({"percentage": 100})
    assert job_done({"completed": 3, "total": 3})  # the SDK's is_job_complete
    assert not job_done({"percentage": 50, "completed": 1, "total": 3})
    assert not job_done({"percentage": 0, "completed": 0, "total": 0})  # nothing counted yet
    assert not job_done({"status": "Completed"})  # not a TaskMonk shape: no percentage
    assert not job_done(None)


async def test_progress_is_followed_by_percentage() -> None:
    fake, jobs = Fake(), TaskMonkJobs(finish_after=4)  # 25, 50, 75, then 100 %
    fake.tasks = {"m1": taskmonk_task("m1", "b1", "Completed", output={"label": "cat"})}
    async with polling(fake, jobs) as (poller, _):
        found = await pages(poller)
    assert len(fake.paths("/job/job-1/status")) == 4
    assert len(fake.paths(".csv")) == 1 and list(fed(found)) == ["m1"]


async def test_a_job_that_never_finishes_fails_the_pass_naming_it() -> None:
    fake, jobs = Fake(), TaskMonkJobs(finish_after=None)
    fake.tasks = {"m1": taskmonk_task("m1", "b1", "Completed", output={"label": "cat"})}
    async with polling(fake, jobs, job_wait_seconds=0.3) as (poller, _):
        seen: list[Page] = []
        with pytest.raises(VendorError, match=r"output job job-1 of batch b1 did not finish "
                           r"within 0\.3 s \(job_wait_seconds\)") as caught:  # fmt: skip
            async for page in poller.poll(None, 0.0):
                seen.append(page)
    assert "'percentage': 0" in str(caught.value)
    assert not seen  # no cursor moved past b1
    assert 3 <= len(fake.paths("/job/job-1/status")) < 100  # polled, with a backoff
    assert not fake.paths(".csv")


# --- the output file, streamed -------------------------------------------------------------


@pytest.mark.parametrize(("output_format", "layout"),
                         [("CSV", "array"), ("JSON", "array"), ("JSON", "lines")])  # fmt: skip
async def test_a_large_output_file_is_streamed_not_read_whole(
    output_format: str, layout: str
) -> None:
    """The fake sends 500 rows, then holds the rest back until the test lets it go: a poller
    that read the whole file before making snapshots would never yield its first page."""
    gate = threading.Event()
    jobs = TaskMonkJobs(layout=layout, gate=gate, gate_after=500, chunk_rows=50)
    fake = Fake()
    names = [f"m{n:05}" for n in range(3000)]
    fake.tasks = {
        name: taskmonk_task(name, "b1", "Completed", output={"label": f"l{n}"})
        for n, name in enumerate(names)
    }
    async with polling(fake, jobs, output_format=output_format, page_size=100) as (poller, _):
        stream = poller.poll(None, 0.0)
        first = await asyncio.wait_for(anext(stream), timeout=15)
        assert len(first.snapshots) == 100 and first.cursor is None
        assert jobs.rows_sent <= 550 and jobs.files_finished == 0  # the rest not yet sent
        gate.set()
        rest = [page async for page in stream]
    assert jobs.files_finished == 1
    assert len(fed([first, *rest])) == 3000
    assert all(len(p.snapshots) <= 100 for p in rest)
    assert [p.cursor is not None for p in rest][-1] and not any(p.cursor for p in rest[:-1])
    assert fed(rest)["m02999"]["response"] == {"label": "l2999"}


async def test_a_file_answer_of_5xx_is_retried_and_a_404_fails_the_pass() -> None:
    fake, jobs = Fake(), TaskMonkJobs(file_fail=[503])
    fake.tasks = {"m1": taskmonk_task("m1", "b1", "Completed", output={"label": "cat"})}
    async with polling(fake, jobs) as (poller, _):
        assert list(fed(await pages(poller))) == ["m1"]
        assert len(jobs.file_auth) == 2
        fake.tasks["m1"] = taskmonk_task("m1", "b1", "InProgress")
        jobs.file_fail = [404]
        with pytest.raises(VendorError, match="output file of batch b1 answered 404") as caught:
            await pages(poller)
    assert caught.value.status == 404 and len(jobs.file_auth) == 3


# --- reading CSV and JSON incrementally ----------------------------------------------------

CSV = (
    '\ufefftask_id,external_id,status,label,note\r\n'
    't1,e1,Completed,chat,"a, b"\r\n'
    't2,e2,Completed,猫,"two\nlines with ""quotes"""\r\n'
    '\r\n'
    't3,e3,InProgress,,\r\n'
).encode()  # fmt: skip


@pytest.mark.parametrize("size", [1, 2, 3, 7, 64, 10_000])
async def test_csv_rows_survive_any_chunking(size: int) -> None:
    rows = await collect(csv_rows(chunked(CSV, size)))
    assert rows == [
        {"task_id": "t1", "external_id": "e1", "status": "Completed", "label": "chat",
         "note": "a, b"},
        {"task_id": "t2", "external_id": "e2", "status": "Completed", "label": "猫",
         "note": 'two\nlines with "quotes"'},
        {"task_id": "t3", "external_id": "e3", "status": "InProgress", "label": "", "note": ""},
    ]  # fmt: skip


JSON_ARRAY = b' [ {"task_id": "t1", "output": {"box": "]},["}},\n{"task_id": "t2"} ,\n1 ] \n'


@pytest.mark.parametrize("size", [1, 4, 9, 10_000])
async def test_json_arrays_and_lines_survive_any_chunking(size: int) -> None:
    array = await collect(json_rows(chunked(JSON_ARRAY, size)))
    assert array == [{"task_id": "t1", "output": {"box": "]},["}}, {"task_id": "t2"}, 1]
    lines = b'{"task_id": "t1", "note": "\xc3\xa9"}\n\n{"task_id": "t2"}'
    assert await collect(json_rows(chunked(lines, size))) == [
        {"task_id": "t1", "note": "é"}, {"task_id": "t2"}]  # fmt: skip


async def test_a_record_without_end_is_refused_not_buffered(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(taskmonk, "MAX_RECORD_CHARS", 1000)
    open_quote = b'task_id,label\r\nt1,"' + b"x\n" * 2000
    with pytest.raises(BadOutput, match="longer than 1000"):
        await collect(csv_rows(chunked(open_quote, 64)))
    with pytest.raises(BadOutput, match="longer than 1000"):
        await collect(json_rows(chunked(b'[{"task_id": "' + b"x" * 5000, 64)))
    with pytest.raises(BadOutput, match="ends inside a quoted field"):
        await collect(csv_rows(chunked(b'task_id\r\n"t1\r\n', 4)))
    with pytest.raises(BadOutput, match="cut short"):
        await collect(json_rows(chunked(b'[{"task_id": "t1"}, {"task', 4)))
    with pytest.raises(BadOutput, match="not UTF-8"):
        await collect(csv_rows(chunked(b"task_id\r\n\xff\r\n", 4)))


def test_rows_become_refonte_shaped_snapshots() -> None:
    flat = {"task_id": "t1", "external_id": "e1", "status": "Completed", "label": "cat",
            "note": "", "completed_at": "2026-11-20T10:00:00Z"}  # fmt: skip
    made = snapshot(flat, project="p9", batch="b1", fields=("label", "note"))
    assert made is not None
    assert (made["task_id"], made["status"], made["response"]) == ("t1", "completed",
                                                                   {"label": "cat"})  # fmt: skip
    assert made["task"]["metadata"] == {"vendor_status": "Completed", "external_id": "e1"}
    assert made["task"]["completed_at"] == "2026-11-20T10:00:00Z"
    everything = snapshot({**flat, "extra": "x"}, project="p9", batch="b1")
    assert everything is not None and everything["response"] == {"label": "cat", "extra": "x"}
    nested = snapshot({"task_id": "t2", "externalId": "e2", "status": "Rejected",
                       "reason": "blurry"}, project="p9", batch="b1")  # fmt: skip
    assert nested is not None and nested["status"] == "error"
    assert nested["response"] == {"error": "blurry"}
    assert nested["task"]["metadata"]["external_id"] == "e2"
    assert snapshot({"task_id": "", "status": "Completed"}, project="p9", batch="b1") is None
