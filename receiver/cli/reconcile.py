"""`taskhook reconcile SOURCE [--once]`: poll a vendor API and feed what changed.

With ``--once`` it makes one pass, lets the dispatcher apply what was fed (so the ledger
shows it on return) and ends with a summary table (``--json``: the pass's summary as JSON),
showing its phases meanwhile: "read" (records fetched; the vendor gives no total) and
"applied". Without it, it keeps polling every ``reconcile.interval_seconds`` with the
dispatcher running, until interrupted: the same loop `serve` runs for sources with
``reconcile.enabled``. Either way Ctrl-C ends it with exit 130 and one line of what was done.

A ``--once`` pass that quarantined anything it read (a task the poller could not read, or a
snapshot the intake could not parse) exits 1 with the reasons on stderr. Everything else it
read is stored and applied all the same, and the rest is stored quarantined, not dropped;
but the ledger lacks it, and a script must not take that for success.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import sys
import time
from collections import Counter
from typing import TYPE_CHECKING, Any

from receiver.cli.commands import help_of
from receiver.cli.errors import INTERRUPTED, fail
from receiver.cli.summary import Report, Value, emit_for, per_second, seconds

if TYPE_CHECKING:  # the pipeline is imported when a command runs, not to parse arguments
    from receiver.config import Settings
    from receiver.progress import Board
    from receiver.reconcile import Summary


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    reconcile = sub.add_parser("reconcile", help=help_of("reconcile"), parents=[common])
    reconcile.add_argument("source", help="a source with a [sources.NAME.reconcile] table")
    reconcile.add_argument("--once", action="store_true", help="one pass, then exit")
    reconcile.set_defaults(func=cmd_reconcile)


class Tally:
    """What this command's passes have done so far, for the line Ctrl-C ends it with."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.began = time.monotonic()
        self.board: Board | None = None  # --once: its "applied" phase
        self._earlier: Counter[str] = Counter()  # finished passes
        self._current: Summary | None = None

    def page(self, summary: Summary) -> None:
        if summary is not self._current:  # a new pass: the last one is over
            self._earlier += self._counts()
            self._current = summary
        if self.board is not None:
            self.board.phases["read"].update(summary.fetched)

    def _counts(self) -> Counter[str]:
        now = self._current
        return Counter(read=now.fetched, fed=now.fed) if now is not None else Counter()

    def line(self, *, once: bool) -> str:
        done = self._earlier + self._counts()
        said = f"{self.source}: {done['read']:,} records read, {done['fed']:,} fed"
        if once:
            applied = self.board.done("applied") if self.board is not None else 0
            return f"{said}, {applied:,} applied"
        return f"{said}; stopped cleanly after {time.monotonic() - self.began:.0f}s of polling"


def cmd_reconcile(args: argparse.Namespace) -> int:
    import asyncio

    from receiver.cli.common import settings_for

    settings = settings_for(args)
    tally = Tally(args.source)
    try:
        return asyncio.run(run_reconcile(settings, args, tally))
    except KeyboardInterrupt:
        # asyncio.run has cancelled the pass, closed the board and shut the app down.
        return fail(f"interrupted: {tally.line(once=args.once)}", INTERRUPTED)


def quarantined(summary: Summary) -> bool:
    """Say on stderr what the pass quarantined, and why; whether it quarantined anything."""
    count = sum(summary.quarantined.values())
    if not count:
        return False
    was = "was" if count == 1 else "were"
    print(
        f"taskhook: {summary.source}: {count} of the {summary.fetched} records read {was} "
        "quarantined (stored, not applied):",
        file=sys.stderr,
    )
    for reason, times in summary.quarantined.most_common():
        print(f"  {reason}" + (f" ({times} times)" if times > 1 else ""), file=sys.stderr)
    print(
        f"taskhook: see `taskhook deliveries list --status quarantined --source {summary.source}`",
        file=sys.stderr,
    )
    return True


async def run_reconcile(settings: Settings, args: argparse.Namespace, tally: Tally) -> int:
    from receiver.app import create_app
    from receiver.logs import configure_logging

    source = settings.sources.get(args.source)
    if source is None or source.reconcile is None:
        polled = sorted(n for n, s in settings.sources.items() if s.reconcile is not None)
        print(
            f"taskhook: source {args.source!r} has no [sources.{args.source}.reconcile] table "
            f"(sources that do: {', '.join(polled) or 'none'})",
            file=sys.stderr,
        )
        return 2
    configure_logging(
        format=settings.log.format,
        level="warning" if args.once else "info",
        secrets=settings.secret_values(),
    )
    if args.once:
        quiet = settings.dispatch.model_copy(update={"enabled": False})
        return await _once(create_app(settings.model_copy(update={"dispatch": quiet})), args,
                           tally)  # fmt: skip
    # This command polls the one source it names; the serve-loop pollers stay off.
    sources = {
        name: src.model_copy(update={"reconcile": src.reconcile.model_copy(
            update={"enabled": False})}) if src.reconcile else src
        for name, src in settings.sources.items()
    }  # fmt: skip
    app = create_app(settings.model_copy(update={"sources": sources}))
    async with app.started():
        reconciler = app.reconciler(args.source)
        try:
            await reconciler.forever(source.reconcile.interval_seconds, tally.page)
        finally:
            await reconciler.poller.aclose()
    return 0


async def _once(app: Any, args: argparse.Namespace, tally: Tally) -> int:
    from receiver.errors import VendorError
    from receiver.progress import board, drain_showing

    await app.open()
    reconciler = app.reconciler(args.source)
    try:
        with board() as shown:
            tally.board = shown
            read = shown.phase("read")
            summary = await reconciler.once(tally.page)
            read.update(summary.fetched)
            shown.finish(read)
            drain = functools.partial(app.dispatcher.drain, within=3600, wait_for_retries=False)
            await drain_showing(shown, app.storage.backlog, drain)
    except VendorError as exc:
        print(f"taskhook: {exc}", file=sys.stderr)
        return 1
    finally:
        await reconciler.poller.aclose()
        await app.storage.close()
    elapsed = time.monotonic() - tally.began
    emit_for(_report(summary, shown.done("applied"), elapsed), args)
    return 1 if quarantined(summary) else 0


def _report(summary: Summary, applied: int, elapsed: float) -> Report:
    headline, *notes = summary.render().splitlines()
    rows: list[tuple[str, Value]] = [
        ("read", summary.fetched), ("fed", summary.fed), ("unchanged", summary.unchanged),
        ("duplicate", summary.duplicate), ("quarantined", sum(summary.quarantined.values())),
        ("applied", applied), ("cursor", summary.cursor), ("elapsed", seconds(elapsed)),
        ("rate", per_second(summary.fetched, elapsed)),
    ]  # fmt: skip
    data = dataclasses.asdict(summary) | {
        "quarantined": dict(summary.quarantined), "applied": applied,
        "seconds": round(elapsed, 3),
    }  # fmt: skip
    return Report(headline, rows, [note.strip() for note in notes], data)
