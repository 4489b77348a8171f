"""Charts as SVG text, drawn on the server: no script, no library, no request of their own.

The dashboard inlines them, under a strict Content-Security-Policy: so no ``<script>``, no
event attributes and no ``style=`` (blocked by ``style-src 'self'``): presentation
attributes only (``fill=``, ``stroke=``). A ``viewBox`` without a fixed size lets the page
scale them to a phone. Every text is escaped (source and series names come from config),
the SVG is ``role="img"`` with a ``<title>`` and a ``<desc>`` saying what it shows, and
each point's values are a native tooltip (a ``<title>`` per column).

`line_chart` and `stacked_bars` are pure; `dashboard_charts(app, window)` reads the series
(`receiver.series`) and draws the four charts of the dashboard.
"""

from __future__ import annotations

import functools
import hashlib
import html
import math
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from receiver import series
from receiver.overview import AppView

Points = Sequence[float | None]
Legend = Sequence[tuple[str, str, bool]]  # (name, colour, dashed)
Data = Mapping[str, Points]

# Okabe-Ito hues, darkened where needed to hold 3:1 against white (lines, bars).
PALETTE = ("#0072B2", "#C0392B", "#007A5E", "#AA4499", "#B36B00", "#3B7DBF", "#444444")
OUTCOME_COLOURS = {"accepted": "#007A5E", "duplicate": "#0072B2", "quarantined": "#B36B00",
                   "rejected": "#C0392B"}  # fmt: skip
