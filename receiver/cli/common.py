"""What the commands share: the settings a command needs, logging, an app opened for work."""

from __future__ import annotations

import argparse
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from receiver.config import SecretNeeds, Settings

T = TypeVar("T")


def needs(args: argparse.Namespace) -> SecretNeeds:
    """The secrets the command verifies, signs or polls with: only those must be set."""
    from receiver.config import ALL_SECRETS, NO_SECRETS, SecretNeeds

    command = args.command
    if command == "serve":
        return ALL_SECRETS
    if command in ("replay", "trigger"):  # re-verifies or signs deliveries of any source
        return SecretNeeds(sources=None, pollers=frozenset(), api_keys=False)
    if command in ("sign", "simulate"):
        return SecretNeeds(sources=frozenset({args.source}), pollers=frozenset(), api_keys=False)
    if command == "reconcile":
        one = frozenset({args.source})
        return SecretNeeds(sources=one, pollers=one, api_keys=False)
    return NO_SECRETS


def positive(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError("must be a whole number of at least 1")
    return n


def settings_for(args: argparse.Namespace) -> Settings:
    from receiver.config import load_settings

    return load_settings(
        args.config, insecure_dev=getattr(args, "insecure_dev", False), needs=needs(args)
    )


def configure_logging_for(settings: Settings, level: str) -> None:
    from receiver.logs import configure_logging

    configure_logging(format=settings.log.format, level=level, secrets=settings.secret_values())


def with_app(app: Any, work: Callable[[Any], Awaitable[T]]) -> T:
    """Run `work(app)` with storage open and plugins started, no dispatcher polling."""
    import asyncio  # here, not at the top: `--help` never runs anything

    async def run() -> T:
        await app.open()
        try:
            return await work(app)
        finally:
            await app.storage.close()

    return asyncio.run(run())
