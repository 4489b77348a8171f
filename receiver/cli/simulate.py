"""``taskhook sign`` and ``taskhook simulate``: playing a vendor (``trigger``: `trigger`)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from receiver.cli.commands import help_of
from receiver.cli.common import positive, settings_for
from receiver.cli.errors import INTERRUPTED, fail, interrupted_leftovers


def add_sign(sub: Any, common: argparse.ArgumentParser) -> None:
    sign = sub.add_parser("sign", help=help_of("sign"), parents=[common])
    sign.add_argument("--source", required=True)
    sign.add_argument("file")
    sign.set_defaults(func=cmd_sign)


def add_simulate(sub: Any, common: argparse.ArgumentParser) -> None:
    simulate = sub.add_parser("simulate", help=help_of("simulate"), parents=[common])
    simulate.add_argument("--to", metavar="URL", required=True)
    simulate.add_argument("--source", default="refonte", help="target source (signs for it)")
    simulate.add_argument("--tasks", type=int, default=100, help="labelled items to simulate")
    simulate.add_argument("--rate", type=float, default=0.0, help="deliveries/s (0: no limit)")
    simulate.add_argument("--seed", type=int, default=1)
    simulate.add_argument(
        "--concurrency",
        type=positive,
        default=1,
        help="requests in flight at once (one item's deliveries stay in order)",
    )
    simulate.set_defaults(func=cmd_simulate)


def cmd_sign(args: argparse.Namespace) -> int:
    import time

    from receiver import verify
    from receiver.records import new_id

    settings = settings_for(args)
    source = settings.sources.get(args.source)
    if source is None:
        known = ", ".join(sorted(settings.sources)) or "none"
        return fail(f"no source {args.source!r} (configured: {known})", 2)
    body = Path(args.file).read_bytes()
    headers = {"content-type": "application/json"}
    if source.scheme != "none":
        headers |= verify.sign(
            source.scheme, body, source.secret_values()[0], header=source.header_name,
            msg_id=new_id("msg_"), timestamp=int(time.time()),
        )  # fmt: skip
    for name, value in headers.items():
        print(f"{name}: {value}")
    return 0


def cmd_simulate(args: argparse.Namespace) -> int:
    import asyncio

    from receiver.progress import board
    from receiver.replay import replay_remote
    from receiver.simulate import traffic

    settings = settings_for(args)
    # No total: how many duplicates and late retries the seed makes is known only by making
    # them all, which costs as long as the sending does without a --rate.
    records = traffic(args.tasks, args.seed, args.source)
    with board() as shown:
        try:
            summary = asyncio.run(replay_remote(
                settings, records, url=args.to, rate=args.rate, concurrency=args.concurrency,
                shown=shown,
            ))  # fmt: skip
        except KeyboardInterrupt:
            shown.close()  # the live display stops before the line is written
            summary = None
    if summary is None:
        interrupted_leftovers()
        return fail(f"interrupted: {shown.done('sent'):,} deliveries sent", INTERRUPTED)
    if not getattr(args, "quiet", False):
        print(summary.render())
    return 1 if summary.rejected else 0
