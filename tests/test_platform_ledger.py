"""Labelbox and Label Studio deliveries, from their own wire format to a ledger query: the
data row / task as the ledger applied it (`GET /v1/task/{id}`, `/v1/tasks?project=`), and
the ledger's events for it."""

from __future__ import annotations

import pytest

from receiver.events import Event
from receiver.registry import HandlerRegistry
from tests.conftest import BACKENDS, AppFactory, client_for
from tests.test_label_studio import SOURCE as LS_SOURCE
from tests.test_label_studio import post as ls_post
from tests.test_labelbox import DATA_ROW, ROTATED, SOURCES
from tests.test_labelbox import post as lb_post
from tests.test_ledger import READ


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


def collecting(seen: list[Event]) -> object:
    def setup(registry: HandlerRegistry) -> None:
        registry.on_any(seen.append, name="seen")

    return setup


async def test_a_labelbox_data_row_in_the_ledger(build_app: AppFactory) -> None:
    seen: list[Event] = []
    app = build_app(setup=collecting(seen), sources=SOURCES, handlers=["handlers.ledger"])
    async with app.started(), client_for(app) as client:
        await lb_post(client, "label_created.v1.json", "LABEL_CREATED")
        await app.dispatcher.drain()
        first = (await client.get(f"/v1/task/{DATA_ROW}", headers=READ)).json()
        await lb_post(client, "label_updated.v1.json", "LABEL_UPDATED", secret=ROTATED)
        await lb_post(client, "review_created.json", "REVIEW_CREATED")
        await app.dispatcher.drain()
        task = (await client.get(f"/v1/task/{DATA_ROW}", headers=READ)).json()
        listed = (await client.get(f"/v1/tasks?project={task['project']}&type=labelbox",
                                   headers=READ)).json()  # fmt: skip
    assert (first["status"], first["type"]) == ("completed", "labelbox")
    assert first["response"]["objects"][0]["bbox"]["width"] == 519
    assert task["response"]["objects"][0]["bbox"]["width"] == 522  # the update applied
    assert [d["task_id"] for d in listed["docs"]] == [DATA_ROW] and listed["total"] == 1
    row = [e.name for e in seen if e.task_id == DATA_ROW]
    assert row == ["task.completed", "task.updated"]
    assert [e.name for e in seen if e.task_id is None] == ["labelbox.review_created"]


async def test_a_label_studio_task_in_the_ledger(build_app: AppFactory) -> None:
    seen: list[Event] = []
    app = build_app(setup=collecting(seen), sources={"ls": LS_SOURCE}, handlers=["handlers.ledger"])
    async with app.started(), client_for(app) as client:
        for name in ("01-tasks_created.json", "02-annotation_created.json",
                     "03-annotation_updated.json", "04-annotation_skipped.json",
                     "05-annotations_created.json"):  # fmt: skip
            assert (await ls_post(client, name)).status_code == 200
        await app.dispatcher.drain()
        task = (await client.get("/v1/task/22", headers=READ)).json()
        bulk = (await client.get("/v1/tasks?type=label-studio", headers=READ)).json()
    assert (task["status"], task["type"], task["project"]) == ("completed", "label-studio", "2")
    assert task["response"][0]["from_name"] == "answer"
    assert {d["task_id"] for d in bulk["docs"]} == {"21", "22", "23"}
    assert [e.name for e in seen if e.task_id == "22"] == ["task.completed", "task.updated"]
    # A skipped task's annotation is no state: a generic event, no task in the ledger.
    assert ("label-studio.annotation_created", "21") in {(e.name, e.task_id) for e in seen}