_INK, _MUTED, _GRID, _AXIS = "#1F2937", "#4B5563", "#E5E7EB", "#9CA3AF"
_FONT = 'font-family="system-ui, -apple-system, Segoe UI, sans-serif"'
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")
_SI = ((1e18, "E"), (1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k"))


def esc(text: object) -> str:
    """Text safe in an XML element or attribute (characters XML forbids removed)."""
    return html.escape(_NOT_XML.sub("", str(text)), quote=True)


def _g(value: float) -> str:
    return f"{value:.3g}" if abs(value) < 1e3 else f"{value:.0f}"


# Durations in the unit that reads best below each limit (seconds -> its scale, name).
_DURATIONS = ((1e-3, 1e6, "µs"), (1, 1e3, "ms"), (120, 1, "s"), (7200, 1 / 60, "min"),
              (172800, 1 / 3600, "h"), (math.inf, 1 / 86400, "d"))  # fmt: skip


def _duration(value: float) -> tuple[float, str]:
    return next((scale, name) for limit, scale, name in _DURATIONS if abs(value) < limit)


def fmt(value: float, unit: str) -> str:
    """A tooltip number: durations for "s", percentages for "%", else SI."""
    if unit == "s":
        scale, name = _duration(value)
        return "0" if value == 0 else f"{_g(value * scale)} {name}"
    if unit == "%":
        return f"{_g(value)}%"
    for size, suffix in _SI:
        if abs(value) >= size:
            return f"{_g(value / size)}{suffix}"
    return _g(value)


def axis(high: float, unit: str) -> tuple[list[float], list[str]]:
    """Ticks from 0 to at least `high` and their labels; durations step roundly in one
    unit (0, 2, 4, 6 min rather than 0, 100, 200, 300 s)."""
    if unit != "s" or not math.isfinite(high) or high <= 0:
        ticks = nice_ticks(high)
        return ticks, [fmt(t, unit) for t in ticks]
    scale, name = _duration(high)
    shown = nice_ticks(high * scale)
    return [t / scale for t in shown], ["0" if t == 0 else f"{_g(t)} {name}" for t in shown]


def nice_ticks(high: float, count: int = 4) -> list[float]:
    """0 up to a round top at or above `high`, in about `count` round steps (1-2-2.5-5)."""
    if not math.isfinite(high) or high <= 0:
        high = 1.0
    raw = high / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw * (1 - 1e-9))
    steps = math.ceil(high / step - 1e-9)
    return [round(i * step, 12) for i in range(steps + 1)]


def _clean(points: Points, n: int) -> list[float | None]:
    """`n` values: non-finite ones are gaps, missing ones too."""
    out = [float(v) if v is not None and math.isfinite(v) else None for v in list(points)[:n]]
    return out + [None] * (n - len(out))


@dataclass(frozen=True, slots=True)
class _Frame:
    """The plot area inside the viewBox, and where slot i sits on it."""

    left: float
    right: float
    top: float
    bottom: float
    n: int
    bars: bool

    def x(self, i: int) -> float:
        if self.bars or self.n == 1:
            return self.left + (i + 0.5) * (self.right - self.left) / max(self.n, 1)
        return self.left + i * (self.right - self.left) / (self.n - 1)

    def y(self, value: float, top: float) -> float:
        return self.bottom - (self.bottom - self.top) * (value / top if top else 0.0)

    @property
    def column(self) -> float:
        return (self.right - self.left) / max(self.n, 1)

    def no_data(self) -> str:
        x, y = (self.left + self.right) / 2, (self.top + self.bottom) / 2
        return (f'<text x="{x:.1f}" y="{y:.1f}" font-size="13" fill="{_MUTED}" '
                f'text-anchor="middle">No data yet</text>')  # fmt: skip


def _legend(entries: Legend, width: int, y: float) -> tuple[str, float]:
    """Swatches and names laid out in rows; the markup and the y below it."""
    parts, x = [], 12.0
    for name, colour, dashed in entries:
        wide = 26 + 7 * len(name)
        if x + wide > width - 12 and x > 12:
            x, y = 12.0, y + 18
        dash = ' stroke-dasharray="5 3"' if dashed else ""
        parts.append(
            f'<line x1="{x:.1f}" y1="{y - 4:.1f}" x2="{x + 16:.1f}" y2="{y - 4:.1f}" '
            f'stroke="{colour}" stroke-width="3"{dash}/>'
            f'<text x="{x + 21:.1f}" y="{y:.1f}" font-size="12" fill="{_INK}">{esc(name)}</text>'
        )
        x += wide + 10
    return "".join(parts), y + 12


def _y_axis(frame: _Frame, high: float, unit: str, *, right: bool = False) -> tuple[str, float]:
    """The axis's markup and its top value."""
    ticks, texts = axis(high, unit)
    parts = []
    for tick, text in zip(ticks, texts, strict=True):
        y = frame.y(tick, ticks[-1])
        if not right:
            parts.append(f'<line x1="{frame.left:.1f}" y1="{y:.1f}" x2="{frame.right:.1f}" '
                         f'y2="{y:.1f}" stroke="{_GRID}" stroke-width="1"/>')  # fmt: skip
        x, anchor = (frame.right + 6, "start") if right else (frame.left - 6, "end")
        parts.append(f'<text x="{x:.1f}" y="{y + 4:.1f}" font-size="11" fill="{_MUTED}" '
                     f'text-anchor="{anchor}">{esc(text)}</text>')  # fmt: skip
    return "".join(parts), ticks[-1]


def _x_axis(frame: _Frame, labels: Sequence[str], ticks: Sequence[int] | None) -> str:
    if ticks is None:
        every = max(1, math.ceil(frame.n / 6))
        ticks = range(0, frame.n, every)
    parts = [f'<line x1="{frame.left:.1f}" y1="{frame.bottom:.1f}" x2="{frame.right:.1f}" '
             f'y2="{frame.bottom:.1f}" stroke="{_AXIS}" stroke-width="1"/>']  # fmt: skip
    for i in ticks:
        if 0 <= i < frame.n:
            x = frame.x(i)
            parts.append(
                f'<line x1="{x:.1f}" y1="{frame.bottom:.1f}" x2="{x:.1f}" '
                f'y2="{frame.bottom + 4:.1f}" stroke="{_AXIS}" stroke-width="1"/>'
                f'<text x="{x:.1f}" y="{frame.bottom + 17:.1f}" font-size="11" fill="{_MUTED}" '
                f'text-anchor="middle">{esc(labels[i])}</text>'
            )
    return "".join(parts)


def _tooltips(frame: _Frame, labels: Sequence[str], data: Data, units: Mapping[str, str]) -> str:
    """A transparent column per slot whose ``<title>`` is the slot's values."""
    width = frame.column
    parts = []
    for i in range(frame.n):
        said = ((name, values[i]) for name, values in data.items())
        text = ", ".join(
            f"{name} {'no data' if v is None else fmt(v, units[name])}" for name, v in said
        )
        x = frame.x(i) - width / 2
        parts.append(
            f'<rect x="{x:.1f}" y="{frame.top:.1f}" width="{width:.2f}" '
            f'height="{frame.bottom - frame.top:.1f}" fill="#FFFFFF" fill-opacity="0">'
            f"<title>{esc(labels[i])}: {esc(text)}</title></rect>"
        )
    return "".join(parts)


def _describe(data: Data, unit: str) -> str:
    def one(name: str, known: list[float]) -> str:
        if not known:
            return f"{name}: no data"
        return f"{name}: latest {fmt(known[-1], unit)}, peak {fmt(max(known), unit)}"

    return "; ".join(one(name, [v for v in vs if v is not None]) for name, vs in data.items())


def _svg(
    title: str, subtitle: str, desc: str, ident: str | None, size: tuple[int, int], body: str
) -> str:
    ident = ident or "chart-" + hashlib.blake2s(title.encode(), digest_size=4).hexdigest()
    ident = re.sub(r"[^A-Za-z0-9_-]", "-", ident)
    width, height = size
    sub = (f'<text x="12" y="38" font-size="12" fill="{_MUTED}">{esc(subtitle)}</text>'
           if subtitle else "")  # fmt: skip
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" '
        f'role="img" aria-labelledby="{ident}-title {ident}-desc" {_FONT} '
        f'preserveAspectRatio="xMidYMid meet">'
        f'<title id="{ident}-title">{esc(title)}</title>'
        f'<desc id="{ident}-desc">{esc(subtitle + ". " if subtitle else "")}{esc(desc)}</desc>'
        f'<rect x="0" y="0" width="{width}" height="{height}" fill="#FFFFFF"/>'
        f'<text x="12" y="20" font-size="15" font-weight="600" fill="{_INK}">{esc(title)}</text>'
        f"{sub}{body}</svg>"
    )


