"""``taskhook replay`` and ``taskhook rebuild``: stored or recorded deliveries again.

Both show their phases while they run (`receiver.progress`) and end with a summary table
(`summary`); Ctrl-C ends a replay with exit 130 and one line saying how far it got.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from typing import TYPE_CHECKING, Any

from receiver.cli.commands import help_of
from receiver.cli.common import configure_logging_for, settings_for, with_app
from receiver.cli.errors import INTERRUPTED, fail, interrupted_leftovers
from receiver.cli.summary import Report, emit_for, per_second, seconds

if TYPE_CHECKING:
    from receiver.progress import Board
    from receiver.rebuild import RebuildSummary
    from receiver.replay import Summary


def add_replay(sub: Any, common: argparse.ArgumentParser) -> None:
    replay = sub.add_parser("replay", help=help_of("replay"), parents=[common])
    replay.add_argument("paths", nargs="+", help="JSON Lines files or folders of *.json bodies")
    replay.add_argument("--source", help="source of bare bodies (and of lines without one)")
    replay.add_argument("--to", metavar="URL", help="POST to a running receiver, re-signed")
    replay.add_argument("--dry-run", action="store_true", help="verify and parse only")
    replay.set_defaults(func=cmd_replay)


def add_rebuild(sub: Any, common: argparse.ArgumentParser) -> None:
    rebuild = sub.add_parser("rebuild", help=help_of("rebuild"), parents=[common])
    rebuild.add_argument("--handler", metavar="NAME", help="run only this handler over history")
    rebuild.set_defaults(func=cmd_rebuild)


def cmd_replay(args: argparse.Namespace) -> int:
    import asyncio

    from receiver.app import create_app
    from receiver.progress import board
    from receiver.replay import count_recordings, read_recordings, replay_local, replay_remote

    settings = settings_for(args)
    configure_logging_for(settings, "warning")
    records = read_recordings(args.paths, source=args.source)  # checks the paths first
    total = count_recordings(args.paths)
    began = time.monotonic()
    with board() as shown:
        try:
            if args.to:
                summary = asyncio.run(
                    replay_remote(settings, records, url=args.to, total=total, shown=shown)
                )
            else:
                # The replay drains the dispatcher itself; no background polling beside it.
                quiet = settings.dispatch.model_copy(update={"enabled": False})
                app = create_app(settings.model_copy(update={"dispatch": quiet}))
                summary = with_app(app, lambda a: replay_local(
                    a, records, dry_run=args.dry_run, total=total, shown=shown))  # fmt: skip
        except KeyboardInterrupt:
            shown.close()  # the live display stops before the line is written
            summary = None
    if summary is None:
        interrupted_leftovers()
        return fail(f"interrupted: {_so_far(shown, total, args)}", INTERRUPTED)
    elapsed = time.monotonic() - began
    emit_for(_replay_report(summary, args, shown, elapsed), args)
    if getattr(args, "quiet", False) and summary.rejected:
        fail(f"{sum(summary.rejected.values())} of {summary.total} deliveries rejected")
    return 1 if summary.rejected else 0


def _so_far(shown: Board, total: int | None, args: argparse.Namespace) -> str:
    """How far an interrupted replay got: what every settled store or send says."""
    of = f" of {total:,}" if total else ""
    if args.to:
        return f"{shown.done('sent'):,}{of} deliveries sent"
    if args.dry_run:
        return f"{shown.done('stored'):,}{of} deliveries checked"
    applied = shown.done("applied")
    return f"{shown.done('stored'):,}{of} deliveries stored, {applied:,} applied"


def _replay_report(
    summary: Summary, args: argparse.Namespace, shown: Board, elapsed: float
) -> Report:
    verb = "would be accepted" if args.dry_run else "accepted"
    headline, *notes = summary.render(verb=verb).splitlines()
    rows: list[tuple[str, int | str | None]] = [
        ("deliveries", summary.total), (verb, summary.accepted),
        ("duplicate", summary.duplicate), ("rejected", sum(summary.rejected.values())),
    ]  # fmt: skip
    data = {"deliveries": summary.total, "accepted": summary.accepted,
            "duplicate": summary.duplicate, "rejected": dict(summary.rejected),
            "dry_run": args.dry_run, "seconds": round(elapsed, 3)}  # fmt: skip
    if not (args.to or args.dry_run):
        rows.append(("applied", shown.done("applied")))
        data["applied"] = shown.done("applied")
    rows += [("elapsed", seconds(elapsed)), ("rate", per_second(summary.total, elapsed))]
    return Report(headline, rows, notes, data)


def cmd_rebuild(args: argparse.Namespace) -> int:
    from receiver.app import create_app
    from receiver.progress import board
    from receiver.rebuild import backfill, rebuild

    settings = settings_for(args)
    configure_logging_for(settings, "warning")
    app = create_app(settings)
    began = time.monotonic()
    with board() as shown:
        summary = with_app(
            app,
            lambda a: backfill(a, args.handler, shown=shown) if args.handler
            else rebuild(a, shown=shown),
        )  # fmt: skip
    elapsed = time.monotonic() - began
    emit_for(_rebuild_report(summary, args, shown.done("read"), elapsed), args)
    return 1 if summary.runs_failed else 0


def _rebuild_report(
    summary: RebuildSummary, args: argparse.Namespace, read: int, elapsed: float
) -> Report:
    done = "backfilled " + args.handler + ": " if args.handler else "rebuilt: "
    rows: list[tuple[str, int | str | None]] = [
        ("read", read), ("deliveries", summary.deliveries), ("events", summary.events),
    ]  # fmt: skip
    if args.handler:
        rows += [("runs ok", summary.runs_ok), ("runs failed", summary.runs_failed)]
    rows += [("elapsed", seconds(elapsed)), ("rate", per_second(read, elapsed))]
    data = dataclasses.asdict(summary) | {"handler": args.handler, "read": read,
                                          "seconds": round(elapsed, 3)}  # fmt: skip
    return Report(done + summary.render(), rows, (), data)
