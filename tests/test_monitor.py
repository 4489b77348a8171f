"""The monitor on both backends: real POSTs become per-minute rows, each signal is raised
once for its condition, a failing database stops nothing, and the queries it runs every few
seconds are served by indexes."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import asyncpg
import httpx
import pytest
import sqlalchemy as sa
from structlog.testing import capture_logs

from receiver import series
from receiver.app import TaskhookApp
from receiver.errors import StorageUnavailable
from receiver.events import Event
from receiver.monitor import DEAD_SINCE, Latch
from receiver.overview import OLDEST_WAITING, STUCK_COUNTS
from receiver.registry import HandlerRegistry
from receiver.signals import Signal
from receiver.storage.compiled import postgres_sql
from tests.conftest import BACKENDS, AppFactory, client_for, sample_json, signed

T0 = 1_750_000_020.0  # 20 s into a minute


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def snapshot(task_id: str) -> bytes:
    body = sample_json("05-completed-before-audit.json")
    body["task_id"] = body["task"]["task_id"] = task_id
    return json.dumps(body).encode()


async def post(client: httpx.AsyncClient, body: bytes, secret: str | None = None) -> int:
    headers = signed() if secret is None else signed(secret)
    return (await client.post("/callbacks/refonte", content=body, headers=headers)).status_code


def quiet(**overrides: Any) -> dict[str, Any]:
    """Settings whose monitor loop never fires by itself during a test (steps are called)."""
    alerts = {"check_seconds": 3600, **overrides.pop("alerts", {})}
    return {"alerts": alerts, **overrides}


def listening(heard: list[Signal]) -> Any:
    def setup(registry: HandlerRegistry) -> None:
        registry.on_signal(heard.append)

    return setup


async def minute_of_rows(app: TaskhookApp, names: list[str]) -> series.Series:
    minute = series.minute_of(app.clock())
    return await series.read_series(app.storage, names, minute, minute)


async def test_posts_become_rows_of_the_current_minute(build_app: AppFactory) -> None:
    clock = Clock()
    app = build_app(clock=clock, **quiet())
    names = [series.ACCEPTED, series.DUPLICATE, series.REJECTED, series.QUARANTINED,
             series.VERIFICATION + "refonte", series.BACKLOG_DEPTH, series.BACKLOG_OLDEST,
             series.ACK]  # fmt: skip
    async with app.started(), client_for(app) as client:
        assert await post(client, snapshot("t1")) == 200
        assert await post(client, snapshot("t2")) == 200
        assert await post(client, snapshot("t2")) == 200  # a duplicate
        assert await post(client, snapshot("t3"), secret="wrong") == 401
        assert await post(client, b"{not json") == 400  # stored, quarantined
        clock.now += 30
        await app.monitor.sample()
        data = await minute_of_rows(app, names)
        assert data.total(series.ACCEPTED) == 2
        assert data.total(series.DUPLICATE) == 1
        assert data.total(series.REJECTED) == 1
        assert data.total(series.QUARANTINED) == 1
        assert data.total(series.VERIFICATION + "refonte") == 1
        assert data.total(series.ACK) == 5  # every callback answered, whatever the answer
        assert data.points(series.BACKLOG_DEPTH) == [2]  # dispatch is off in tests
        assert data.points(series.BACKLOG_OLDEST) == [30]
        # A second sample of the same minute adds only what happened since the first.
        assert await post(client, snapshot("t4")) == 200
        await app.monitor.sample()
        data = await minute_of_rows(app, names)
        assert data.total(series.ACCEPTED) == 3
        assert data.total(series.DUPLICATE) == 1


async def test_the_loop_samples_on_its_own_and_survives_a_failing_database(
    build_app: AppFactory,
) -> None:
    app = build_app(**quiet())
    app.monitor.sample_seconds = 0.01
    storage = app.storage
    real_backlog = storage.backlog
    failures = 3

    async def flaky() -> int:
        nonlocal failures
        if failures:
            failures -= 1
            raise StorageUnavailable("database is down")
        return await real_backlog()

    storage.backlog = flaky  # type: ignore[method-assign]
    with capture_logs() as logs:
        async with app.started(), client_for(app) as client:
            assert await post(client, snapshot("t1")) == 200
            accepted = 0.0
            for _ in range(500):  # until the loop has written (bounded, not timed)
                minute = series.minute_of(app.clock())
                data = await series.read_series(storage, [series.ACCEPTED], minute - 1, minute)
                accepted = data.total(series.ACCEPTED)
                if accepted:
                    break
                await asyncio.sleep(0.01)
    assert accepted == 1  # counted once, though the first samples failed
    failed = [e for e in logs if e["event"] == "monitor step failed"]
    assert len(failed) >= 1 and failed[0]["error"] == "database is down"


async def test_a_dead_delivery_is_announced_once_and_not_again_after_a_restart(
    build_app: AppFactory,
) -> None:
    heard: list[Signal] = []

    def setup(registry: HandlerRegistry) -> None:
        def fails(event: Event) -> None:
            raise RuntimeError("vendor said no\nTraceback detail that stays out")

        registry.on("task.completed", fails, name="fails")
        registry.on_signal(heard.append)

    app = build_app(setup=setup, **quiet(dispatch={"enabled": True, "max_attempts": 1}))
    async with app.started(), client_for(app) as client:
        assert await post(client, snapshot("t-dead")) == 200
        await app.dispatcher.drain()
        first = await app.monitor.check()
        again = await app.monitor.check()
        await app.monitor.sample()
        data = await minute_of_rows(app, [series.DEAD, series.RUNS_FAILED, series.RUNS_OK])
    assert [s.kind for s in first] == ["delivery.dead"] and again == []
    assert heard == first
    dead = first[0]
    (delivery,) = [d async for d in _dead(app)]
    assert dead.key == delivery
    assert dead.link == f"/ui/deliveries/{delivery}"
    assert dead.details["source"] == "refonte"
    assert dead.details["task_id"] == "t-dead"
    # The first line of the delivery's last error: the handler and its exception.
    assert dead.details["error"].startswith("fails on evt_")
    assert dead.details["error"].endswith("RuntimeError: vendor said no")
    assert "Traceback detail" not in dead.summary
    assert (data.total(series.DEAD), data.total(series.RUNS_FAILED)) == (1, 1)
    # The next process does not announce what died before it started.
    heard_later: list[Signal] = []
    later = build_app(setup=listening(heard_later), **quiet())
    async with later.started():
        assert await later.monitor.check() == []
    assert heard_later == []


async def _dead(app: TaskhookApp) -> Any:
    await app.storage.open()
    try:
        for delivery_id in await app.storage.dead_ids():
            yield delivery_id
    finally:
        await app.storage.close()


async def test_verification_failing_counts_every_replica_and_is_raised_once(
    build_app: AppFactory,
) -> None:
    heard: list[Signal] = []
    clock = Clock()
    settings = quiet(alerts={"verification_failures": 3, "window_seconds": 300})
    app = build_app(setup=listening(heard), clock=clock, **settings)
    async with app.started(), client_for(app) as client:
        for _ in range(2):
            assert await post(client, snapshot("t1"), secret="wrong") == 401
        await app.monitor.sample()
        assert await app.monitor.check() == []
        # Another replica saw one more a minute ago: together they reach the threshold.
        other = series.MinuteRows(series.minute_of(clock.now) - 1)
        other.add(series.VERIFICATION + "refonte", 1)
        await series.write(app.storage, "other-replica", [other])
        raised = await app.monitor.check()
        assert await post(client, snapshot("t1"), secret="wrong") == 401
        await app.monitor.sample()
        assert await app.monitor.check() == []  # still failing: already said
        clock.now += 600  # the failures leave the window: the condition is over
        assert await app.monitor.check() == []
    assert [(s.kind, s.key) for s in heard] == [("verification.failing", "refonte")]
    assert raised == heard
    assert raised[0].details["failures"] == 3
    assert raised[0].details["threshold"] == 3


async def test_a_stale_backlog_is_raised_once_past_its_threshold(build_app: AppFactory) -> None:
    heard: list[Signal] = []
    clock = Clock()
    app = build_app(setup=listening(heard), clock=clock,
                    **quiet(alerts={"backlog_age_seconds": 60}))  # fmt: skip
    async with app.started(), client_for(app) as client:
        assert await post(client, snapshot("t1")) == 200
        clock.now += 60
        assert await app.monitor.check() == []  # not older than the threshold yet
        clock.now += 1
        raised = await app.monitor.check()
        clock.now += 30
        assert await app.monitor.check() == []
    assert [(s.kind, s.key) for s in heard] == [("backlog.stale", "backlog")]
    assert raised == heard
    assert raised[0].details["oldest_seconds"] == 61
    assert raised[0].details["backlog"] == 1
    assert raised[0].link == f"/ui/deliveries/{raised[0].details['delivery_id']}"


async def test_no_backlog_signal_when_its_threshold_is_zero(build_app: AppFactory) -> None:
    clock = Clock()
    app = build_app(clock=clock, **quiet(alerts={"backlog_age_seconds": 0}))
    async with app.started(), client_for(app) as client:
        assert await post(client, snapshot("t1")) == 200
        clock.now += 10**6
        assert await app.monitor.check() == []


def test_a_latch_raises_at_the_start_then_at_most_every_repeat_and_rearms() -> None:
    latch = Latch(repeat=100)
    assert latch.due("k", True, 0) is True
    assert latch.due("k", True, 99) is False
    assert latch.due("k", True, 100) is True  # a reminder while it lasts
    assert latch.due("k", False, 101) is False  # over: re-armed
    assert latch.due("k", True, 102) is True
    once = Latch(repeat=0)
    assert [once.due("k", True, t) for t in (0, 10**6)] == [True, False]


INDEXED = [
    ("oldest waiting", OLDEST_WAITING, "deliveries_pending", {}),
    ("dead and quarantined counts", STUCK_COUNTS, "deliveries_status", {}),
    ("dead since", DEAD_SINCE, "deliveries_prunable", {"after_at": 0.0, "after_seq": 0,
                                                       "limit": 200}),
]  # fmt: skip


async def test_the_monitors_queries_are_served_by_an_index(
    build_app: AppFactory, db_url: str, backend: str
) -> None:
    app = build_app()
    await app.open()
    try:
        for what, statements, index, params in INDEXED:
            if backend == "sqlite":
                explain = sa.text("EXPLAIN QUERY PLAN " + statements["sqlite"].text)
                steps = [str(row[-1]) for row in await app.storage.query(explain, params)]
            else:
                steps = await _postgres_plan(db_url, statements["postgresql"], params)
            assert index in " ".join(steps), (what, steps)
            if backend == "sqlite":  # every read of the table walks an index; nothing sorts
                assert all("INDEX" in step for step in steps if "deliveries" in step), steps
                assert not any("TEMP B-TREE" in step for step in steps), (what, steps)
            else:
                assert not any("Seq Scan" in s or "Sort" in s for s in steps), (what, steps)
    finally:
        await app.storage.close()


async def _postgres_plan(url: str, statement: sa.TextClause, params: dict[str, Any]) -> list[str]:
    """The plan PostgreSQL would use with sequential scans ruled out (an empty test table
    is cheapest to scan; what matters here is that an index can serve the query)."""
    compiled = postgres_sql(statement)
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("SET enable_seqscan = off")
        rows = await conn.fetch("EXPLAIN " + compiled.sql, *compiled.args(params))
    finally:
        await conn.close()
    return [str(row[0]) for row in rows]
