"""``taskhook replay`` and ``taskhook rebuild``: stored or recorded deliveries again."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json

from receiver.cli.common import configure_logging_for, settings_for, with_app


def cmd_replay(args: argparse.Namespace) -> int:
    from receiver.app import create_app
    from receiver.replay import read_recordings, replay_local, replay_remote

    settings = settings_for(args)
    configure_logging_for(settings, "warning")
    records = read_recordings(args.paths, source=args.source)
    if args.to:
        summary = asyncio.run(replay_remote(settings, records, url=args.to))
    else:
        # The replay drains the dispatcher itself; no background polling beside it.
        quiet = settings.dispatch.model_copy(update={"enabled": False})
        app = create_app(settings.model_copy(update={"dispatch": quiet}))
        summary = with_app(app, lambda a: replay_local(a, records, dry_run=args.dry_run))
    if getattr(args, "json", False):
        print(json.dumps({"deliveries": summary.total, "accepted": summary.accepted,
                          "duplicate": summary.duplicate, "rejected": dict(summary.rejected),
                          "dry_run": args.dry_run}))  # fmt: skip
    else:
        print(summary.render(verb="would be accepted" if args.dry_run else "accepted"))
    return 1 if summary.rejected else 0


def cmd_rebuild(args: argparse.Namespace) -> int:
    from receiver.app import create_app
    from receiver.rebuild import backfill, rebuild

    settings = settings_for(args)
    configure_logging_for(settings, "warning")
    app = create_app(settings)
    summary = with_app(app, lambda a: backfill(a, args.handler) if args.handler else rebuild(a))
    if getattr(args, "json", False):
        print(json.dumps(dataclasses.asdict(summary) | {"handler": args.handler}))
    else:
        done = "backfilled " + args.handler + ": " if args.handler else "rebuilt: "
        print(done + summary.render())
    return 1 if summary.runs_failed else 0
