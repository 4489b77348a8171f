"""Retention on both backends: one pass deletes old duplicate rows and removes the bodies and
headers of old processed (then dead and quarantined) deliveries, in batches, with exact
counts and metrics; it never touches pending or queued deliveries, processed ones whose events
are being derived again, or what the ledger still needs, so `taskhook rebuild` still gives
each task whose last delivery was kept the state it has now. The pruner runs inside the app
on its interval, and as `taskhook prune [--dry-run]`."""

from __future__ import annotations

import argparse
import asyncio
import json
import sqlite3
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from receiver.app import TaskhookApp
from receiver.cli import prune as cli_prune
from receiver.events import Event
from receiver.prune import DAY, Pruner, PruneSummary
from receiver.rebuild import rebuild
from receiver.records import DeliveryOutcome, DeliveryStatus
from receiver.registry import HandlerRegistry
from receiver.storage.sqlite import sqlite_path
from tests.conftest import BACKENDS, AppFactory, client_for, make_settings, ops, sample_json

OPEN = {"refonte": {"kind": "refonte", "verify": "none"}}
JSON = {"content-type": "application/json"}
LEDGER = (
    "SELECT task_id, status, unique_id, claimed_unique_id, customer_review_status, response, "
    "version, audits, task, last_delivery_id FROM ledger_tasks ORDER BY task_id"
)
BODIES = "SELECT id FROM deliveries WHERE body IS NOT NULL ORDER BY seq"


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


def snapshot(task_id: str, n: int) -> bytes:
    """Version `n` of task `task_id` (distinct bytes, later state)."""
    body = sample_json("05-completed-before-audit.json")
    body["task_id"] = body["task"]["task_id"] = task_id
    body["task"]["updated_at"] = f"2024-03-01T12:{n:02d}:00.000Z"
    return json.dumps(body).encode()


def dies(registry: HandlerRegistry) -> None:
    def handler(event: Event) -> None:
        if event.task_id == "dead-1":
            raise RuntimeError("this task's handler always fails")

    registry.on_any(handler, name="dies-on-dead-1")


async def post(client: httpx.AsyncClient, body: bytes) -> dict[str, Any]:
    response = await client.post("/callbacks/refonte", content=body, headers=JSON)
    assert response.status_code in (200, 400), response.text
    answer: dict[str, Any] = response.json()
    return answer


class World:
    """What the test stored, by role (delivery ids)."""

    def __init__(self) -> None:
        self.snapshots: dict[str, list[str]] = {}  # task -> its three deliveries, in order
        self.original = ""  # the delivery received 5 more times
        self.quarantined = ""
        self.dead = ""
        self.received = ""  # stored, never dispatched: in the queue
        self.failed = ""  # attempted, waiting for its retry


async def populate(app: TaskhookApp, client: httpx.AsyncClient) -> World:
    world = World()
    for task in ("task-a", "task-b", "task-c"):
        world.snapshots[task] = [
            (await post(client, snapshot(task, n)))["delivery_id"] for n in (1, 2, 3)
        ]
    world.original = world.snapshots["task-a"][0]
    for _ in range(5):  # 3 kept as rows (max_duplicate_rows), 2 only counted
        assert (await post(client, snapshot("task-a", 1)))["status"] == "duplicate"
    world.quarantined = (await post(client, b"not json"))["delivery_id"]
    world.dead = (await post(client, snapshot("dead-1", 1)))["delivery_id"]
    await app.dispatcher.drain()
    world.received = (await post(client, snapshot("task-d", 1)))["delivery_id"]
    world.failed = (await post(client, snapshot("task-e", 1)))["delivery_id"]
    # task-e's delivery has had an attempt and waits a day for its retry (failed, pending).
    claimed = await app.storage.claim_ready(
        owner="test", limit=10, now=app.clock(), lease_seconds=60
    )
    assert {d.id for d in claimed} == {world.received, world.failed}
    failed = DeliveryOutcome(world.failed, DeliveryStatus.FAILED, 1, app.clock() + DAY, "boom")
    assert await app.storage.finish(failed, owner="test")
    await app.storage.release_claims("test")
    return world


async def rows(app: TaskhookApp, sql: str) -> list[tuple[Any, ...]]:
    return [tuple(r) for r in await app.storage.query(sa.text(sql))]


def pruner(app: TaskhookApp, days_later: float, **kwargs: Any) -> Pruner:
    later = time.time() + days_later * DAY
    return Pruner(
        app.storage,
        app.settings.retention,
        retained=app.registry.retained,
        metrics=app.metrics,
        clock=lambda: later,
        **kwargs,
    )


