"""`taskhook reconcile SOURCE [--once]`: poll a vendor API and feed what changed.

With ``--once`` it makes one pass, lets the dispatcher apply what was fed (so the ledger
shows it on return) and prints a summary. Without it, it keeps polling every
``reconcile.interval_seconds`` with the dispatcher running, until interrupted: the same
loop `serve` runs for sources with ``reconcile.enabled``.

A ``--once`` pass that quarantined anything it read (a task the poller could not read, or a
snapshot the intake could not parse) exits 1 with the reasons on stderr. Everything else it
read is stored and applied all the same, and the rest is stored quarantined, not dropped;
but the ledger lacks it, and a script must not take that for success.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

from receiver.config import Settings
from receiver.errors import VendorError
from receiver.logs import configure_logging

if TYPE_CHECKING:  # the pipeline is imported when a command runs, not to parse arguments
    from receiver.reconcile import Summary


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    reconcile = sub.add_parser(
        "reconcile",
        help="poll a vendor API (TaskMonk, Clarifai, or Refonte when callbacks stopped)",
        parents=[common],
    )
    reconcile.add_argument("source", help="a source with a [sources.NAME.reconcile] table")
    reconcile.add_argument("--once", action="store_true", help="one pass, then exit")


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


async def run_reconcile(settings: Settings, args: argparse.Namespace) -> int:
    from receiver.app import create_app

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
        app = create_app(settings.model_copy(update={"dispatch": quiet}))
        await app.open()
        reconciler = app.reconciler(args.source)
        try:
            summary = await reconciler.once()
            await app.dispatcher.drain(within=3600, wait_for_retries=False)
        except VendorError as exc:
            print(f"taskhook: {exc}", file=sys.stderr)
            return 1
        finally:
            await reconciler.poller.aclose()
            await app.storage.close()
        print(summary.render())
        return 1 if quarantined(summary) else 0
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
            await reconciler.forever(source.reconcile.interval_seconds)
        finally:
            await reconciler.poller.aclose()
    return 0
