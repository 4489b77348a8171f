"""Snapshots shaped as the vendor's own published callback examples, end to end to a ledger
query. The facts come from its public documentation (an audited task whose audits list the
newest first and whose `customer_review_status` says `fixed`; a fix carrying
`prior_responses`; examples without `updated_at`); the fixtures are written here."""

from __future__ import annotations

import json
from typing import Any

import pytest

from receiver.events import Event
from tests.conftest import BACKENDS, AppFactory, client_for
from tests.test_ledger import READ, ledger_app, post

TASK = "5f127f6f26831d0010e985e5"


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


def published(**task: Any) -> bytes:
    """A completed image-annotation callback as the documentation shows one."""
    body = {
        "task_id": TASK,
        "status": "completed",
        "response": {"annotations": [{"label": "car", "left": 1, "top": 2}]},
        "task": {
            "task_id": TASK, "type": "imageannotation", "status": "completed",
            "created_at": "2020-07-18T04:55:43.183Z", "completed_at": "2020-07-18T05:01:07.042Z",
            "project": "kitten_project", "callback_url": "https://example.com/callback",
            "params": {"attachment": "https://example.com/kitten.png"},
            "response": {"annotations": [{"label": "car", "left": 1, "top": 2}]},
            "metadata": {},
        } | task,
    }  # fmt: skip
    return json.dumps(body).encode()


AUDITS_NEWEST_FIRST = [
    {"audited_by": "customer@example.com", "audited_at": "2020-07-19T10:00:00.000Z",
     "audit_result": "fixed", "audit_source": "customer"},
    {"audited_by": "reviewer@example.com", "audited_at": "2020-07-19T11:30:00.000Z",
     "audit_result": "accepted", "audit_source": "customer"},
]  # fmt: skip


async def test_the_vendors_review_status_wins_over_the_audits(build_app: AppFactory) -> None:
    app = ledger_app(build_app)
    async with app.started(), client_for(app) as client:
        await post(client, published(customer_review_status="fixed", audits=AUDITS_NEWEST_FIRST))
        await app.dispatcher.drain()
        task = (await client.get(f"/v1/task/{TASK}", headers=READ)).json()
        fixed = (await client.get("/v1/tasks?customer_review_status=fixed", headers=READ)).json()
    assert task["customer_review_status"] == "fixed"
    assert [d["task_id"] for d in fixed["docs"]] == [TASK] and fixed["total"] == 1


async def test_a_fix_says_the_response_it_replaced(build_app: AppFactory) -> None:
    seen: list[Event] = []
    app = ledger_app(build_app, seen)
    before = {"annotations": [{"label": "truck", "left": 1, "top": 2}]}
    audit = {"audited_by": "customer@example.com", "audited_at": "2020-07-19T10:00:00.000Z",
             "audit_result": "fixed", "audit_source": "customer"}  # fmt: skip
    async with app.started(), client_for(app) as client:
        # The first word the ledger hears of this task is the fixed one.
        await post(client, published(audits=[audit], prior_responses=[before],
                                     customer_review_status="fixed"))  # fmt: skip
        await app.dispatcher.drain()
    (audited,) = [e for e in seen if e.name == "task.audited"]
    assert audited.payload["prior_response"] == before
    assert audited.payload["response"] == {"annotations": [{"label": "car", "left": 1, "top": 2}]}


async def test_a_recall_after_an_example_without_updated_at_is_applied(
    build_app: AppFactory,
) -> None:
    seen: list[Event] = []
    app = ledger_app(build_app, seen)
    recall = json.loads(published(status="pending", updated_at="2020-07-20T09:00:00.000Z"))
    recall["status"] = "pending"
    async with app.started(), client_for(app) as client:
        await post(client, published())  # as published: no updated_at
        await app.dispatcher.drain()
        await post(client, json.dumps(recall).encode())
        await app.dispatcher.drain()
        task = (await client.get(f"/v1/task/{TASK}", headers=READ)).json()
    assert task["status"] == "pending"
    assert [e.name for e in seen] == ["task.completed", "task.recalled"]
    assert not [h for h in task["history"] if h["kind"] == "stale"]
