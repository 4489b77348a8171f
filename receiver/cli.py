"""The ``taskhook`` command line."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence

from receiver.config import Settings, load_settings
from receiver.errors import ConfigError, RegistryError, StorageUnavailable
from receiver.logs import configure_logging


def _settings(args: argparse.Namespace) -> Settings:
    return load_settings(args.config, insecure_dev=getattr(args, "insecure_dev", False))


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from receiver.app import create_app

    settings = _settings(args)
    configure_logging(format=settings.log.format, level=settings.log.level)
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=args.host,
        port=args.port,
        proxy_headers=args.proxy_headers,
        forwarded_allow_ips=args.forwarded_allow_ips,
        access_log=args.access_log,
        log_level=settings.log.level,
        timeout_graceful_shutdown=args.graceful_timeout,
        timeout_keep_alive=5,
    )
    uvicorn.Server(config).run()
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    from receiver.storage import open_storage

    settings = _settings(args)

    async def run() -> None:
        storage = open_storage(settings.database.url)
        await storage.open()
        await storage.close()

    asyncio.run(run())
    print(f"schema up to date: {settings.database.url.split('@')[-1]}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="taskhook", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the receiver")
    serve.add_argument("--config", help="TOML file (else $TASKHOOK_CONFIG, ./taskhook.toml)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
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

    migrate = sub.add_parser("migrate", help="apply schema migrations and exit")
    migrate.add_argument("--config")
    migrate.set_defaults(func=cmd_migrate)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except (ConfigError, RegistryError, StorageUnavailable) as exc:
        print(f"taskhook: {exc}", file=sys.stderr)
        return 2
    return code


if __name__ == "__main__":
    sys.exit(main())
