"""Per-minute series on both backends: rows of several replicas merged on read (counters
summed, gauges at their maximum, quantiles from summed buckets), gaps, slots, expiry."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from receiver import series
from receiver.app import TaskhookApp
from receiver.series import MinuteRows, quantile, read_series, write
from tests.conftest import BACKENDS, AppFactory

M = 29_000_000  # a minute number of 2025


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture
async def opened(build_app: AppFactory) -> AsyncIterator[TaskhookApp]:
    """An app whose storage is open (the series table created), not started."""
    app = build_app()
    await app.open()
    try:
        yield app
    finally:
        await app.storage.close()


def rows(minute: int, *, accepted: float, depth: float, ack: dict[str, float]) -> MinuteRows:
    out = MinuteRows(minute)
    out.add(series.ACCEPTED, accepted)
    out.gauge(series.BACKLOG_DEPTH, depth)
    out.observe(series.ACK, ack)
    return out


async def test_two_replicas_merge_counters_gauges_and_buckets(opened: TaskhookApp) -> None:
    storage = opened.storage
    await write(storage, "a", [rows(M, accepted=3, depth=5, ack={"0.01": 2, "0.1": 0})])
    await write(storage, "b", [rows(M, accepted=4, depth=9, ack={"0.01": 0, "0.1": 2})])
    await write(storage, "b", [rows(M + 2, accepted=1, depth=2, ack={"0.01": 1, "0.1": 0})])
    names = [series.ACCEPTED, series.BACKLOG_DEPTH, series.ACK]
    data = await read_series(storage, names, M, M + 2)
    assert data.points(series.ACCEPTED) == [7, 0, 1]  # summed; a gap counted nothing
    assert data.points(series.BACKLOG_DEPTH) == [9, None, 2]  # the larger; a gap is unknown
    assert data.points(series.ACK) == [4, 0, 1]  # observations
    assert data.merged(series.ACK) == {"0.01": 3, "0.1": 2}
    # Minute M holds 2 acks under 10 ms and 2 between 10 and 100 ms (one from each
    # replica's buckets): the median is the first bucket's top, p75 halfway into the second.
    p50, p75 = data.quantiles(series.ACK, 0.5)[0], data.quantiles(series.ACK, 0.75)[0]
    assert p50 == pytest.approx(0.01)
    assert p75 == pytest.approx(0.055)
    assert data.quantiles(series.ACK, 0.5)[1] is None


async def test_slots_sum_counters_and_keep_gauge_peaks(opened: TaskhookApp) -> None:
    storage = opened.storage
    for i, (n, depth) in enumerate([(1, 3), (2, 8), (3, 1), (4, 4)]):
        await write(storage, "a", [rows(M + i, accepted=n, depth=depth, ack={})])
    data = await read_series(storage, [series.ACCEPTED, series.BACKLOG_DEPTH], M, M + 3, step=2)
    assert data.slot_minutes() == [M, M + 2]
    assert data.points(series.ACCEPTED) == [3, 7]
    assert data.points(series.BACKLOG_DEPTH) == [8, 4]
    assert data.total(series.ACCEPTED) == 10


async def test_a_minute_written_again_holds_its_running_total(opened: TaskhookApp) -> None:
    storage = opened.storage
    minute = MinuteRows(M)
    minute.add(series.ACCEPTED, 2)
    await write(storage, "a", [minute])
    minute.add(series.ACCEPTED, 3)  # the next sample of the same minute
    await write(storage, "a", [minute])
    data = await read_series(storage, [series.ACCEPTED], M, M)
    assert data.points(series.ACCEPTED) == [5]


async def test_old_minutes_are_deleted_as_minutes_go_by(opened: TaskhookApp) -> None:
    storage = opened.storage
    await write(storage, "a", [rows(M, accepted=1, depth=1, ack={})])
    await write(storage, "b", [rows(M + 1, accepted=1, depth=1, ack={})])
    await write(storage, "a", [rows(M + 2, accepted=1, depth=1, ack={})], expire_before=M + 2)
    data = await read_series(storage, [series.ACCEPTED], M, M + 2)
    assert data.points(series.ACCEPTED) == [0, 0, 1]


async def test_prefixed_totals_sum_every_source_across_replicas(opened: TaskhookApp) -> None:
    storage = opened.storage
    a, b = MinuteRows(M), MinuteRows(M + 1)
    a.add(series.VERIFICATION + "refonte", 2)
    a.add(series.VERIFICATION + "x_y", 1)
    b.add(series.VERIFICATION + "refonte", 3)
    b.add(series.VERIFICATION + "xzy", 7)
    await write(storage, "a", [a])
    await write(storage, "b", [b])
    found = await series.prefixed_totals(storage, series.VERIFICATION, M, M + 1)
    assert found == {
        series.VERIFICATION + "refonte": 5,
        series.VERIFICATION + "x_y": 1,
        series.VERIFICATION + "xzy": 7,
    }
    # LIKE's wildcards in a prefix are matched literally.
    only = await series.prefixed_totals(storage, series.VERIFICATION + "x_", M, M + 1)
    assert only == {series.VERIFICATION + "x_y": 1}
    assert await series.prefixed_totals(storage, series.VERIFICATION, M + 2, M + 9) == {}


def test_quantiles_interpolate_inside_their_bucket() -> None:
    assert quantile({}, 0.5) is None
    assert quantile({"0.1": 0, "+Inf": 0}, 0.5) is None
    buckets = {"0.001": 0, "0.01": 10, "0.1": 10, "+Inf": 0}
    assert quantile(buckets, 0.25) == pytest.approx(0.001 + 0.009 * 0.5)
    assert quantile(buckets, 0.99) == pytest.approx(0.01 + 0.09 * 0.98)
    # Beyond the last finite bound the answer is that bound (nothing better is known).
    assert quantile({"0.5": 1, "+Inf": 9}, 0.99) == 0.5
    # Bucket keys are Prometheus's spellings, in any order.
    assert quantile({"+Inf": 0, "10.0": 2, "1.0": 2}, 0.5) == pytest.approx(1.0)


def test_windows_end_now_and_start_on_round_minutes() -> None:
    hour, day = series.WINDOWS["hour"], series.WINDOWS["day"]
    assert hour.span(M + 7) == (M + 7 - 59, M + 7)
    since, until = day.span(M + 7)
    assert (since % 10, until) == (0, M + 7)
    assert (until - since) // day.step + 1 == 144


@pytest.mark.parametrize("window", ["hour", "day"])
async def test_a_window_read_with_its_settled_part_kept_is_the_same(
    opened: TaskhookApp, window: str
) -> None:
    storage, shape = opened.storage, series.WINDOWS[window]
    now = (M + 7) * 60.0 + 30
    minutes = [rows(M + 7 - back, accepted=back, depth=back % 13, ack={"0.01": 1, "0.1": back})
               for back in range(0, 1440, 37)]  # fmt: skip
    await write(storage, "a", minutes)
    await write(storage, "b", minutes[::2])
    names = [series.ACCEPTED, series.BACKLOG_DEPTH, series.ACK]
    plain = await series.read_window(storage, names, shape, now)
    memo = series.PerMinute()
    kept = await series.read_window(storage, names, shape, now, memo=memo)
    again = await series.read_window(storage, names, shape, now, memo=memo)
    for data in (kept, again):
        assert data.slot_minutes() == plain.slot_minutes() and data.slots == shape.points
        for name in (series.ACCEPTED, series.BACKLOG_DEPTH):
            assert data.points(name) == plain.points(name)
        assert data.quantiles(series.ACK, 0.9) == plain.quantiles(series.ACK, 0.9)
    assert plain.total(series.ACCEPTED) > 0


async def test_merged_buckets_of_a_range(opened: TaskhookApp) -> None:
    storage = opened.storage
    await write(storage, "a", [rows(M, accepted=0, depth=0, ack={"0.01": 2, "+Inf": 0})])
    await write(storage, "b", [rows(M + 1, accepted=0, depth=0, ack={"0.01": 1, "+Inf": 1})])
    assert await series.merged_buckets(storage, series.ACK, M, M + 1) == {"0.01": 3, "+Inf": 1}
    assert await series.merged_buckets(storage, series.ACK, M + 2, M + 3) == {}
