"""The overview: live counters (``/ui/overview.json`` keeps them current) and the charts.

The numbers come from `receiver.overview.overview` and the SVG charts from
`receiver.charts.dashboard_charts`; this module only lays them out. The counters are
formatted here, once, for both the page and the JSON, so the script only swaps text.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute

from receiver.overview import Overview, overview
from receiver.ui.display import age
from receiver.ui.kit import Page, UiRoute
from receiver.ui.templates import iso

if TYPE_CHECKING:
    from receiver.app import TaskhookApp

READ = "deliveries.read"
WINDOWS = ("hour", "day")


@dataclass(frozen=True, slots=True)
class Card:
    name: str
    label: str
    value: str
    sub: str  # a second line: the same over the last day, or what it refers to
    link: str | None = None
    alarm: bool = False  # worth a look (dead deliveries, an old backlog, failing handlers)


def _n(value: float) -> str:
    return f"{round(value):,}"


def _ms(seconds: float | None) -> str:
    return "—" if seconds is None else f"{seconds * 1000:,.0f} ms"


def cards(ov: Overview) -> list[Card]:
    """The overview's counters, formatted once for the page and for the JSON alike."""
    hour, day = ov.last_hour, ov.last_day
    oldest = f"/ui/deliveries/{quote(ov.oldest_waiting_id)}" if ov.oldest_waiting_id else None
    rate = ov.handler_failure_rate
    return [
        Card("accepted", "Accepted · hour", _n(hour.accepted), f"{_n(day.accepted)} in 24 h",
             "/ui/deliveries"),
        Card("duplicates", "Duplicates · hour", _n(hour.duplicates),
             f"{_n(day.duplicates)} in 24 h", "/ui/deliveries?status=duplicate"),
        Card("rejected", "Rejected · hour", _n(hour.rejected), f"{_n(day.rejected)} in 24 h",
             alarm=hour.rejected > 0),
        Card("backlog", "Backlog", _n(ov.backlog), "waiting to be processed",
             "/ui/deliveries?status=received"),
        Card("oldest", "Oldest waiting", age(ov.oldest_waiting_seconds),
             "nothing waits" if oldest is None else "since it came in", oldest,
             alarm=(ov.oldest_waiting_seconds or 0) > 600),
        Card("dead", "Dead", _n(ov.dead), f"{_n(ov.quarantined)} quarantined",
             "/ui/deliveries?status=dead", alarm=ov.dead > 0),
        Card("runs", "Handler runs · hour", _n(ov.handler_runs_last_hour),
             "no runs" if rate is None else f"{rate:.1%} failed", alarm=bool(rate)),
        Card("ack", "Ack time p50 · hour", _ms(ov.ack_p50_seconds),
             f"p99 {_ms(ov.ack_p99_seconds)}"),
    ]  # fmt: skip


async def charts(app: TaskhookApp, window: str) -> dict[str, str] | None:
    try:
        dashboard_charts = importlib.import_module("receiver.charts").dashboard_charts
    except (ImportError, AttributeError):
        return None
    found: dict[str, str] = await dashboard_charts(app, window)
    return found


async def overview_page(request: Request, page: Page) -> Response:
    """Dashboard: the overview"""
    window = request.query_params.get("window", "hour")
    window = window if window in WINDOWS else "hour"
    ov = await overview(page.app)
    return page.render(
        "overview.html",
        {
            "title": "Overview",
            "cards": cards(ov),
            "charts": await charts(page.app, window),
            "window": window,
            "windows": WINDOWS,
            "at": iso(ov.at),
        },
    )


async def overview_json(request: Request, page: Page) -> Response:
    """Dashboard: the overview's live counters"""
    ov = await overview(page.app)
    shown = {c.name: {"value": c.value, "sub": c.sub, "alarm": c.alarm} for c in cards(ov)}
    return JSONResponse({"at": iso(ov.at), "cards": shown, "overview": ov.as_dict()})


def overview_routes() -> list[BaseRoute]:
    return [
        UiRoute("/ui/", overview_page, scope=READ, methods=("GET",), templates_dir=None),
        UiRoute(
            "/ui/overview.json",
            overview_json,
            scope=READ,
            methods=("GET",),
            templates_dir=None,
            json=True,
        ),
    ]
