"""Server-side SVG charts: valid XML for empty data, gaps and huge values, escaped text,
nothing a strict Content-Security-Policy would block, and the dashboard's four charts read
from the series on both backends."""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET

import pytest

from receiver import series
from receiver.charts import axis, dashboard_charts, fmt, line_chart, nice_ticks, stacked_bars
from tests.conftest import BACKENDS, AppFactory
from tests.test_monitor import Clock

SVG = "{http://www.w3.org/2000/svg}"
LABELS = [f"12:{i:02d}" for i in range(6)]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


def parsed(svg: str) -> ET.Element:
    """The chart as XML, checked for what the dashboard's CSP forbids or could leak."""
    root = ET.fromstring(svg)  # noqa: S314 (our own output, the thing under test)
    assert root.tag == f"{SVG}svg"
    assert root.get("role") == "img" and root.get("viewBox")
    assert root.get("width") is None  # scaled by the page, so it fits a phone
    ids = (root.get("aria-labelledby") or "").split()
    found = {el.get("id"): el for el in root.iter() if el.get("id")}
    assert [found[i].tag for i in ids] == [f"{SVG}title", f"{SVG}desc"]
    for element in root.iter():
        assert element.tag.startswith(SVG)
        assert element.tag not in (f"{SVG}script", f"{SVG}foreignObject", f"{SVG}style")
        for name, value in element.attrib.items():
            assert not name.lower().startswith("on"), name
            assert name not in ("style", "href") and "href" not in name, name
            assert "url(" not in value and "javascript:" not in value.lower()
    return root


def texts(root: ET.Element) -> list[str]:
    return [el.text or "" for el in root.iter(f"{SVG}text")]


def paths(root: ET.Element) -> list[ET.Element]:
    return list(root.iter(f"{SVG}path"))


def bars(root: ET.Element) -> list[ET.Element]:
    """Drawn rectangles (not the white background nor the transparent tooltip columns)."""
    return [r for r in root.iter(f"{SVG}rect") if r.get("fill") != "#FFFFFF"]


def test_an_empty_chart_says_so() -> None:
    for svg in (
        line_chart("Nothing", {"a": []}, [], "s"),
        line_chart("Nothing", {}, LABELS, ""),
        line_chart("All gaps", {"a": [None] * 6}, LABELS, "%"),
        stacked_bars("Nothing", {"a": []}, [], ""),
    ):
        root = parsed(svg)
        assert "No data yet" in texts(root)
        assert paths(root) == []


def test_gaps_break_the_line_and_a_lone_point_is_a_dot() -> None:
    values = [1.0, 2.0, None, 4.0, None, float("nan")]
    root = parsed(line_chart("Gaps", {"a": values}, LABELS, ""))
    assert len(paths(root)) == 1  # 1 -> 2, then a gap
    assert len(list(root.iter(f"{SVG}circle"))) == 1  # 4 stands alone; NaN is a gap
    tips = [el.text or "" for el in root.iter(f"{SVG}title")][1:]
    assert tips[2] == "12:02: a no data" and tips[3] == "12:03: a 4"


def test_huge_values_read_as_si_numbers() -> None:
    big = [0.0, 3.2e12, 1e15, 7.5e11, None, 2e12]
    root = parsed(line_chart("Huge", {"a": big}, LABELS, ""))
    ticks = texts(root)
    assert "1P" in ticks or "1.2P" in ticks
    assert not any("e+" in t for t in ticks)
    stacked = parsed(stacked_bars("Huge", {"a": big, "b": [1e12] * 6}, LABELS, ""))
    assert len(bars(stacked)) == 4 + 6


def test_names_from_config_are_escaped() -> None:
    hostile = 'src <script>alert("x")</script> & \x07co'
    svg = line_chart(hostile, {hostile: [1, 2, 3, 4, 5, 6]}, LABELS, "", subtitle=hostile)
    root = parsed(svg)
    assert "<script>" not in svg
    title = root.find(f"{SVG}title")
    assert title is not None and title.text == 'src <script>alert("x")</script> & co'
    assert hostile.replace("\x07", "") in texts(root)


