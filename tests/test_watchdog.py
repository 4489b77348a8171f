"""The watchdog over HTTP on both backends: registering expected callbacks (checked, and
idempotent), listing and cancelling them, a real signed callback clearing one, a deadline
passing (one ``task.late`` however often the sweep runs or however many replicas run it,
posted by the alerts plugin), and unique_id expectations."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from receiver.app import TaskhookApp
from receiver.events import Event
from receiver.registry import HandlerRegistry
from receiver.signals import Signal
from tests.conftest import BACKENDS, READ_KEY, AppFactory, client_for, signed
from tests.test_alerts import Clock, Inbox, job, webhook

EDIT_KEY = "edit-key"
KEYS = {"keys": {
    "editor": {"key": EDIT_KEY, "scopes": ["task.edit", "tasks.read"]},
    "reader": {"key": READ_KEY, "scopes": ["tasks.read"]},
    "deliveries": {"key": "deliveries-key", "scopes": ["deliveries.read"]},
}}  # fmt: skip
EDIT = {"authorization": f"Bearer {EDIT_KEY}"}
READ = {"authorization": f"Bearer {READ_KEY}"}
SWEEP = "watchdog.sweep"


@pytest.fixture
def inbox() -> Iterator[tuple[Inbox, str]]:
    with webhook() as served:
        yield served


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


def watching(build_app: AppFactory, clock: Clock | None = None, **more: Any) -> TaskhookApp:
    # The watchdog before the ledger: the ledger's `POST /v1/tasks/{action}` would take
    # `POST /v1/tasks/expected` otherwise (see test_registration_with_the_ledger_loaded_first).
    handlers = more.pop("handlers", ["handlers.watchdog", "handlers.ledger"])
    app: TaskhookApp = build_app(clock=clock, handlers=handlers, api=KEYS, **more)
    return app


def callback(
    task_id: str, status: str = "completed", *, updated: str = "2026-11-20T11:00:00Z",
    unique_id: str | None = None,
) -> dict[str, Any]:  # fmt: skip
    task: dict[str, Any] = {
        "task_id": task_id, "status": status, "type": "imageannotation", "project": "kittens",
        "created_at": "2026-11-20T09:00:00Z", "updated_at": updated,
        "params": {"attachment": f"https://example.com/{task_id}.jpg"},
    }  # fmt: skip
    if status == "completed":
        task |= {"completed_at": updated, "response": {"boxes": [1]}}
    if unique_id is not None:
        task["unique_id"] = unique_id
    return {"task_id": task_id, "status": status, "response": task.get("response"), "task": task}


async def deliver(client: httpx.AsyncClient, app: TaskhookApp, body: dict[str, Any]) -> str:
    answer = await client.post("/callbacks/refonte", json=body, headers=signed())
    assert answer.status_code == 200, answer.text
    await app.dispatcher.drain()
    delivery_id: str = answer.json()["delivery_id"]
    return delivery_id


async def expect(client: httpx.AsyncClient, status: int = 201, **body: Any) -> list[Any]:
    answer = await client.post("/v1/tasks/expected", json={"source": "refonte", **body},
                               headers=EDIT)  # fmt: skip
    assert answer.status_code == status, answer.text
    rows: list[Any] = answer.json()["expected"]
    return rows


async def one(client: httpx.AsyncClient, expectation_id: str) -> dict[str, Any]:
    answer = await client.get(f"/v1/tasks/expected/{expectation_id}", headers=READ)
    assert answer.status_code == 200, answer.text
    found: dict[str, Any] = answer.json()
    return found


async def test_register_list_page_and_cancel(build_app: AppFactory) -> None:
    app = watching(build_app)
    async with app.started(), client_for(app) as client:
        rows = await expect(client, tasks=[{"task_id": "t1"}, {"task_id": "t2"},
                                           {"unique_id": "u1"}],
                            within_seconds=3600, note="batch 12")  # fmt: skip
        assert [(r["task_id"], r["unique_id"], r["state"]) for r in rows] == [
            ("t1", None, "waiting"), ("t2", None, "waiting"), (None, "u1", "waiting"),
        ]  # fmt: skip
        assert {r["registered_by"] for r in rows} == {"editor"}
        assert {r["note"] for r in rows} == {"batch 12"}

        # Registering an open one again moves its deadline: the same row.
        later = (datetime.now(UTC) + timedelta(days=2)).replace(microsecond=0)
        stamp = later.isoformat().replace("+00:00", "Z")
        [again] = await expect(client, task_id="t1", deadline=stamp)
        assert again["id"] == rows[0]["id"] and again["deadline"] == stamp
        assert again["note"] == "batch 12"

        listed = (await client.get("/v1/tasks/expected", headers=READ)).json()
        assert listed["total"] == 3 and not listed["has_more"]
        assert [d["task_id"] or d["unique_id"] for d in listed["docs"]] == ["t2", "u1", "t1"]
        first = (await client.get("/v1/tasks/expected?state=waiting&limit=2",
                                  headers=READ)).json()  # fmt: skip
        assert len(first["docs"]) == 2 and first["has_more"] and first["total"] == 3
        rest = (await client.get("/v1/tasks/expected", headers=READ, params={
            "state": "waiting", "limit": 2, "next_token": first["next_token"]})).json()  # fmt: skip
        assert [d["task_id"] for d in rest["docs"]] == ["t1"] and rest["next_token"] is None

        cancelled = await client.delete(f"/v1/tasks/expected/{rows[1]['id']}", headers=EDIT)
        assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled"
        twice = await client.delete(f"/v1/tasks/expected/{rows[1]['id']}", headers=EDIT)
        assert twice.status_code == 200 and twice.json()["state"] == "cancelled"
        # A cancelled expectation is closed: registering the task again opens a new one.
        [anew] = await expect(client, task_id="t2", within_seconds=60)
        assert anew["id"] != rows[1]["id"] and anew["state"] == "waiting"

        for bad, why in (({"state": "late"}, "state must be"), ({"limit": "0"}, "limit"),
                         ({"next_token": "%%%"}, "next_token")):  # fmt: skip
            refused = await client.get("/v1/tasks/expected", params=bad, headers=READ)
            assert refused.status_code == 400 and why in refused.json()["error"]
        missing = await client.get("/v1/tasks/expected/exp_nope", headers=READ)
        assert missing.status_code == 404
        assert (await client.delete("/v1/tasks/expected/exp_nope", headers=EDIT)).status_code == 404


REFUSED = [
    ({"source": "nope", "task_id": "t", "within_seconds": 60}, "unknown source 'nope'"),
    ({"within_seconds": 60}, "name what is expected"),
    ({"tasks": [{"task_id": "a", "unique_id": "b"}], "within_seconds": 60}, "exactly one of"),
    ({"tasks": [], "within_seconds": 60}, "at least 1"),
    ({"tasks": [{"task_id": f"t{n}"} for n in range(1001)], "within_seconds": 60},
     "at most 1000"),
    ({"task_id": "t", "deadline": "2020-01-01T00:00:00Z"}, "in the past"),
    ({"task_id": "t", "deadline": "2030-01-01T00:00:00"}, "timezone"),
    ({"task_id": "t"}, "exactly one of deadline and within_seconds"),
    ({"task_id": "t", "within_seconds": 60, "deadline": "2099-01-01T00:00:00Z"},
     "exactly one of deadline"),
    ({"task_id": "t", "within_seconds": -5}, "greater than 0"),
    ({"task_id": "t", "within_seconds": 60 * 86400 * 366}, "less than or equal"),
    ({"task_id": "t", "within_seconds": 60, "colour": "red"}, "colour"),
]  # fmt: skip


@pytest.mark.parametrize("backend", ["sqlite"])
async def test_a_bad_registration_is_refused_with_its_reason(build_app: AppFactory) -> None:
    app = watching(build_app)
    async with app.started(), client_for(app) as client:
        for body, why in REFUSED:
            doc = {"source": "refonte", **body}
            answer = await client.post("/v1/tasks/expected", json=doc, headers=EDIT)
            assert answer.status_code == 400, (body, answer.text)
            assert why in answer.json()["error"], (why, answer.json())
        garbage = await client.post("/v1/tasks/expected", content=b"{not json", headers=EDIT)
        assert garbage.status_code == 400 and "JSON" in garbage.json()["error"]
        fine = {"source": "refonte", "task_id": "t", "within_seconds": 60}
        anonymous = await client.post("/v1/tasks/expected", json=fine)
        assert anonymous.status_code == 401
        reader = await client.post("/v1/tasks/expected", json=fine, headers=READ)
        assert reader.status_code == 403 and "task.edit" in reader.json()["error"]
        other = {"authorization": "Bearer deliveries-key"}
        assert (await client.get("/v1/tasks/expected", headers=other)).status_code == 403
        listed = (await client.get("/v1/tasks/expected", headers=READ)).json()
    assert listed["total"] == 0  # nothing refused was registered, not even in part


async def test_a_callback_that_means_something_clears_its_expectation(
    build_app: AppFactory,
) -> None:
    app = watching(build_app)
    async with app.started(), client_for(app) as client:
        t1, t2 = await expect(client, tasks=[{"task_id": "t1"}, {"task_id": "t2"}],
                              within_seconds=3600)  # fmt: skip
        # A pending snapshot yields no event: not the callback anyone waits for.
        await deliver(client, app, callback("t1", "pending", updated="2026-11-20T10:00:00Z"))
        assert (await one(client, t1["id"]))["state"] == "waiting"
        delivery_id = await deliver(client, app, callback("t1"))
        cleared = await one(client, t1["id"])
        assert cleared["state"] == "arrived" and cleared["arrived_delivery_id"] == delivery_id
        stored = await client.get(f"/v1/deliveries/{delivery_id}",
                                  headers={"authorization": "Bearer deliveries-key"})  # fmt: skip
        assert (stored.json()["status"], stored.json()["attempts"]) == ("processed", 1)
        assert (await one(client, t2["id"]))["state"] == "waiting"

        # The dispatcher may run a handler again: nothing changes the second time.
        [event] = await app.storage.load_events(delivery_id)
        handler = next(h for h in app.registry.handlers if h.name == "builtin.watchdog")
        await handler.func(Event.model_validate_json(event.payload_json))  # type: ignore[misc]
        assert await one(client, t1["id"]) == cleared

        refused = await client.delete(f"/v1/tasks/expected/{t1['id']}", headers=EDIT)
        assert refused.status_code == 409 and refused.json()["state"] == "arrived"


async def test_the_handler_runs_only_for_sources_with_open_expectations(
    build_app: AppFactory,
) -> None:
    first, second = watching(build_app), watching(build_app)  # two replicas, one database
    async with (
        first.started(),
        second.started(),
        client_for(first) as at_first,
        client_for(second) as at_second,
    ):
        # Nothing expected: the watchdog costs an event nothing (no run, nothing recorded).
        quiet = await deliver(at_first, first, callback("t0"))
        [stored] = await first.storage.load_events(quiet)
        assert await first.storage.succeeded_runs([stored.event_id]) == set()
        # Registered on the other replica: this one hears of it within one refresh.
        [t1] = await expect(at_second, task_id="t1", within_seconds=3600)
        handler = next(h for h in first.registry.handlers if h.name == "builtin.watchdog")
        event = Event.model_validate_json(stored.payload_json)
        assert not handler.wants(event)
        await job(first, "watchdog.watched")()
        assert handler.wants(event)
        arrived = await deliver(at_first, first, callback("t1"))
        cleared = await one(at_first, t1["id"])
        assert (cleared["state"], cleared["arrived_delivery_id"]) == ("arrived", arrived)


async def test_a_callback_that_came_before_registration_marks_it_arrived_at_once(
    build_app: AppFactory,
) -> None:
    app = watching(build_app)
    async with app.started(), client_for(app) as client:
        done = await deliver(client, app, callback("t3"))
        await deliver(client, app, callback("t4", "pending"))
        t3, t4 = await expect(client, tasks=[{"task_id": "t3"}, {"task_id": "t4"}],
                              within_seconds=60)  # fmt: skip
    assert (t3["state"], t3["arrived_delivery_id"]) == ("arrived", done)
    assert (t4["state"], t4["arrived_delivery_id"]) == ("waiting", None)


async def test_a_unique_id_expectation_is_cleared_by_the_task_that_names_it(
    build_app: AppFactory,
) -> None:
    app = watching(build_app)
    async with app.started(), client_for(app) as client:
        [row] = await expect(client, unique_id="u-7", within_seconds=3600)
        await deliver(client, app, callback("t8", unique_id="u-other"))
        assert (await one(client, row["id"]))["state"] == "waiting"
        delivery_id = await deliver(client, app, callback("t9", unique_id="u-7"))
        cleared = await one(client, row["id"])
    assert cleared["state"] == "arrived" and cleared["task_id"] == "t9"
    assert cleared["arrived_delivery_id"] == delivery_id


def hearing(heard: list[Signal]) -> Any:
    def setup(registry: HandlerRegistry) -> None:
        registry.on_signal(heard.append)

    return setup


async def test_a_passed_deadline_raises_one_task_late_alert(
    build_app: AppFactory, inbox: tuple[Inbox, str]
) -> None:
    box, url = inbox
    clock, heard = Clock(), []
    app = watching(build_app, clock, setup=hearing(heard),
                   handlers=["handlers.watchdog", "handlers.ledger", "handlers.alerts"],
                   alerts={"url": url, "format": "json"})  # fmt: skip
    async with app.started(), client_for(app) as client:
        t1, u9 = await expect(client, tasks=[{"task_id": "t1"}, {"unique_id": "u-9"}],
                              within_seconds=60, note="nightly batch")  # fmt: skip
        [t2] = await expect(client, task_id="t2", within_seconds=600)
        await job(app, SWEEP)()
        assert heard == []  # nothing is late yet
        clock.now += 61
        await job(app, SWEEP)()
        await job(app, SWEEP)()  # once per expectation, however often the sweep runs
        assert sorted(s.key for s in heard) == ["refonte/t1", "refonte/unique:u-9"]
        late = (await client.get("/v1/tasks/expected?state=overdue", headers=READ)).json()
        assert {d["id"] for d in late["docs"]} == {t1["id"], u9["id"]}
        assert {d["reconcile"] for d in late["docs"]} == {
            "skipped: the source has no [reconcile] section",
            "skipped: no task id to ask for",
        }
        assert (await one(client, t2["id"]))["state"] == "waiting"
        # The late callback still clears it.
        await deliver(client, app, callback("t1"))
        assert (await one(client, t1["id"]))["state"] == "arrived"
    alerts = box.bodies()
    assert sorted(a["key"] for a in alerts) == ["refonte/t1", "refonte/unique:u-9"]
    t1_alert = next(a for a in alerts if a["key"] == "refonte/t1")
    assert t1_alert["type"] == "task.late" and t1_alert["link"] == "/ui/expected"
    assert "no callback for task t1 of refonte" in t1_alert["summary"]
    assert t1_alert["details"]["expectation_id"] == t1["id"]
    assert t1_alert["details"]["note"] == "nightly batch"


async def test_the_sweep_finds_a_callback_whose_events_the_handler_did_not_see(
    build_app: AppFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    from handlers.watchdog.store import Expectations

    clock, heard = Clock(), []
    app = watching(build_app, clock, setup=hearing(heard))
    async with app.started(), client_for(app) as client:
        [row] = await expect(client, task_id="t5", within_seconds=60)

        async def blind(self: Any, source: str, task_id: str) -> bool:
            return False  # as if the handler had not run yet

        monkeypatch.setattr(Expectations, "expecting_task", blind)
        delivery_id = await deliver(client, app, callback("t5"))
        assert (await one(client, row["id"]))["state"] == "waiting"
        clock.now += 61
        await job(app, SWEEP)()
        found = await one(client, row["id"])
    assert (found["state"], found["arrived_delivery_id"]) == ("arrived", delivery_id)
    assert heard == []


async def test_closed_expectations_are_forgotten_a_month_after_their_deadline(
    build_app: AppFactory,
) -> None:
    clock = Clock()
    app = watching(build_app, clock)
    async with app.started(), client_for(app) as client:
        done, kept = await expect(client, tasks=[{"task_id": "t1"}, {"task_id": "t2"}],
                                  within_seconds=60)  # fmt: skip
        await client.delete(f"/v1/tasks/expected/{done['id']}", headers=EDIT)
        clock.now += 29 * 86400
        await job(app, SWEEP)()
        assert (await one(client, done["id"]))["state"] == "cancelled"
        clock.now += 2 * 86400
        await job(app, SWEEP)()
        gone = await client.get(f"/v1/tasks/expected/{done['id']}", headers=READ)
        assert gone.status_code == 404
        assert (await one(client, kept["id"]))["state"] == "overdue"  # open: kept


@pytest.mark.parametrize("backend", ["postgres"])
async def test_replicas_sweeping_one_database_raise_task_late_once(
    build_app: AppFactory,
) -> None:
    clock, heard = Clock(), []
    first = watching(build_app, clock, setup=hearing(heard))
    second = watching(build_app, clock, setup=hearing(heard))
    async with first.started(), second.started(), client_for(first) as client:
        await expect(client, tasks=[{"task_id": f"t{n}"} for n in range(20)], within_seconds=60)
        clock.now += 61
        for _ in range(3):
            await asyncio.gather(job(first, SWEEP)(), job(second, SWEEP)())
        late = (await client.get("/v1/tasks/expected?state=overdue", headers=READ)).json()
    assert late["total"] == 20
    assert sorted(s.key for s in heard) == sorted(f"refonte/t{n}" for n in range(20))


@pytest.mark.parametrize("backend", ["sqlite"])
async def test_registration_with_the_ledger_loaded_first(build_app: AppFactory) -> None:
    app = watching(build_app, handlers=["handlers.ledger", "handlers.watchdog"])
    async with app.started(), client_for(app) as client:
        await expect(client, task_id="t1", within_seconds=60)


def test_the_plugin_registers_nothing_without_an_app() -> None:
    from handlers.watchdog import register

    registry = HandlerRegistry()
    register(registry)
    assert registry.handlers == () and registry.routes == () and registry.periodic == ()


async def test_watchdog_enabled_false_turns_it_off(build_app: AppFactory) -> None:
    app = watching(build_app, watchdog={"enabled": False})
    assert [h.name for h in app.registry.handlers] == []
    async with app.started(), client_for(app) as client:
        answer = await client.post("/v1/tasks/expected", json={}, headers=EDIT)
    assert answer.status_code in (404, 405)
