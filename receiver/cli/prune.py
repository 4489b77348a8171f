"""``taskhook prune [--dry-run]``: apply ``[retention]`` once, now, and say what went.

The same pass the pruner inside ``serve`` makes every ``retention.interval_seconds``
(`receiver.prune`), with storage open and plugins started (so what they keep is known) and
no dispatcher. It runs whether or not ``retention.enabled`` is set: that switch is for the
background pruner. With ``--dry-run`` nothing is removed; the counts say what would be.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from receiver.cli.commands import help_of

if TYPE_CHECKING:  # settings and logging (pydantic, structlog) load when the command runs
    from receiver.config import Settings


def add_parser(subparsers: Any, common: argparse.ArgumentParser) -> None:
    prune = subparsers.add_parser("prune", help=help_of("prune"), parents=[common])
    prune.add_argument("--dry-run", action="store_true", help="count what would go; remove nothing")


async def run(settings: Settings, args: argparse.Namespace) -> int:
    from receiver.app import create_app
    from receiver.logs import configure_logging

    configure_logging(format=settings.log.format, level="warning", secrets=settings.secret_values())
    quiet = settings.dispatch.model_copy(update={"enabled": False})
    app = create_app(settings.model_copy(update={"dispatch": quiet}))
    await app.open()
    try:
        summary = await app.pruner.run(dry_run=args.dry_run)
    finally:
        await app.storage.close()
    print(summary.render(dry_run=args.dry_run))
    return 0