def _begin(
    entries: Legend, n: int, subtitle: str, size: tuple[int, int], *, bars: bool, right: bool
) -> tuple[_Frame, list[str]]:
    """The legend under the title, and the plot area below it."""
    legend, below = _legend(entries, size[0], 60 if subtitle else 42)
    width, height = size
    return _Frame(54, width - (54 if right else 14), below + 8, height - 28, n, bars), [legend]


def _path(frame: _Frame, values: list[float | None], top: float, colour: str, dash: bool) -> str:
    """A polyline broken at gaps; a lone point between gaps is a dot."""
    runs: list[list[tuple[float, float]]] = [[]]
    for i, value in enumerate(values):
        if value is None:
            runs.append([])
        else:
            runs[-1].append((frame.x(i), frame.y(value, top)))
    parts = []
    dashed = ' stroke-dasharray="5 3"' if dash else ""
    for run in runs:
        if len(run) == 1:
            parts.append(f'<circle cx="{run[0][0]:.1f}" cy="{run[0][1]:.1f}" r="2.5" '
                         f'fill="{colour}"/>')  # fmt: skip
        elif run:
            d = "M" + " L".join(f"{x:.1f} {y:.1f}" for x, y in run)
            parts.append(f'<path d="{d}" fill="none" stroke="{colour}" stroke-width="2" '
                         f'stroke-linejoin="round"{dashed}/>')  # fmt: skip
    return "".join(parts)


def line_chart(
    title: str,
    points_by_series: Mapping[str, Points],
    labels: Sequence[str],
    unit: str,
    *,
    secondary: Mapping[str, Points] | None = None,
    secondary_unit: str = "",
    subtitle: str = "",
    colours: Sequence[str] = PALETTE,
    ticks: Sequence[int] | None = None,
    ident: str | None = None,
    size: tuple[int, int] = (480, 250),
) -> str:
    """Lines over `labels` (one value per label; None is a gap). `secondary` series are
    dashed, on an axis of their own at the right (`secondary_unit`). `ticks`: the indices
    of `labels` to print (default: about six, evenly spaced)."""
    n = len(labels)
    left = {name: _clean(p, n) for name, p in points_by_series.items()}
    right = {name: _clean(p, n) for name, p in (secondary or {}).items()}
    names = [*left, *right]
    tint = {name: colours[i % len(colours)] for i, name in enumerate(names)}
    shown = [(name, tint[name], False) for name in left]
    shown += [(f"{name} (right axis)", tint[name], True) for name in right]
    frame, body = _begin(shown, n, subtitle, size, bars=False, right=bool(right))
    every = [v for values in (*left.values(), *right.values()) for v in values if v is not None]
    if not every:
        body += [_x_axis(frame, labels, ticks), frame.no_data()]
    else:
        high = max((v for s in left.values() for v in s if v is not None), default=0.0)
        marks, top = _y_axis(frame, high, unit)
        high = max((v for s in right.values() for v in s if v is not None), default=0.0)
        other, other_top = _y_axis(frame, high, secondary_unit, right=True)
        body += [marks, other if right else "", _x_axis(frame, labels, ticks)]
        body += [_path(frame, v, top, tint[name], False) for name, v in left.items()]
        body += [_path(frame, v, other_top, tint[name], True) for name, v in right.items()]
        units = {**dict.fromkeys(left, unit), **dict.fromkeys(right, secondary_unit)}
        every_series = {**left, **right}
        body.append(_tooltips(frame, labels, every_series, units))
    desc = "; ".join(filter(None, [_describe(left, unit), _describe(right, secondary_unit)]))
    return _svg(title, subtitle, desc, ident, size, "".join(body))


