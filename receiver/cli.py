"""The ``taskhook`` command line."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from receiver import cli_prune
from receiver.cli_deliveries import add_parsers, run_deliveries, run_export
from receiver.cli_reconcile import add_parser as add_reconcile_parser
from receiver.cli_reconcile import run_reconcile
from receiver.config import Settings, load_settings
from receiver.errors import ConfigError, RegistryError, StorageUnavailable
from receiver.logs import configure_logging
from receiver.redaction import display_url
from receiver.registry import Command

T = TypeVar("T")


def _settings(args: argparse.Namespace) -> Settings:
    return load_settings(args.config, insecure_dev=getattr(args, "insecure_dev", False))


def cmd_serve(args: argparse.Namespace) -> int:
    from receiver.app import create_app
    from receiver.server import build_config, run

    settings = _settings(args)
    configure_logging(
        format=settings.log.format, level=settings.log.level, secrets=settings.secret_values()
    )
    app = create_app(settings)
    # The front door's limits ([http]) are enforced by receiver.server's protocol.
    config = build_config(
        app,
        settings,
        host=args.host,
        port=args.port,
        proxy_headers=args.proxy_headers,
        forwarded_allow_ips=args.forwarded_allow_ips,
        access_log=args.access_log,
        log_level=settings.log.level,
        graceful_timeout=args.graceful_timeout,
    )
    run(config)
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    from receiver.app import create_app

    settings = _settings(args)

    async def run() -> None:
        # The app's schema, then each plugin's tables (the ledger's): what `serve` would do.
        app = create_app(settings)
        await app.open()
        await app.storage.close()

    asyncio.run(run())
    print(f"schema up to date: {display_url(settings.database.url)}")
    return 0


def cmd_sign(args: argparse.Namespace) -> int:
    import time

    from receiver import verify
    from receiver.records import new_id

    settings = _settings(args)
    source = settings.sources.get(args.source)
    if source is None:
        known = ", ".join(sorted(settings.sources)) or "none"
        print(f"taskhook: no source {args.source!r} (configured: {known})", file=sys.stderr)
        return 2
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


def _with_app(app: Any, work: Callable[[Any], Awaitable[T]]) -> T:
    """Run `work(app)` with storage open and plugins started, no dispatcher polling."""

    async def run() -> T:
        await app.open()
        try:
            return await work(app)
        finally:
            await app.storage.close()

    return asyncio.run(run())


def cmd_replay(args: argparse.Namespace) -> int:
    from receiver.app import create_app
    from receiver.replay import read_recordings, replay_local, replay_remote

    settings = _settings(args)
    configure_logging(format=settings.log.format, level="warning", secrets=settings.secret_values())
    records = read_recordings(args.paths, source=args.source)
    if args.to:
        summary = asyncio.run(replay_remote(settings, records, url=args.to))
    else:
        # The replay drains the dispatcher itself; no background polling beside it.
        quiet = settings.dispatch.model_copy(update={"enabled": False})
        app = create_app(settings.model_copy(update={"dispatch": quiet}))
        summary = _with_app(app, lambda a: replay_local(a, records, dry_run=args.dry_run))
    print(summary.render(verb="would be accepted" if args.dry_run else "accepted"))
    return 1 if summary.rejected else 0


def cmd_rebuild(args: argparse.Namespace) -> int:
    from receiver.app import create_app
    from receiver.rebuild import backfill, rebuild

    settings = _settings(args)
    configure_logging(format=settings.log.format, level="warning", secrets=settings.secret_values())
    app = create_app(settings)
    summary = _with_app(app, lambda a: backfill(a, args.handler) if args.handler else rebuild(a))
    print(("backfilled " + args.handler + ": " if args.handler else "rebuilt: ") + summary.render())
    return 1 if summary.runs_failed else 0


def cmd_simulate(args: argparse.Namespace) -> int:
    from receiver.replay import replay_remote
    from receiver.simulate import traffic

    settings = _settings(args)
    records = traffic(args.tasks, args.seed, args.source)
    summary = asyncio.run(replay_remote(settings, records, url=args.to, rate=args.rate))
    print(summary.render())
    return 1 if summary.rejected else 0


def _plugin_commands(argv: Sequence[str]) -> tuple[Any, list[Command]]:
    """The app for the configuration named in `argv`, and the commands its plugins offer."""
    from receiver.app import create_app

    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config")
    known, _ = pre.parse_known_args(argv)
    settings = load_settings(known.config)
    app = create_app(settings)
    return app, list(app.registry.commands)


def _run_plugin_command(app: Any, command: Command, args: argparse.Namespace) -> int:
    return _with_app(app, lambda _: command.run(args))


def build_parser(commands: Sequence[Command] = ()) -> argparse.ArgumentParser:
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

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", help="TOML file (else $TASKHOOK_CONFIG, ./taskhook.toml)")
    add_parsers(sub, common)
    add_reconcile_parser(sub, common)
    cli_prune.add_parser(sub, common)

    sign = sub.add_parser(
        "sign",
        help="print the headers a source expects for a body (for curl -H @file)",
        parents=[common],
    )
    sign.add_argument("--source", required=True)
    sign.add_argument("file")
    sign.set_defaults(func=cmd_sign)

    replay = sub.add_parser(
        "replay",
        help="recorded deliveries through the pipeline (or --to a receiver)",
        parents=[common],
    )
    replay.add_argument("paths", nargs="+", help="JSON Lines files or folders of *.json bodies")
    replay.add_argument("--source", help="source of bare bodies (and of lines without one)")
    replay.add_argument("--to", metavar="URL", help="POST to a running receiver, re-signed")
    replay.add_argument("--dry-run", action="store_true", help="verify and parse only")
    replay.set_defaults(func=cmd_replay)

    simulate = sub.add_parser(
        "simulate",
        help="play a vendor: realistic signed task lifecycles to a receiver",
        parents=[common],
    )
    simulate.add_argument("--to", metavar="URL", required=True)
    simulate.add_argument("--source", default="refonte", help="target source (signs for it)")
    simulate.add_argument("--tasks", type=int, default=100, help="labelled items to simulate")
    simulate.add_argument("--rate", type=float, default=0.0, help="deliveries/s (0: no limit)")
    simulate.add_argument("--seed", type=int, default=1)
    simulate.set_defaults(func=cmd_simulate)

    rebuild = sub.add_parser(
        "rebuild",
        help="rebuild the ledger from stored deliveries (or backfill one handler)",
        parents=[common],
    )
    rebuild.add_argument("--handler", metavar="NAME", help="run only this handler over history")
    rebuild.set_defaults(func=cmd_rebuild)

    for command in commands:
        plugin = sub.add_parser(command.name, help=command.help)
        command.configure(plugin, [common])
        plugin.set_defaults(plugin_command=command)
    return parser


BUILTIN = frozenset(
    {
        "serve",
        "migrate",
        "deliveries",
        "export",
        "sign",
        "replay",
        "rebuild",
        "simulate",
        "reconcile",
        "prune",
        "-h",
        "--help",
    }
)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    app: Any = None
    commands: list[Command] = []
    if argv and argv[0] not in BUILTIN:
        # Plugin commands need the app (its config and plugins) even to be listed.
        try:
            app, commands = _plugin_commands(argv)
        except (ConfigError, RegistryError) as exc:
            print(f"taskhook: {exc}", file=sys.stderr)
            return 2
    args = build_parser(commands).parse_args(argv)
    try:
        if getattr(args, "plugin_command", None) is not None:
            return _run_plugin_command(app, args.plugin_command, args)
        if args.command == "deliveries":
            return asyncio.run(run_deliveries(_settings(args), args))
        if args.command == "export":
            return asyncio.run(run_export(_settings(args), args))
        if args.command == "prune":
            return asyncio.run(cli_prune.run(_settings(args), args))
        if args.command == "reconcile":
            try:
                return asyncio.run(run_reconcile(_settings(args), args))
            except KeyboardInterrupt:
                return 0  # Ctrl-C ends the polling loop: the app has shut down cleanly

        code: int = args.func(args)
    except (ConfigError, RegistryError, StorageUnavailable) as exc:
        print(f"taskhook: {exc}", file=sys.stderr)
        return 2
    return code


if __name__ == "__main__":
    sys.exit(main())
