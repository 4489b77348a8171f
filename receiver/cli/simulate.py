"""``taskhook sign`` and ``taskhook simulate``: playing a vendor (``trigger``: `trigger`)."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

from receiver.cli.common import settings_for
from receiver.cli.errors import fail


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
    from receiver.replay import replay_remote
    from receiver.simulate import traffic

    settings = settings_for(args)
    records = traffic(args.tasks, args.seed, args.source)
    summary = asyncio.run(
        replay_remote(settings, records, url=args.to, rate=args.rate, concurrency=args.concurrency)
    )
    print(summary.render())
    return 1 if summary.rejected else 0
