"""The overview's live counters on both backends match what was posted and what is stored."""

from __future__ import annotations

import json

import pytest

from receiver.events import Event
from receiver.overview import overview
from receiver.registry import HandlerRegistry
from tests.conftest import BACKENDS, AppFactory, client_for
from tests.test_monitor import Clock, post, quiet, snapshot


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


async def test_the_overview_counts_what_was_posted_and_what_is_stuck(
    build_app: AppFactory,
) -> None:
    def setup(registry: HandlerRegistry) -> None:
        def handle(event: Event) -> None:
            if event.task_id == "t-bad":
                raise RuntimeError("cannot")

        registry.on("task.completed", handle, name="handle")

    app = build_app(setup=setup, **quiet(dispatch={"enabled": True, "max_attempts": 1}))
    async with app.started(), client_for(app) as client:
        for task in ("t1", "t2", "t-bad"):
            assert await post(client, snapshot(task)) == 200
        assert await post(client, snapshot("t1")) == 200  # a duplicate
        assert await post(client, snapshot("t9"), secret="wrong") == 401
        assert await post(client, b"{not json") == 400  # quarantined
        await app.dispatcher.drain()
        await app.monitor.sample()
        seen = await overview(app)
    hour = seen.last_hour
    assert (hour.accepted, hour.duplicates, hour.rejected, hour.quarantined) == (3, 1, 1, 1)
    assert seen.last_day == hour
    assert (seen.backlog, seen.oldest_waiting_seconds, seen.oldest_waiting_id) == (0, None, None)
    assert (seen.dead, seen.quarantined) == (1, 1)
    assert seen.handler_runs_last_hour == 3
    assert seen.handler_failure_rate == pytest.approx(1 / 3)
    assert seen.ack_p50_seconds is not None and seen.ack_p99_seconds is not None
    assert 0 < seen.ack_p50_seconds <= seen.ack_p99_seconds
    shown = json.loads(json.dumps(seen.as_dict()))
    assert shown["last_hour"]["accepted"] == 3 and shown["dead"] == 1


async def test_the_overview_of_a_waiting_backlog_and_of_nothing(build_app: AppFactory) -> None:
    clock = Clock()
    app = build_app(clock=clock, **quiet())
    async with app.started(), client_for(app) as client:
        empty = await overview(app)
        assert await post(client, snapshot("t1")) == 200
        clock.now += 5
        assert await post(client, snapshot("t2")) == 200
        clock.now += 40
        waiting = await overview(app)
    assert empty.backlog == 0 and empty.oldest_waiting_seconds is None
    assert empty.last_day.accepted == 0 and empty.handler_failure_rate is None
    assert empty.ack_p50_seconds is None and empty.ack_p99_seconds is None
    assert waiting.backlog == 2
    assert waiting.oldest_waiting_seconds == 45
    assert waiting.oldest_waiting_id is not None
    assert waiting.at == clock.now
    # Not sampled yet: the series say nothing of these two, the stored backlog does.
    assert waiting.last_hour.accepted == 0
