"""One task asked for from its vendor (`receiver.reconcile.targeted`) against fake vendor APIs
on 127.0.0.1: Refonte's ``GET /v1/task/{id}`` fed through the intake into the ledger, what
cannot be asked answering False without raising, a full pass for vendors without a per-task
endpoint, and the watchdog asking for an overdue task whose answer clears it."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from structlog.testing import capture_logs

from receiver.app import TaskhookApp
from receiver.reconcile.targeted import reconcile_one
from receiver.signals import Signal
from tests.conftest import BACKENDS, READ_KEY, SECRET, AppFactory, client_for
from tests.test_alerts import Clock, job
from tests.test_reconcile import clarifai_task, refonte_task
from tests.test_watchdog import EDIT, KEYS, hearing
from tests.vendors import Fake, clarifai_api, refonte_api, serving

API_KEY = "vendor-api-key"
FAST = {"backoff_base_seconds": 0.01, "backoff_max_seconds": 0.02, "max_retries": 1}
READ = {"authorization": f"Bearer {READ_KEY}"}


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


def refonte_with_one_task(fake: Fake) -> Starlette:
    """The fake Refonte API, plus ``GET /v1/task/{task_id}`` as the vendor's docs show it."""
    expected = "Basic " + base64.b64encode(f"{API_KEY}:".encode()).decode()

    async def one(request: Request) -> Response:
        if (failed := fake.note(request)) is not None:
            return failed
        if request.headers.get("authorization") != expected:
            return JSONResponse({"error": "unauthorized"}, 401)
        task = fake.tasks.get(request.path_params["task_id"])
        if task is None:
            return JSONResponse({"error": "Task not found"}, 404)
        return JSONResponse(task)

    listing = refonte_api(fake, API_KEY)
    return Starlette(routes=[*listing.routes, Route("/v1/task/{task_id}", one)])


@pytest.fixture
def vendor() -> Iterator[tuple[Fake, str]]:
    fake = Fake()
    with serving(refonte_with_one_task(fake)) as url:
        yield fake, url


def polled(build_app: AppFactory, url: str, **more: Any) -> TaskhookApp:
    app: TaskhookApp = build_app(
        api=KEYS,
        sources={
            "refonte": {"kind": "refonte", "verify": "header-token", "secrets": [SECRET],
                        "reconcile": {"base_url": url, "api_key": API_KEY, **FAST}},
            "plain": {"kind": "refonte", "verify": "none"},
        },
        **({"handlers": ["handlers.ledger"]} | more),
    )  # fmt: skip
    return app


def completed(task_id: str, at: str = "2026-11-20T11:00:00Z") -> dict[str, Any]:
    return refonte_task(task_id, "completed", at, completed_at=at, response={"boxes": [7]})


async def test_one_task_is_fed_through_the_intake_and_skipped_when_unchanged(
    build_app: AppFactory, vendor: tuple[Fake, str]
) -> None:
    fake, url = vendor
    fake.tasks = {"t1": completed("t1"), "t2": completed("t2")}
    app = polled(build_app, url)
    async with app.started(), client_for(app) as client:
        assert await app.reconcile_task("refonte", "t1") is True
        await app.dispatcher.drain()
        task = (await client.get("/v1/task/t1", headers=READ)).json()
        assert task["status"] == "completed" and task["response"] == {"boxes": [7]}
        assert "task.completed" in [h.get("event") for h in task["history"]]
        assert fake.paths() == ["/v1/task/t1"]  # that task only, not a listing
        stored = (await app.storage.list_deliveries(source="refonte", limit=10)).items
        assert [(d.task_id, d.reconciled) for d in stored] == [("t1", True)]
        assert stored[0].headers["x-taskhook-origin"] == "reconcile"

        # Asked again with nothing changed: the vendor is asked, nothing new is stored.
        assert await reconcile_one(app, "refonte", "t1") is True
        assert len((await app.storage.list_deliveries(source="refonte", limit=10)).items) == 1
        # Changed since: fed again, and the ledger follows.
        fake.tasks["t1"] = refonte_task("t1", "pending", "2026-11-21T09:00:00Z")
        assert await reconcile_one(app, "refonte", "t1") is True
        await app.dispatcher.drain()
        assert (await client.get("/v1/task/t1", headers=READ)).json()["status"] == "pending"


