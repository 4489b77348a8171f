"""The official Scale Python SDK (`scaleapi`, seed 001's API) against a live `taskhook serve`.

Code a team already wrote against the vendor points at its own ledger by changing one URL:
`ScaleClient(key, api_instance_url="http://…/v1")`. Authenticated as the SDK does it (HTTP
basic, the key as user name), every read call and every filter the SDK's `tasks()` and
`get_tasks()` take answer from the ledger what the vendor would answer.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import scaleapi
from scaleapi.exceptions import ScaleException
from scaleapi.tasks import TaskReviewStatus, TaskStatus

from tests.test_cli import free_port
from tests.test_crash import start, stop

KEY = "sdk-key-0123456789"
SAMPLE = Path(__file__).resolve().parents[1] / "samples" / "refonte" / "01-completed.json"


def snapshot(n: int, **task: Any) -> bytes:
    """A completed task callback: task n of project p<n % 2>, created on day n."""
    body = json.loads(SAMPLE.read_text())
    body["task"].update({
        "task_id": f"sdk{n:021d}", "project": f"p{n % 2}", "batch": f"b{n % 3}",
        "type": "imageannotation", "created_at": f"2024-03-{n + 1:02d}T10:00:00.000Z",
        "updated_at": f"2024-03-{n + 1:02d}T12:00:00.000Z",
        "completed_at": f"2024-03-{n + 1:02d}T11:00:00.000Z", "unique_id": f"u-{n}",
        "tags": [f"t{n % 2}", "all"],
    } | task)  # fmt: skip
    body["task_id"] = body["task"]["task_id"]
    return json.dumps(body).encode()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[str]:
    config = tmp_path / "taskhook.toml"
    config.write_text(
        'entry_points = false\nhandlers = ["handlers.ledger"]\n'
        f'[database]\nurl = "sqlite:///{tmp_path / "sdk.db"}"\n'
        '[sources.refonte]\nkind = "refonte"\nverify = "none"\n'
        f'[api.keys.sdk]\nkey = "{KEY}"\nscopes = ["tasks.read", "deliveries.read"]\n'
        "[dispatch]\npoll_interval_seconds = 0.05\n"
    )
    port = free_port()
    proc = start(config, port, tmp_path / "serve.log")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        stop(proc)


def send(base: str, *bodies: bytes) -> None:
    """POST callbacks, then wait until the dispatcher has applied every one."""
    bearer = {"authorization": f"Bearer {KEY}"}  # (basic is for the vendor's routes only)
    with httpx.Client(base_url=base, headers=bearer) as client:
        for body in bodies:
            answer = client.post("/callbacks/refonte", content=body)
            assert answer.status_code == 200, answer.text
        for _ in range(600):
            pending = client.get("/v1/deliveries", params={"status": "received", "limit": 1})
            if pending.json()["total"] == 0:
                return
            time.sleep(0.02)
    raise AssertionError("the dispatcher did not apply the callbacks")


def ids(tasks: Any) -> set[str]:
    return {t.id for t in tasks}


def test_the_official_sdk_reads_the_ledger(server: str) -> None:
    audit = {"audited_by": "qa@x", "audited_at": "2024-03-04T13:00:00.000Z",
             "audit_result": "fixed"}  # fmt: skip
    audited = {"audits": [audit], "customer_review_status": "fixed"}
    send(server, *(snapshot(n) for n in range(6)), snapshot(3, **audited))
    client = scaleapi.ScaleClient(KEY, api_instance_url=f"{server}/v1")

    task = client.get_task(f"sdk{2:021d}")
    assert (task.status, task.project, task.unique_id) == ("completed", "p0", "u-2")
    task.refresh()
    assert task.id == f"sdk{2:021d}"

    every = list(client.get_tasks(project_name="p0"))
    assert ids(every) == {f"sdk{n:021d}" for n in (0, 2, 4)}
    assert client.get_tasks_count(project_name="p0") == 3
    page = client.tasks(project="p1", limit=2)
    assert (len(page.docs), page.total, page.limit, page.offset, page.has_more) == (
        2,
        3,
        2,
        0,
        True,
    )
    second = client.tasks(project="p1", limit=2, next_token=page.next_token)
    assert (len(second.docs), second.offset, second.has_more) == (1, 2, False)

    filtered = {
        "status": TaskStatus.Completed,
        "review_status": [TaskReviewStatus.Fixed, TaskReviewStatus.Accepted],
        "unique_id": ["u-3", "u-5"],
        "tags": ["t1"],
        "completed_after": "2024-03-02 00:00:00.000000",
        "completed_before": "2024-03-06 00:00:00.000000",
        "updated_after": "2024-03-01 00:00:00.000000",
        "updated_before": "2024-03-31 00:00:00.000000",
        "created_after": "2024-03-02 00:00:00.000000",
        "created_before": "2024-03-30 00:00:00.000000",
    }
    assert ids(client.get_tasks(project_name="p1", **filtered)) == {f"sdk{3:021d}"}
    assert client.get_tasks_count(project_name="p1", **filtered) == 1
    # Each filter alone narrows (none is ignored).
    assert ids(client.get_tasks(project_name="p1", unique_id=["u-1", "u-5"])) == {
        f"sdk{1:021d}", f"sdk{5:021d}"}  # fmt: skip
    assert ids(client.get_tasks(project_name="p0", tags="t1")) == set()
    assert ids(client.get_tasks(project_name="p1", completed_before="2024-03-03 00:00:00")) == {
        f"sdk{1:021d}"}  # fmt: skip
    assert ids(client.get_tasks(project_name="p1", updated_before="2024-03-03 00:00:00")) == {
        f"sdk{1:021d}"}  # fmt: skip
    assert ids(client.get_tasks(batch_name="b0", created_before="2024-03-02 00:00:00")) == {
        f"sdk{0:021d}"}  # fmt: skip
    assert ids(client.get_tasks(project_name="p1", review_status=TaskReviewStatus.Fixed)) == {
        f"sdk{3:021d}"}  # fmt: skip


def test_paging_holds_while_tasks_arrive(server: str) -> None:
    send(server, *(snapshot(n) for n in range(8)))
    client = scaleapi.ScaleClient(KEY, api_instance_url=f"{server}/v1")
    seen: list[str] = []
    for i, task in enumerate(client.get_tasks(project_name="p0", limit=1)):
        seen.append(task.id)
        if i == 0:  # newer tasks arriving meanwhile come before the cursor: no repeat, no gap
            send(server, snapshot(20), snapshot(22))
    assert seen == [f"sdk{n:021d}" for n in (6, 4, 2, 0)]
    assert client.get_tasks_count(project_name="p0") == 6


def test_the_sdk_is_told_what_is_wrong(server: str) -> None:
    with pytest.raises(ScaleException):
        scaleapi.ScaleClient("not-a-key", api_instance_url=f"{server}/v1").get_tasks_count(
            project_name="p0"
        )
    answer = httpx.get(f"{server}/v1/tasks", params={"projekt": "p0"}, auth=(KEY, ""))
    assert answer.status_code == 400 and "'projekt'" in answer.json()["error"]
    wrong = httpx.get(f"{server}/v1/tasks", auth=(KEY, "a-password"))
    assert wrong.status_code == 401 and "password is empty" in wrong.json()["error"]