async def test_a_pass_removes_exactly_what_is_old_and_unneeded(build_app: AppFactory) -> None:
    app = build_app(
        setup=dies, handlers=["handlers.ledger"], sources=OPEN,
        dispatch={"max_attempts": 1}, retention={"max_duplicate_rows": 3},
    )  # fmt: skip
    async with app.started(), client_for(app) as client:
        world = await populate(app, client)
        ledger = await rows(app, LEDGER)
        events = await rows(app, "SELECT count(*) FROM events")
        runs = await rows(app, "SELECT count(*) FROM handler_runs")
        everything = [r[0] for r in await rows(app, BODIES)]
        statuses = dict(await rows(app, "SELECT status, count(*) FROM deliveries GROUP BY 1"))
        assert statuses == {"processed": 9, "duplicate": 3, "quarantined": 1, "dead": 1,
                            "received": 1, "failed": 1}  # fmt: skip
        last = {r[0]: r[9] for r in ledger}
        assert last == {
            "task-a": world.snapshots["task-a"][2], "task-b": world.snapshots["task-b"][2],
            "task-c": world.snapshots["task-c"][2], "dead-1": world.dead,
        }  # fmt: skip

        # 31 days on: duplicates (7 days) and processed bodies (30 days) go, in batches of 2;
        # the last delivery of each ledger task stays; dead and quarantined (90 days) stay.
        dry = await pruner(app, 31, batch=2).run(dry_run=True)
        assert [r[0] for r in await rows(app, BODIES)] == everything  # a dry run changes nothing
        done = await pruner(app, 31, batch=2).run()
        expected = PruneSummary(duplicates=3, processed=6, dead=0, kept=3)
        assert dry == done == expected
        stripped = {d for task in ("task-a", "task-b", "task-c") for d in world.snapshots[task][:2]}
        kept = [r[0] for r in await rows(app, BODIES)]
        assert kept == [d for d in everything if d not in stripped]
        assert await rows(app, "SELECT count(*) FROM deliveries WHERE status = 'duplicate'") == [
            (0,)
        ]
        gone = await app.storage.get_delivery(world.snapshots["task-b"][0])
        assert gone is not None and (gone.body, gone.headers, gone.status) == (
            None, {}, DeliveryStatus.PROCESSED,
        )  # fmt: skip
        original = await app.storage.get_delivery(world.original)
        assert original is not None and original.duplicate_count == 5  # the count stays
        # Its rows gone, the original has room again: the next receipt is kept as a row.
        assert (await post(client, snapshot("task-a", 1)))["status"] == "duplicate"
        counted = await app.storage.query(
            sa.text("SELECT duplicate_count, duplicate_rows FROM deliveries WHERE id = :id"),
            {"id": world.original},
        )
        assert [tuple(r) for r in counted] == [(6, 1)]
        text = (await client.get("/metrics")).text
        assert 'taskhook_pruned_total{what="duplicates"} 3.0' in text
        assert 'taskhook_pruned_total{what="deliveries_bodies"} 6.0' in text
        # 91 days on: the quarantined delivery goes too; the dead one is the last delivery
        # of the ledger's task dead-1, so it stays.
        later = await pruner(app, 91).run()
        assert later == PruneSummary(duplicates=1, processed=0, dead=1, kept=4)
        # A delivery without its body cannot be retried: there would be nothing to run.
        refused = await client.post(f"/v1/deliveries/{world.quarantined}/retry", headers=ops())
        assert refused.status_code == 409
        # Rows, events and handler runs all stay; pending deliveries keep their bodies.
        assert await rows(app, "SELECT count(*) FROM events") == events
        assert await rows(app, "SELECT count(*) FROM handler_runs") == runs
        pending = {world.received, world.failed}
        assert pending <= {r[0] for r in await rows(app, BODIES)}

        # A rebuild from what is left gives each task whose last delivery was kept the state
        # it has now (task-d and task-e, pending, are applied for the first time).
        await rebuild(app)
        rebuilt = {r[0]: r for r in await rows(app, LEDGER)}
    assert {task: rebuilt[task] for task in last} == {r[0]: r for r in ledger}


async def test_processed_deliveries_being_derived_again_keep_their_bodies(
    build_app: AppFactory,
) -> None:
    """`taskhook rebuild` first marks the ledger's deliveries underived, then applies them
    again one by one: a pass meanwhile must not take the bodies it is about to read."""
    app = build_app(handlers=["handlers.ledger"], sources=OPEN)
    async with app.started(), client_for(app) as client:
        for n in (1, 2, 3):
            await post(client, snapshot("task-r", n))
        await app.dispatcher.drain()
        for hook in app.registry.reset_hooks:  # what rebuild does first: the ledger is empty
            await hook()
        assert await rows(app, "SELECT count(*) FROM ledger_tasks") == [(0,)]
        summary = await pruner(app, 31).run()
        assert summary == PruneSummary()
        assert len(await rows(app, BODIES)) == 3


