"""The dispatcher: events to handlers, per-task order, retries, dead letters, resume."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest

from receiver.app import TaskhookApp
from receiver.events import Event
from receiver.registry import HandlerRegistry
from tests.conftest import BACKENDS, AppFactory, client_for, ops, sample, sample_json, signed


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


def snapshot(task_id: str, n: int, status: str = "completed") -> bytes:
    """A distinct, valid snapshot of `task_id`, version `n`."""
    body = sample_json("05-completed-before-audit.json")
    body["task_id"] = body["task"]["task_id"] = task_id
    body["status"] = body["task"]["status"] = status
    body["task"]["updated_at"] = f"2024-03-01T12:{n:02d}:00.000Z"
    return json.dumps(body).encode()


async def post(client: httpx.AsyncClient, body: bytes) -> dict[str, Any]:
    response = await client.post("/callbacks/refonte", content=body, headers=signed())
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


async def delivery_rows(app: TaskhookApp) -> list[tuple[str, str, int]]:
    """(id, status, attempts) of each original delivery, in receipt order (either backend)."""
    await app.storage.open()
    try:
        rows = await app.storage.scan_deliveries()
    finally:
        await app.storage.close()
    return [(d.id, d.status.value, d.attempts) for d in rows if d.duplicate_of is None]


async def test_events_reach_handlers_typed(build_app: AppFactory) -> None:
    seen: list[Event] = []
    app = build_app(setup=lambda r: r.on_any(seen.append, name="collect"))
    async with app.started(), client_for(app) as client:
        answer = await post(client, sample("01-completed.json"))
        await app.dispatcher.drain()
    assert [e.name for e in seen] == ["task.completed"]
    event = seen[0]
    assert event.task_id == "576c41bf13e36b0600b02b34"
    assert event.delivery_id == answer["delivery_id"]
    assert event.source == "refonte"
    assert event.payload["response"] == {"category": "red"}
    assert event.occurred_at.isoformat().startswith("2016-06-23T21:54:44")
    assert event.event_id.startswith("evt_")


async def test_snapshot_kinds_map_to_events(build_app: AppFactory) -> None:
    seen: list[Event] = []
    app = build_app(setup=lambda r: r.on_any(seen.append, name="collect"))
    async with app.started(), client_for(app) as client:
        for name in (
            "03-error-on-creation-clear-unique-id.json",
            "06-audit-accepted.json",
            "10-canceled-clear-unique-id.json",
            "08-recall-to-pending.json",
        ):
            await post(client, sample(name))
        await app.dispatcher.drain()
    names = [(e.name, e.task_id) for e in seen]
    assert ("task.errored", "6500aa01e4b0c1d2e3f40001") in names
    errored = next(e for e in seen if e.name == "task.errored")
    assert errored.payload["clear_unique_id_on_error"] is True
    assert errored.payload["error"] == "One or more attachments could not be downloaded."
    canceled = next(e for e in seen if e.name == "task.canceled")
    assert canceled.payload["clear_unique_id"] is True
    audits = [e for e in seen if e.name == "task.audited"]
    # 06 carries one audit, 08 repeats it and adds the fix: the repeated audit is one event.
    assert len(audits) == 2
    assert {e.payload["audit"]["audit_result"] for e in audits} == {"accepted", "fixed"}


async def test_a_task_is_handled_in_receipt_order_while_others_run(build_app: AppFactory) -> None:
    order: list[tuple[str, str]] = []
    a_running = asyncio.Event()
    release_a = asyncio.Event()

    async def handler(event: Event) -> None:
        if event.task_id == "task-a" and not a_running.is_set():
            a_running.set()
            await release_a.wait()  # task A's first delivery is slow
        order.append((event.task_id or "", event.payload["task"]["updated_at"]))

    app = build_app(
        setup=lambda r: r.on("task.completed", handler, name="ordered"),
        dispatch={"enabled": True, "concurrency": 8, "poll_interval_seconds": 0.05},
    )
    async with app.started(), client_for(app) as client:
        for n in range(5):
            await post(client, snapshot("task-a", n))
        await asyncio.wait_for(a_running.wait(), 5)
        for n in range(3):
            await post(client, snapshot("task-b", n))
        # Task B is not held up by task A's slow handler.
        for _ in range(200):
            if sum(1 for t, _ in order if t == "task-b") == 3:
                break
            await asyncio.sleep(0.01)
        assert [t for t, _ in order] == ["task-b"] * 3
        release_a.set()
        await app.dispatcher.drain()
    a_versions = [v for t, v in order if t == "task-a"]
    assert a_versions == sorted(a_versions) and len(a_versions) == 5


async def test_a_failing_handler_is_retried_then_succeeds(
    build_app: AppFactory,
) -> None:
    calls = 0

    def flaky(event: Event) -> None:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise RuntimeError("downstream timeout")

    app = build_app(
        setup=lambda r: r.on("task.completed", flaky, name="flaky"), dispatch={"max_attempts": 5}
    )
    async with app.started(), client_for(app) as client:
        await post(client, sample("01-completed.json"))
        await app.dispatcher.drain()
    assert calls == 3
    assert [(s, a) for _, s, a in await delivery_rows(build_app())] == [("processed", 3)]


async def test_retry_reruns_only_the_handlers_that_failed(build_app: AppFactory) -> None:
    calls = {"steady": 0, "flaky": 0}

    def steady(event: Event) -> None:
        calls["steady"] += 1

    def flaky(event: Event) -> None:
        calls["flaky"] += 1
        if calls["flaky"] == 1:
            raise RuntimeError("first time fails")

    def setup(r: HandlerRegistry) -> None:
        r.on("task.completed", steady, name="steady")
        r.on("task.completed", flaky, name="flaky")

    app = build_app(setup=setup)
    async with app.started(), client_for(app) as client:
        await post(client, sample("01-completed.json"))
        await app.dispatcher.drain()
    assert calls == {"steady": 1, "flaky": 2}


async def test_a_handler_that_keeps_failing_goes_dead_with_its_traceback(
    build_app: AppFactory,
) -> None:
    hooked: list[tuple[str, str, str]] = []

    def broken(event: Event) -> None:
        raise ValueError("cannot write to the warehouse")

    async def hook(event: Event, handler: str, exc: BaseException) -> None:
        hooked.append((event.name, handler, str(exc)))

    def setup(r: HandlerRegistry) -> None:
        r.on("task.completed", broken, name="warehouse")
        r.on_error(hook)

    app = build_app(setup=setup, dispatch={"max_attempts": 3})
    async with app.started(), client_for(app) as client:
        answer = await post(client, sample("01-completed.json"))
        await app.dispatcher.drain()
        shown = (await client.get(f"/v1/deliveries/{answer['delivery_id']}", headers=ops())).json()
        dead = (await client.get("/v1/deliveries?status=dead", headers=ops())).json()
    assert shown["status"] == "dead"
    assert shown["attempts"] == 3
    assert "warehouse" in shown["last_error"]
    assert "ValueError: cannot write to the warehouse" in shown["last_error"]
    assert 'raise ValueError("cannot write to the warehouse")' in shown["last_traceback"]
    assert [d["delivery_id"] for d in dead["docs"]] == [answer["delivery_id"]]
    assert hooked == [("task.completed", "warehouse", "cannot write to the warehouse")] * 3


async def test_retrying_a_dead_delivery_runs_it_again(build_app: AppFactory) -> None:
    fixed = False
    calls: list[str] = []

    def sometimes(event: Event) -> None:
        calls.append(event.event_id)
        if not fixed:
            raise RuntimeError("still broken")

    app = build_app(
        setup=lambda r: r.on("task.completed", sometimes, name="s"), dispatch={"max_attempts": 1}
    )
    async with app.started(), client_for(app) as client:
        answer = await post(client, sample("01-completed.json"))
        await app.dispatcher.drain()
        delivery_id = answer["delivery_id"]
        assert (await client.get(f"/v1/deliveries/{delivery_id}", headers=ops())).json()[
            "status"
        ] == "dead"
        fixed = True
        retried = await client.post(f"/v1/deliveries/{delivery_id}/retry", headers=ops())
        assert retried.status_code == 202
        await app.dispatcher.drain()
        shown = (await client.get(f"/v1/deliveries/{delivery_id}", headers=ops())).json()
        again = await client.post(f"/v1/deliveries/{delivery_id}/retry", headers=ops())
        missing = await client.post("/v1/deliveries/dlv_nope/retry", headers=ops())
    assert shown["status"] == "processed"
    assert len(calls) == 2
    assert again.status_code == 409
    assert missing.status_code == 404


async def test_unfinished_deliveries_resume_after_a_restart(
    build_app: AppFactory,
) -> None:
    first = build_app()  # dispatch disabled: stored, never processed, then the process "dies"
    async with first.started(), client_for(first) as client:
        for n in range(4):
            await post(client, snapshot(f"task-{n}", n))
    assert {s for _, s, _ in await delivery_rows(build_app())} == {"received"}

    seen: list[str] = []
    second = build_app(
        setup=lambda r: r.on_any(lambda e: seen.append(e.task_id or ""), name="c"),
        dispatch={"enabled": True, "poll_interval_seconds": 0.05},
    )
    async with second.started():
        for _ in range(300):
            if len(seen) == 4:
                break
            await asyncio.sleep(0.01)
    assert sorted(seen) == [f"task-{n}" for n in range(4)]
    assert {s for _, s, _ in await delivery_rows(build_app())} == {"processed"}


async def test_an_expired_lease_from_a_dead_worker_is_picked_up(
    build_app: AppFactory,
) -> None:
    now = [1_700_000_000.0]
    seen: list[str] = []
    app = build_app(
        setup=lambda r: r.on_any(lambda e: seen.append(e.name), name="c"),
        clock=lambda: now[0],
        dispatch={"lease_seconds": 30},
    )
    async with app.started(), client_for(app) as client:
        await post(client, sample("01-completed.json"))
        # Another worker claimed it and died without finishing.
        claimed = await app.storage.claim_ready(
            owner="ghost", limit=10, now=now[0], lease_seconds=30
        )
        assert len(claimed) == 1
        await app.dispatcher.drain(wait_for_retries=False)
        assert seen == []  # still leased by the ghost
        now[0] += 31
        await app.dispatcher.drain()
    assert seen == ["task.completed"]


async def test_intake_never_waits_on_handlers(build_app: AppFactory) -> None:
    gate = asyncio.Event()

    async def stuck(event: Event) -> None:
        await gate.wait()

    app = build_app(
        setup=lambda r: r.on_any(stuck, name="stuck"),
        dispatch={"enabled": True, "poll_interval_seconds": 0.05},
    )
    async with app.started(), client_for(app) as client:
        for n in range(3):
            answer = await asyncio.wait_for(post(client, snapshot("t", n)), timeout=2)
            assert answer["status"] == "accepted"
        gate.set()


async def test_duplicates_run_nothing_twice(build_app: AppFactory) -> None:
    seen: list[str] = []
    app = build_app(setup=lambda r: r.on_any(lambda e: seen.append(e.name), name="c"))
    async with app.started(), client_for(app) as client:
        await asyncio.gather(*(post(client, sample("06-audit-accepted.json")) for _ in range(10)))
        await app.dispatcher.drain()
    assert sorted(seen) == ["task.audited", "task.completed"]


async def test_quarantined_deliveries_are_not_dispatched(build_app: AppFactory) -> None:
    seen: list[str] = []
    app = build_app(setup=lambda r: r.on_any(lambda e: seen.append(e.name), name="c"))
    async with app.started(), client_for(app) as client:
        response = await client.post("/callbacks/refonte", content=b"{bad", headers=signed())
        assert response.status_code == 400
        await app.dispatcher.drain()
    assert seen == []