def test_stacked_bars_stack_in_order_and_scale_to_the_tallest() -> None:
    stacks: dict[str, list[float | None]] = {
        "accepted": [1, 2, 0, 0, 5, 1],
        "rejected": [1, 0, 0, 0, 5, None],
    }
    root = parsed(stacked_bars("Deliveries", stacks, LABELS, "", colours={"rejected": "#C0392B"}))
    drawn = bars(root)
    assert len(drawn) == 6  # zero and missing parts draw nothing
    assert "#C0392B" in {r.get("fill") for r in drawn}
    assert "10" in texts(root)  # the top tick covers the tallest stack (5 + 5)


def test_a_secondary_axis_has_its_own_unit() -> None:
    root = parsed(line_chart("Backlog", {"waiting": [1, 2, 3, 4, 5, 6]}, LABELS, "",
                             secondary={"age": [0, 60, 120, 180, 240, 300]},
                             secondary_unit="s"))  # fmt: skip
    labels = texts(root)
    assert "age (right axis)" in labels and "6 min" in labels
    assert [p.get("stroke-dasharray") for p in paths(root)] == [None, "5 3"]


def test_ticks_and_numbers() -> None:
    for high in (0.0, 0.003, 1, 7, 99, 101, 1234.5, 9e9, math.inf):
        ticks = nice_ticks(high)
        assert ticks[0] == 0 and 2 <= len(ticks) <= 7
        assert ticks[-1] >= (high if math.isfinite(high) else 1)
    assert axis(300, "s") == ([0, 120, 240, 360], ["0", "2 min", "4 min", "6 min"])
    assert axis(0.05, "s")[1][-1] == "60 ms"
    assert [fmt(v, "s") for v in (0, 0.0004, 0.012, 3, 5400, 2e5)] == [
        "0", "400 µs", "12 ms", "3 s", "90 min", "2.31 d",
    ]  # fmt: skip
    assert (fmt(12.5, "%"), fmt(1500, ""), fmt(2.5e6, ""), fmt(0.25, "")) == (
        "12.5%", "1.5k", "2.5M", "0.25",
    )  # fmt: skip


@pytest.mark.parametrize("window", ["hour", "day"])
async def test_the_dashboards_four_charts(build_app: AppFactory, window: str) -> None:
    clock = Clock()
    app = build_app(clock=clock)
    await app.open()
    try:
        empty = await dashboard_charts(app, window)  # type: ignore[arg-type]
        now = series.minute_of(clock.now)
        rows = []
        for back in range(0, 50, 7):
            minute = series.MinuteRows(now - back)
            minute.add(series.ACCEPTED, 10 + back)
            minute.add(series.REJECTED, 2)
            minute.add(series.RUNS_OK, 9)
            minute.add(series.RUNS_FAILED, 1)
            minute.gauge(series.BACKLOG_DEPTH, back)
            minute.gauge(series.BACKLOG_OLDEST, 3 * back)
            minute.observe(series.ACK, {"0.005": 8, "0.05": 2, "+Inf": 0})
            rows.append(minute)
        await series.write(app.storage, "r1", rows)
        charts = await dashboard_charts(app, window)  # type: ignore[arg-type]
    finally:
        await app.storage.close()
    assert list(charts) == list(empty) == ["deliveries", "backlog", "failures", "latency"]
    # Nothing sampled yet: counters read as zeros (no bars), the rest as unknown.
    assert bars(parsed(empty["deliveries"])) == []
    for name in ("backlog", "failures", "latency"):
        assert "No data yet" in texts(parsed(empty[name])), name
    # Two outcomes a slot; a day's slots gather 10 minutes (starting on round minutes).
    step = series.WINDOWS[window].step
    slots = {(now - back) // step for back in range(0, 50, 7)}
    assert len(bars(parsed(charts["deliveries"]))) == 2 * len(slots)
    for name, svg in charts.items():
        root = parsed(svg)
        assert "No data yet" not in texts(root), name
    failures = parsed(charts["failures"])
    assert any("failed runs 10%" in (t.text or "") for t in failures.iter(f"{SVG}title"))
    assert "UTC" in charts["latency"]
