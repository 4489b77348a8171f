"""Progress of long commands, readable by a person: live on a terminal, plain lines otherwise.

On a terminal (stderr a tty, and ``NO_COLOR`` / ``TERM=dumb`` not set against it) a rich
progress display shows each phase — a replay's "stored" then "applied to the ledger" — with
its count, its total when known, the rate and the time left. Off a terminal (CI, a pipe, a
log file) the same phases are reported as a plain line every `every` seconds and at their
end, so a long run never looks hung and a log stays greppable.

The board keeps its phases, so a command interrupted by Ctrl-C can say how far each got.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import TextIO

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


def interactive(stream: TextIO = sys.stderr) -> bool:
    return stream.isatty() and os.environ.get("TERM") != "dumb"


class Phase:
    """One phase's count; `advance`/`update` as work is done."""

    def __init__(self, board: Board, name: str, total: int | None) -> None:
        self._board = board
        self.name = name
        self.total = total
        self.done = 0
        self.started = time.monotonic()
        self._task: TaskID | None = None
        self._said = self.started

    def advance(self, n: int = 1) -> None:
        self.update(self.done + n)

    def update(self, done: int, total: int | None = None) -> None:
        self.done = done
        if total is not None:
            self.total = total
        self._board.show(self)

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def rate(self) -> float:
        return self.done / max(1e-9, self.elapsed())


class Board:
    """The phases of one command (see the module docstring)."""

    def __init__(self, stream: TextIO = sys.stderr, *, every: float = 5.0) -> None:
        self._stream = stream
        self._every = every
        self._live: Progress | None = None
        self.phases: dict[str, Phase] = {}
        if interactive(stream):
            console = Console(file=stream, no_color=bool(os.environ.get("NO_COLOR")))
            self._live = Progress(
                TextColumn("{task.description:<12}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("{task.fields[rate]:>10}"), TimeElapsedColumn(),
                TimeRemainingColumn(), console=console, transient=False,
            )  # fmt: skip
            self._live.start()

    def phase(self, name: str, total: int | None = None) -> Phase:
        phase = Phase(self, name, total)
        self.phases[name] = phase
        if self._live is not None:
            phase._task = self._live.add_task(name, total=total, rate="")
        return phase

    def show(self, phase: Phase, *, final: bool = False) -> None:
        if self._live is not None and phase._task is not None:
            self._live.update(
                phase._task, completed=phase.done, total=phase.total,
                rate=f"{phase.rate():,.0f}/s",
            )  # fmt: skip
            return
        now = time.monotonic()
        if final or now - phase._said >= self._every:
            phase._said = now
            of = f" of {phase.total:,}" if phase.total is not None else ""
            print(f"{phase.name}: {phase.done:,}{of} ({phase.rate():,.0f}/s)", file=self._stream,
                  flush=True)  # fmt: skip

    def done(self, name: str) -> int:
        """How much the phase `name` did (0 if it never began)."""
        phase = self.phases.get(name)
        return phase.done if phase is not None else 0

    def finish(self, phase: Phase) -> None:
        self.show(phase, final=True)

    def close(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None


@contextmanager
def board(stream: TextIO = sys.stderr, *, every: float = 5.0) -> Iterator[Board]:
    shown = Board(stream, every=every)
    try:
        yield shown
    finally:
        shown.close()


async def drain_showing(
    shown: Board, backlog: Callable[[], Awaitable[int]], drain: Callable[[], Awaitable[None]]
) -> Phase:
    """Run `drain()` (a dispatcher's), showing as an "applied" phase how much of what was
    waiting (`backlog()`, asked twice a second) is no longer waiting."""
    waiting = await backlog()
    applied = shown.phase("applied", waiting)
    work = asyncio.ensure_future(drain())
    try:
        while not work.done():
            await asyncio.wait({work}, timeout=0.5)
            left = await backlog()
            applied.update(max(0, waiting - left))
        await work
    finally:
        if not work.done():  # interrupted: the drain ends with us, not after us
            work.cancel()
            await asyncio.gather(work, return_exceptions=True)
    applied.update(waiting)
    shown.finish(applied)
    return applied
