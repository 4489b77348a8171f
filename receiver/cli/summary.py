"""The summary a long command ends with: a table for people, one JSON object for scripts.

`replay`, `rebuild`, `export` and `reconcile --once` each build a `Report` and `emit` it. On a
terminal it is a rich table (colour off under ``NO_COLOR``); elsewhere the same rows as plain
``name  value`` lines, aligned, one fact a line, so ``grep '^applied '`` finds one. Either way
the table comes under the one-line headline the command printed before it had a table: scripts
and logs that grep for that line keep working. ``--quiet`` prints nothing; ``--json`` prints
the report's `data` instead.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

Value = int | float | str | None


@dataclass(frozen=True, slots=True)
class Report:
    headline: str  # the command's one-line summary, as it was before the table
    rows: Sequence[tuple[str, Value]]
    notes: Sequence[str] = ()  # details that are sentences, not numbers (rejection reasons)
    data: Mapping[str, Any] = field(default_factory=dict)  # what --json prints


def seconds(elapsed: float) -> str:
    return f"{elapsed:.1f}s"


def per_second(count: int, elapsed: float) -> str:
    return f"{count / max(elapsed, 1e-9):.0f}/s"


def emit_for(report: Report, args: argparse.Namespace, stream: TextIO | None = None) -> None:
    """`emit`, as the global ``--json`` and ``--quiet`` say (a namespace built in code may
    have neither)."""
    json_mode, quiet = getattr(args, "json", False), getattr(args, "quiet", False)
    emit(report, json_mode=json_mode, quiet=quiet, stream=stream)


def emit(report: Report, *, json_mode: bool, quiet: bool, stream: TextIO | None = None) -> None:
    """Print `report` on `stream` (stdout by default) as the options and the stream ask."""
    out = sys.stdout if stream is None else stream
    if json_mode:
        print(json.dumps(report.data), file=out, flush=True)
    elif quiet:
        return
    elif out.isatty() and os.environ.get("TERM") != "dumb":
        _rich(report, out)
    else:
        print(plain(report), file=out, flush=True)


def plain(report: Report) -> str:
    width = max((len(name) for name, _ in report.rows), default=0)
    lines = [report.headline, *report.notes]
    lines += [f"{name.ljust(width)}  {_text(value, grouped=False)}" for name, value in report.rows]
    return "\n".join(lines)


def _text(value: Value, *, grouped: bool) -> str:
    if value is None:
        return "-"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}" if grouped else str(value)  # plain: whole numbers for awk
    if isinstance(value, float):
        return f"{value:,.2f}" if grouped else f"{value:.2f}"
    return str(value)


def _rich(report: Report, out: TextIO) -> None:
    from rich import box
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    # Text, never markup: a headline may hold "[sources.x]", a reason anything a vendor sent.
    console = Console(file=out, no_color=bool(os.environ.get("NO_COLOR")), highlight=False)
    console.print(Text(report.headline, style="bold"))
    table = Table(show_header=False, box=box.ROUNDED)
    table.add_column(style="cyan")
    table.add_column(justify="right")
    for name, value in report.rows:
        table.add_row(Text(name), Text(_text(value, grouped=True)))
    console.print(table)
    for note in report.notes:
        console.print(Text(note))