async def test_batches_stay_within_their_bytes(build_app: AppFactory) -> None:
    app = build_app(sources=OPEN)
    async with app.started(), client_for(app) as client:
        for n in range(7):
            await post(client, snapshot(f"task-{n}", 1))
        await app.dispatcher.drain()
        # One body is more than the byte budget: one row per batch, every one still done.
        summary = await pruner(app, 31, batch=1000, batch_bytes=1).run()
        assert summary == PruneSummary(processed=7)
        assert await rows(app, BODIES) == []
        assert await pruner(app, 31).run() == PruneSummary()  # and nothing is left to do


async def test_the_app_prunes_on_its_interval(build_app: AppFactory) -> None:
    """The pruner inside the app (as in `serve`): the app's clock says 40 days have passed
    since the deliveries were processed, and the first pass comes after one interval."""
    app = build_app(
        clock=lambda: time.time() + 40 * DAY,
        handlers=["handlers.ledger"], sources=OPEN,
        retention={"enabled": True, "interval_seconds": 0.05},
    )  # fmt: skip
    async with app.started(), client_for(app) as client:
        for n in (1, 2, 3):
            await post(client, snapshot("task-s", n))
        await app.dispatcher.drain()
        for _ in range(100):  # within 5 s
            text = (await client.get("/metrics")).text
            if 'taskhook_pruned_total{what="deliveries_bodies"} 2.0' in text:
                break
            await asyncio.sleep(0.05)
        kept = await rows(app, BODIES)
        last = await rows(app, "SELECT last_delivery_id FROM ledger_tasks")
    assert 'taskhook_pruned_total{what="deliveries_bodies"} 2.0' in text
    assert kept == last  # only the ledger's last delivery of the task keeps its body


def age(url: str, days: float) -> None:
    """Make every stored delivery `days` older (as if received and processed then)."""
    seconds = float(days * DAY)  # a number, written into the statement
    sql = (
        f"UPDATE deliveries SET received_at = received_at - {seconds}, "  # noqa: S608
        f"updated_at = updated_at - {seconds}"
    )
    if url.startswith("sqlite:"):
        with sqlite3.connect(sqlite_path(url)) as conn:
            conn.execute(sql)
        return
    from tests.pg import fetch

    fetch(url, sql)


async def stored(build_app: AppFactory) -> None:
    app = build_app(handlers=["handlers.ledger"], sources=OPEN)
    async with app.started(), client_for(app) as client:
        for n in (1, 2, 3):
            await post(client, snapshot("task-p", n))
        await post(client, snapshot("task-p", 1))  # a duplicate
        await app.dispatcher.drain()


def test_taskhook_prune_counts_then_removes(
    build_app: AppFactory, db_url: str, db_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    asyncio.run(stored(build_app))
    age(db_url, 35)
    settings = make_settings(
        db_path, database={"url": db_url}, handlers=["handlers.ledger"], sources=OPEN,
        retention={"enabled": False},  # the switch of the background pruner only
    )  # fmt: skip
    assert asyncio.run(cli_prune.run(settings, argparse.Namespace(dry_run=True))) == 0
    assert asyncio.run(cli_prune.run(settings, argparse.Namespace(dry_run=False))) == 0
    assert asyncio.run(cli_prune.run(settings, argparse.Namespace(dry_run=False))) == 0
    lines = [x for x in capsys.readouterr().out.splitlines() if x.startswith("pruned")]
    assert lines == [
        "pruned (dry run): 1 duplicate receipt(s) and the bodies of 2 processed and 0 dead or "
        "quarantined delivery(ies) would be removed; 1 kept for plugins",
        "pruned: 1 duplicate receipt(s) and the bodies of 2 processed and 0 dead or "
        "quarantined delivery(ies) removed; 1 kept for plugins",
        "pruned: 0 duplicate receipt(s) and the bodies of 0 processed and 0 dead or "
        "quarantined delivery(ies) removed; 1 kept for plugins",
    ]


def test_prune_is_a_command(capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config")
    cli_prune.add_parser(parser.add_subparsers(dest="command"), common)
    args = parser.parse_args(["prune", "--dry-run", "--config", "x.toml"])
    assert (args.command, args.dry_run, args.config) == ("prune", True, "x.toml")
