"""Document-review lifecycle (seed 004): callbacks and operator actions under one set of rules."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from handlers.ledger.review import action_target, check
from receiver.app import TaskhookApp
from receiver.events import Event
from tests.conftest import BACKENDS, AppFactory, client_for


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


EDITOR = "editor-key"
READER = "reader-key"
AUTH_EDIT = {"authorization": f"Bearer {EDITOR}"}
AUTH_READ = {"authorization": f"Bearer {READER}"}


OPS = "ops-key"
AUTH_OPS = {"authorization": f"Bearer {OPS}"}


def review_app(
    build_app: AppFactory, seen: list[Event] | None = None, **overrides: Any
) -> TaskhookApp:
    """A document-review source, the ledger, an operator key named "editor", a reader, and
    an "ops" key that reads the deliveries inbox."""
    return build_app(
        setup=(lambda r: r.on_any(seen.append, name="collect")) if seen is not None else None,
        handlers=["handlers.ledger"],
        sources={"docs": {"kind": "document-review", "verify": "none"}},
        api={"keys": {"editor": {"key": EDITOR, "scopes": ["task.read", "task.edit"]},
                      "reader": {"key": READER, "scopes": ["task.read"]},
                      "ops": {"key": OPS, "scopes": ["deliveries.read", "tasks.read"]}}},
        **overrides,
    )  # fmt: skip


async def callback(client: httpx.AsyncClient, task_id: str, status: str, **extra: Any) -> str:
    """Post a document-review callback; the id of the delivery it was stored as."""
    body = {"task_id": task_id, "status": status, "project_id": "invoices"} | extra
    response = await client.post("/callbacks/docs", content=json.dumps(body),
                                 headers={"content-type": "application/json"})  # fmt: skip
    assert response.status_code == 200, response.text
    delivery_id: str = response.json()["delivery_id"]
    return delivery_id


@pytest.mark.parametrize(
    ("current", "target", "exported", "allowed"),
    [
        (None, "REVIEWING", False, True),
        ("PROCESSING", "REVIEWING", False, True),
        ("REVIEWING", "COMPLETED", False, True),
        ("PROCESSING", "COMPLETED", False, False),  # complete only from REVIEWING
        ("PROCESSING", "DISCARDED", False, False),  # discard only from REVIEWING
        ("COMPLETED", "REVIEWING", False, True),  # unlock a finalized task
        ("FILTERED", "REVIEWING", False, True),
        ("COMPLETED", "REVIEWING", True, False),  # ... unless it was exported
        ("FAILED", "REVIEWING", False, False),  # FAILED is not finalized
        ("COMPLETED", "PROCESSING", False, False),
    ],
)  # fmt: skip
def test_lifecycle_table(current: str | None, target: str, exported: bool, allowed: bool) -> None:
    assert check(current, target, exported=exported).allowed is allowed


def test_actions_name_why_they_are_refused() -> None:
    assert action_target("complete", "PROCESSING", exported=False)[1].reason == (
        "only a REVIEWING task can complete, not PROCESSING"
    )
    assert "finalized" in action_target("unlock", "REVIEWING", exported=False)[1].reason


async def test_callbacks_follow_the_lifecycle_and_reports_are_kept(build_app: AppFactory) -> None:
    seen: list[Event] = []
    app = review_app(build_app, seen)
    async with app.started(), client_for(app) as client:
        await callback(client, "doc-1", "PROCESSING")
        await callback(client, "doc-1", "COMPLETED", updated_at="t1")  # not REVIEWING yet
        await callback(client, "doc-1", "REVIEWING", report={"reason": "blurry scan"})
        await callback(client, "doc-1", "COMPLETED", updated_at="t3")
        await app.dispatcher.drain()
        task = (await client.get("/v1/task/doc-1", headers=AUTH_READ)).json()
    assert [e.name for e in seen] == [
        "task.processing", "task.reviewing", "task.reported", "task.completed"
    ]  # fmt: skip
    assert next(e for e in seen if e.name == "task.reported").payload["reason"] == "blurry scan"
    assert task["status"] == "COMPLETED"
    kinds = [h["kind"] for h in task["history"] if h["kind"] != "event"]
    assert kinds == ["applied", "rejected", "applied", "applied"]
    rejected = task["history"][2]["detail"]
    assert rejected["reason"] == "COMPLETED is not reachable from PROCESSING"


async def test_operator_actions_single_and_batch(build_app: AppFactory) -> None:
    app = review_app(build_app)
    async with app.started(), client_for(app) as client:
        await callback(client, "doc-1", "REVIEWING")
        await callback(client, "doc-2", "PROCESSING")
        await callback(client, "doc-3", "COMPLETED", exported=True)
        await app.dispatcher.drain()
        done = await client.post("/v1/task/doc-1/complete", headers=AUTH_EDIT)
        wrong = await client.post("/v1/task/doc-2/discard", headers=AUTH_EDIT)
        exported = await client.post("/v1/task/doc-3/unlock", headers=AUTH_EDIT)
        unknown = await client.post("/v1/task/nope/complete", headers=AUTH_EDIT)
        reported = await client.post("/v1/task/doc-2/report", json={"reason": "wrong language"},
                                     headers=AUTH_EDIT)  # fmt: skip
        readonly = await client.post("/v1/task/doc-1/unlock", headers=AUTH_READ)
        unlocked = await client.post("/v1/task/doc-1/unlock", headers=AUTH_EDIT)
        batch = await client.post("/v1/tasks/complete", headers=AUTH_EDIT,
                                  json={"task_ids": ["doc-1", "doc-2", "nope"]})  # fmt: skip
    assert (done.status_code, done.json()["status"]) == (200, "COMPLETED")
    assert wrong.status_code == 400 and "only a REVIEWING task" in wrong.json()["error"]
    assert exported.status_code == 400 and "exported" in exported.json()["error"]
    assert unknown.status_code == 404
    assert reported.status_code == 201
    assert readonly.status_code == 403
    assert (unlocked.status_code, unlocked.json()["status"]) == (200, "REVIEWING")
    assert batch.status_code == 207
    assert [(r["task_id"], r["status"]) for r in batch.json()["results"]] == [
        ("doc-1", 200), ("doc-2", 400), ("nope", 404)
    ]  # fmt: skip


async def test_a_bad_callback_is_quarantined_naming_the_field(build_app: AppFactory) -> None:
    app = review_app(build_app)
    async with app.started(), client_for(app) as client:
        response = await client.post("/callbacks/docs", json={"task_id": "x", "status": "DONE"})
    assert response.status_code == 400
    assert "status" in response.json()["reason"]


async def test_a_reason_that_is_not_text_is_a_clear_400(build_app: AppFactory) -> None:
    app = review_app(build_app)
    async with app.started(), client_for(app) as client:
        await callback(client, "doc-1", "REVIEWING")
        await app.dispatcher.drain()
        single = await client.post("/v1/task/doc-1/report", json={"reason": 123},
                                   headers=AUTH_EDIT)  # fmt: skip
        batch = await client.post("/v1/tasks/report", json={"task_ids": ["doc-1"],
                                  "reason": ["x"]}, headers=AUTH_EDIT)  # fmt: skip
    assert (single.status_code, single.json()["error"]) == (400, "body: reason must be a string")
    assert batch.status_code == 400
