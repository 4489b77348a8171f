"""``taskhook trigger EVENT --to URL``: one realistic, signed delivery (`receiver.trigger`)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from receiver.cli.commands import help_of
from receiver.trigger import EVENTS, TriggerError, send


def configure(subparsers: Any, common: argparse.ArgumentParser) -> None:
    """``taskhook trigger``'s parser (``common``: the shared ``--config``)."""
    trigger = subparsers.add_parser("trigger", parents=[common], help=help_of("trigger"))
    trigger.add_argument("event", metavar="EVENT", help=f"one of: {', '.join(EVENTS)}")
    trigger.add_argument("--to", metavar="URL", required=True, help="the receiver's base URL")
    trigger.add_argument("--source", help="the source to send as (default: one that sends it)")
    trigger.set_defaults(func=command)


def command(args: argparse.Namespace) -> int:
    import asyncio

    return asyncio.run(run(args))


async def run(args: argparse.Namespace) -> int:
    """Send the delivery; print each answer. 0 when every one was accepted, 1 when the
    receiver refused one, 2 when it could not be built."""
    import httpx

    from receiver.config import SecretNeeds, load_settings

    # The sources' secrets (to sign), not the pollers' or the API's.
    needs = SecretNeeds(sources=None, pollers=frozenset(), api_keys=False)
    settings = load_settings(args.config, needs=needs)
    try:
        answers = await send(args.event, args.to, settings, args.source)
    except TriggerError as exc:
        print(f"taskhook: {exc}", file=sys.stderr)
        return 2
    except httpx.HTTPError as exc:
        print(f"taskhook: {args.to}: request failed: {exc!r}", file=sys.stderr)
        return 1
    for status, text in answers:
        print(f"{status} {text}")
    return 0 if all(status < 300 for status, _ in answers) else 1