@pytest.mark.parametrize("backend", ["sqlite"])
async def test_what_cannot_be_asked_is_false_and_never_raises(
    build_app: AppFactory, vendor: tuple[Fake, str]
) -> None:
    fake, url = vendor
    app = polled(build_app, url)
    async with app.started():
        with capture_logs() as logs:
            assert await reconcile_one(app, "refonte", "missing") is False  # the vendor's 404
            assert await reconcile_one(app, "nope", "t1") is False  # no such source
            assert await reconcile_one(app, "plain", "t1") is False  # not polled
            fake.fail_next(503, times=5)
            assert await reconcile_one(app, "refonte", "t1") is False  # gave up retrying
        stored = (await app.storage.list_deliveries(limit=10)).items
    assert stored == []
    events = [entry["event"] for entry in logs]
    assert "targeted reconcile: the vendor does not know the task" in events
    assert events.count("targeted reconcile skipped: the source is not polled") == 2
    failed = next(e for e in logs if e["event"] == "targeted reconcile failed")
    assert "503" in failed["error"] and failed["task_id"] == "t1"


@pytest.mark.parametrize("backend", ["sqlite"])
async def test_a_vendor_without_a_per_task_endpoint_gets_one_full_pass(
    build_app: AppFactory,
) -> None:
    fake = Fake()
    fake.tasks = {"t1": clarifai_task("t1", 54001, "2026-11-20T10:00:00Z"),
                  "t2": clarifai_task("t2", 54002, "2026-11-20T10:01:00Z")}  # fmt: skip
    with serving(clarifai_api(fake, API_KEY)) as url:
        app = build_app(
            handlers=["handlers.ledger"],
            sources={"clarifai": {"kind": "clarifai", "reconcile": {
                "base_url": url, "api_key": API_KEY, "user_id": "me", "app_id": "pets",
                **FAST}}},
        )  # fmt: skip
        async with app.started(), client_for(app) as client:
            assert await app.reconcile_task("clarifai", "t2") is True
            await app.dispatcher.drain()
            t2 = (await client.get("/v1/task/t2", headers=READ)).json()
    assert t2["status"] == "completed"
    assert fake.paths() == ["/v2/users/me/apps/pets/tasks"]


async def test_an_overdue_task_is_asked_for_once_and_its_answer_clears_it(
    build_app: AppFactory, vendor: tuple[Fake, str]
) -> None:
    fake, url = vendor
    fake.tasks = {"t1": completed("t1")}  # done at the vendor; its callback never came
    clock, signals = Clock(), list[Signal]()
    app = polled(build_app, url, handlers=["handlers.watchdog", "handlers.ledger"],
                 clock=clock, setup=hearing(signals))  # fmt: skip
    async with app.started(), client_for(app) as client:
        made = await client.post("/v1/tasks/expected", headers=EDIT, json={
            "source": "refonte", "tasks": [{"task_id": "t1"}, {"task_id": "t404"}],
            "within_seconds": 60})  # fmt: skip
        t1, t404 = made.json()["expected"]
        clock.now += 61
        await job(app, "watchdog.sweep")()
        await job(app, "watchdog.sweep")()  # asked once: the second sweep asks nothing
        assert sorted(s.key for s in signals) == ["refonte/t1", "refonte/t404"]
        assert sorted(fake.paths()) == ["/v1/task/t1", "/v1/task/t404"]
        await app.dispatcher.drain()
        found = {
            e["id"]: e
            for e in (await client.get("/v1/tasks/expected", headers=READ)).json()["docs"]
        }
        task = (await client.get("/v1/task/t1", headers=READ)).json()
    cleared, unknown = found[t1["id"]], found[t404["id"]]
    assert (cleared["state"], cleared["reconcile"]) == ("arrived", "asked")
    assert cleared["reconciled_at"] is not None and cleared["arrived_delivery_id"]
    assert task["status"] == "completed"
    assert (unknown["state"], unknown["reconcile"]) == ("overdue", "failed")
