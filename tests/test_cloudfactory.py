"""CloudFactory Throughput (seed 003): its wire format → intake → event → throughput ledger."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from receiver.app import TaskhookApp
from tests.conftest import BACKENDS, READ_KEY, SAMPLES, AppFactory, client_for


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


WS = "ws-7"
KEY = "loAwlMCCxv4TlpLWR8a2e6"
USE_CASE = "305ea07b-1d24-4f8f-8e1d-aae27cb07840"
TASK_DEF = "4ed59e6b-bf4b-4f33-a1dc-4015d63eef59"
READ = {"authorization": f"Bearer {READ_KEY}"}
PATH = f"/v1/workstreams/{WS}/task_completed"


def record(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(
        (SAMPLES / "cloudfactory" / "task_completed.json").read_text()
    )
    for key, value in changes.items():
        if value is None:
            body.pop(key, None)
        else:
            body[key] = value
    return body


def cf_app(build_app: AppFactory) -> TaskhookApp:
    return build_app(
        handlers=["handlers.throughput"],
        sources={
            "cloudfactory": {
                "kind": "cloudfactory", "verify": "header-token", "secrets": [KEY],
                "workstream_id": WS, "use_case_ids": [USE_CASE],
                "task_definition_ids": [TASK_DEF],
            }
        },
    )  # fmt: skip


async def send(client: httpx.AsyncClient, body: Any, key: str = KEY) -> httpx.Response:
    return await client.post(PATH, content=json.dumps(body), headers={
        "x-api-key": key, "content-type": "application/json"})  # fmt: skip


async def test_the_seed_example_is_received_and_reported(build_app: AppFactory) -> None:
    app = cf_app(build_app)
    async with app.started(), client_for(app) as client:
        response = await send(client, record())
        assert response.status_code == 202
        assert response.json() == {"message": "Data successfully received."}
        await app.dispatcher.drain()
        report = (await client.get("/v1/throughput", headers=READ)).json()
    assert report["rows"] == [{
        "worker_id": "worker@example.com", "use_case_id": USE_CASE, "day": "2020-12-22",
        "tasks": 10.0, "subtasks": 10.0, "duration_seconds": 3600.0, "records": 1,
    }]  # fmt: skip


async def test_defaults_duration_and_task_count(build_app: AppFactory) -> None:
    app = cf_app(build_app)
    async with app.started(), client_for(app) as client:
        body = record(duration=None, task_count=None, subtask_count=None, unique_id="u-2",
                      task_started_at="2020-12-22T09:00:00Z",
                      task_completed_at="2020-12-22T09:30:00Z")  # fmt: skip
        assert (await send(client, body)).status_code == 202
        await app.dispatcher.drain()
        row = (await client.get("/v1/throughput", headers=READ)).json()["rows"][0]
    assert (row["tasks"], row["subtasks"], row["duration_seconds"]) == (1.0, 0.0, 1800.0)


@pytest.mark.parametrize(
    ("changes", "fields"),
    [
        ({"worker_id": None, "use_case_id": None},
         {"worker_id", "use_case_id"}),
        ({"task_started_at": "yesterday", "data_source": "fax"},
         {"task_started_at", "data_source"}),
        ({"use_case_id": "not-ours"}, {"use_case_id"}),
        ({"task_definition_id": "not-ours"}, {"task_definition_id"}),
    ],
)  # fmt: skip
async def test_invalid_bodies_name_each_bad_field(
    build_app: AppFactory, changes: dict[str, Any], fields: set[str]
) -> None:
    app = cf_app(build_app)
    async with app.started(), client_for(app) as client:
        response = await send(client, record(**changes))
    assert response.status_code == 422
    assert {e["field"] for e in response.json()["errors"]} == fields


async def test_key_workstream_and_json_errors(build_app: AppFactory) -> None:
    app = cf_app(build_app)
    async with app.started(), client_for(app) as client:
        wrong_key = await send(client, record(), key="nope")
        unknown = await client.post("/v1/workstreams/other/task_completed", json=record(),
                                    headers={"x-api-key": KEY})  # fmt: skip
        broken = await client.post(PATH, content=b"{oops", headers={"x-api-key": KEY})
    assert wrong_key.status_code == 401
    assert unknown.status_code == 404
    assert broken.status_code == 400 and "not valid JSON" in broken.json()["message"]


async def test_unique_id_replaces_only_when_asked(build_app: AppFactory) -> None:
    app = cf_app(build_app)
    async with app.started(), client_for(app) as client:
        await send(client, record(unique_id="u-1", task_count=1))
        await send(client, record(unique_id="u-1", task_count=5, replace_duplicate=False))
        await app.dispatcher.drain()
        kept = (await client.get("/v1/throughput", headers=READ)).json()["rows"][0]["tasks"]
        await send(client, record(unique_id="u-1", task_count=7, replace_duplicate=True))
        await app.dispatcher.drain()
        rows = (await client.get("/v1/throughput", headers=READ)).json()["rows"]
    assert kept == 1.0
    assert [(r["tasks"], r["records"]) for r in rows] == [(7.0, 1)]


async def test_report_filters(build_app: AppFactory, tmp_path: Path) -> None:
    app = cf_app(build_app)
    async with app.started(), client_for(app) as client:
        await send(client, record(unique_id="a", worker_id="ann@x"))
        await send(client, record(unique_id="b", worker_id="bob@x",
                                  task_completed_at="2020-12-23T10:00:00Z"))  # fmt: skip
        await app.dispatcher.drain()
        ann = (await client.get("/v1/throughput?worker_id=ann@x", headers=READ)).json()
        later = (await client.get("/v1/throughput?since=2020-12-23", headers=READ)).json()
        denied = await client.get("/v1/throughput")
    assert [r["worker_id"] for r in ann["rows"]] == ["ann@x"]
    assert [r["day"] for r in later["rows"]] == ["2020-12-23"]
    assert denied.status_code == 401