def stacked_bars(
    title: str,
    stacks: Mapping[str, Points],
    labels: Sequence[str],
    unit: str,
    *,
    subtitle: str = "",
    colours: Mapping[str, str] | None = None,
    ticks: Sequence[int] | None = None,
    ident: str | None = None,
    size: tuple[int, int] = (480, 250),
) -> str:
    """One bar per label, the series stacked in the order given (gaps count as 0)."""
    n = len(labels)
    data = {name: [v or 0.0 for v in _clean(p, n)] for name, p in stacks.items()}
    tint = {
        name: (colours or {}).get(name) or PALETTE[i % len(PALETTE)] for i, name in enumerate(data)
    }
    shown = [(name, tint[name], False) for name in data]
    frame, body = _begin(shown, n, subtitle, size, bars=True, right=False)
    totals = [sum(values[i] for values in data.values()) for i in range(n)]
    if n == 0:
        body += [_x_axis(frame, labels, ticks), frame.no_data()]
    else:
        marks, top = _y_axis(frame, max(totals, default=0.0), unit)
        body += [marks, _x_axis(frame, labels, ticks)]
        width = frame.column * 0.8
        for i in range(n):
            base = 0.0
            for name, values in data.items():
                if values[i] > 0:
                    y0, y1 = frame.y(base, top), frame.y(base + values[i], top)
                    body.append(f'<rect x="{frame.x(i) - width / 2:.1f}" y="{y1:.1f}" '
                                f'width="{width:.2f}" height="{max(y0 - y1, 0.5):.1f}" '
                                f'fill="{tint[name]}"/>')  # fmt: skip
                    base += values[i]
        body.append(_tooltips(frame, labels, data, dict.fromkeys(data, unit)))
    desc = _describe(data, unit)
    return _svg(title, subtitle, desc, ident, size, "".join(body))


_OUTCOMES = {"accepted": series.ACCEPTED, "duplicate": series.DUPLICATE,
             "quarantined": series.QUARANTINED, "rejected": series.REJECTED}  # fmt: skip
CHART_NAMES = (*_OUTCOMES.values(), series.RUNS_OK, series.RUNS_FAILED, series.BACKLOG_DEPTH,
               series.BACKLOG_OLDEST, series.ACK)  # fmt: skip


async def dashboard_charts(app: AppView, window: Literal["hour", "day"]) -> dict[str, str]:
    """The dashboard's four charts over the last hour (a point a minute) or day (a point
    per 10 minutes), in UTC: ``deliveries``, ``backlog``, ``failures``, ``latency``."""
    shape = series.WINDOWS[window]
    memo = app.monitor.memo
    data = await series.read_window(app.storage, CHART_NAMES, shape, app.clock(), memo=memo)
    minutes = data.slot_minutes()
    labels = [time.strftime("%H:%M", time.gmtime(m * 60)) for m in minutes]
    ticks = [i for i, m in enumerate(minutes) if m % (10 if window == "hour" else 180) == 0]
    when = "last hour, UTC" if window == "hour" else "last 24 h, 10-minute points, UTC"
    line = functools.partial(line_chart, labels=labels, ticks=ticks, subtitle=when)

    def per_minute(name: str) -> list[float | None]:
        return [(v or 0.0) / shape.step for v in data.points(name)]

    def rate(ok: float | None, failed: float | None) -> float | None:
        runs = (ok or 0.0) + (failed or 0.0)
        return 100 * (failed or 0.0) / runs if runs else None

    outcomes = {label: per_minute(name) for label, name in _OUTCOMES.items()}
    runs = zip(data.points(series.RUNS_OK), data.points(series.RUNS_FAILED), strict=True)
    latency = {q: data.quantiles(series.ACK, v) for q, v in (("p50", 0.5), ("p99", 0.99))}
    return {
        "deliveries": stacked_bars(
            "Deliveries per minute by outcome", outcomes, labels, "", subtitle=when,
            colours=OUTCOME_COLOURS, ticks=ticks, ident="chart-deliveries",
        ),
        "backlog": line(
            "Backlog: depth and oldest delivery's age",
            {"waiting": data.points(series.BACKLOG_DEPTH)}, unit="",
            secondary={"oldest age": data.points(series.BACKLOG_OLDEST)},
            secondary_unit="s", subtitle=f"{when}, peaks", ident="chart-backlog",
        ),
        "failures": line(
            "Handler failure rate", {"failed runs": [rate(o, f) for o, f in runs]}, unit="%",
            ident="chart-failures",
        ),
        "latency": line("Ack latency", latency, unit="s", ident="chart-latency"),
    }  # fmt: skip


__all__ = [
    "CHART_NAMES",
    "axis",
    "dashboard_charts",
    "fmt",
    "line_chart",
    "nice_ticks",
    "stacked_bars",
]
