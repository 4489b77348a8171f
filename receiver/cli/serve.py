"""``taskhook serve`` and ``taskhook migrate``."""

from __future__ import annotations

import argparse
import time
from typing import Any

from receiver.cli.commands import help_of
from receiver.cli.common import configure_logging_for, settings_for
from receiver.cli.errors import fail, port


def add_serve(sub: Any, common: argparse.ArgumentParser) -> None:
    serve = sub.add_parser("serve", help=help_of("serve"), parents=[common])
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=port, default=8000, help="0 to 65535 (default 8000)")
    serve.add_argument(
        "--insecure-dev",
        action="store_true",
        help="with no config and no TASKHOOK_REFONTE_SECRET, accept unauthenticated deliveries",
    )
    serve.add_argument("--proxy-headers", action="store_true", help="trust X-Forwarded-* headers")
    serve.add_argument("--forwarded-allow-ips", default="127.0.0.1")
    serve.add_argument("--access-log", action="store_true", help="log every HTTP request")
    serve.add_argument("--graceful-timeout", type=float, default=10.0)
    serve.set_defaults(func=cmd_serve)


def add_migrate(sub: Any, common: argparse.ArgumentParser) -> None:
    migrate = sub.add_parser("migrate", help=help_of("migrate"), parents=[common])
    migrate.set_defaults(func=cmd_migrate)


def cmd_serve(args: argparse.Namespace) -> int:
    from receiver.app import create_app
    from receiver.server import bind_socket, build_config, probe_storage, run

    settings = settings_for(args)
    configure_logging_for(settings, "warning" if args.quiet else settings.log.level)
    # The configuration's plugins, the database and the port are each checked before anything
    # starts, so a mistake is one line, not uvicorn's "Application startup failed" with a
    # traceback or a port that is not the one asked for; what the configuration says first.
    app = create_app(settings)
    probe_storage(settings.database.url)
    sock = bind_socket(args.host, args.port)
    # The front door's limits ([http]) are enforced by receiver.server's protocol.
    config = build_config(
        app,
        settings,
        host=args.host,
        port=args.port,
        proxy_headers=args.proxy_headers,
        forwarded_allow_ips=args.forwarded_allow_ips,
        access_log=args.access_log,
        log_level="warning" if args.quiet else settings.log.level,
        graceful_timeout=args.graceful_timeout,
    )
    began = time.monotonic()
    try:
        run(config, sock)
    except KeyboardInterrupt:
        # uvicorn has shut down gracefully, then re-raises the SIGINT it captured.
        seconds = time.monotonic() - began
        return fail(f"interrupted: stopped cleanly after {seconds:.0f}s of serving", 130)
    except SystemExit as exc:  # uvicorn's own start-up failure, already logged
        if exc.code in (0, None):
            return 0
        return fail("the receiver did not start (the log above says why)")
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    import asyncio

    from receiver.app import create_app

    settings = settings_for(args)

    async def run() -> None:
        # The app's schema, then each plugin's tables (the ledger's): what `serve` would do.
        app = create_app(settings)
        await app.open()
        await app.storage.close()

    from receiver.redaction import display_url

    asyncio.run(run())
    if not args.quiet:
        print(f"schema up to date: {display_url(settings.database.url)}")
    return 0
