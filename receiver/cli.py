"""The ``taskhook`` command line."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

# Only what parsing needs is imported here: the app, pydantic, SQLAlchemy and uvicorn are
# imported by the command that uses them, so `--help` and `--version` stay fast.
from receiver import cli_prune, trigger
from receiver.cli_deliveries import add_parsers
from receiver.cli_errors import ArgParser, fail, guarded, port
from receiver.cli_options import Globals, split_globals
from receiver.cli_reconcile import add_parser as add_reconcile_parser

if TYPE_CHECKING:
    from receiver.config import SecretNeeds, Settings
    from receiver.registry import Command

T = TypeVar("T")


def _needs(args: argparse.Namespace) -> SecretNeeds:
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


def _positive(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError("must be a whole number of at least 1")
    return n


def _settings(args: argparse.Namespace) -> Settings:
    from receiver.config import load_settings

    return load_settings(
        args.config, insecure_dev=getattr(args, "insecure_dev", False), needs=_needs(args)
    )


def _configure_logging(settings: Settings, level: str) -> None:
    from receiver.logs import configure_logging

    configure_logging(format=settings.log.format, level=level, secrets=settings.secret_values())


def cmd_serve(args: argparse.Namespace) -> int:
    from receiver.app import create_app
    from receiver.server import bind_socket, build_config, probe_storage, run

    settings = _settings(args)
    _configure_logging(settings, "warning" if args.quiet else settings.log.level)
    # Both checked before anything starts, so the mistake is one line, not uvicorn's
    # "Application startup failed" with a traceback or a port that is not the one asked for.
    sock = bind_socket(args.host, args.port)
    probe_storage(settings.database.url)
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
    from receiver.app import create_app

    settings = _settings(args)

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


def cmd_sign(args: argparse.Namespace) -> int:
    import time

    from receiver import verify
    from receiver.records import new_id

    settings = _settings(args)
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
    _configure_logging(settings, "warning")
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
    _configure_logging(settings, "warning")
    app = create_app(settings)
    summary = _with_app(app, lambda a: backfill(a, args.handler) if args.handler else rebuild(a))
    print(("backfilled " + args.handler + ": " if args.handler else "rebuilt: ") + summary.render())
    return 1 if summary.runs_failed else 0


def cmd_simulate(args: argparse.Namespace) -> int:
    from receiver.replay import replay_remote
    from receiver.simulate import traffic

    settings = _settings(args)
    records = traffic(args.tasks, args.seed, args.source)
    summary = asyncio.run(
        replay_remote(settings, records, url=args.to, rate=args.rate, concurrency=args.concurrency)
    )
    print(summary.render())
    return 1 if summary.rejected else 0


def _plugin_commands(config: str | None) -> tuple[Any, list[Command]]:
    """The app for `config`, and the commands its plugins offer (no secrets needed)."""
    from receiver.app import create_app
    from receiver.config import NO_SECRETS, load_settings

    app = create_app(load_settings(config, needs=NO_SECRETS))
    return app, list(app.registry.commands)


def _run_plugin_command(app: Any, command: Command, args: argparse.Namespace) -> int:
    return _with_app(app, lambda _: command.run(args))


CONFIG_HELP = "TOML file (else $TASKHOOK_CONFIG, ./taskhook.toml, the built-in default)"


def build_parser(commands: Sequence[Command] = (), epilog: str | None = None) -> ArgParser:
    parser = ArgParser(prog="taskhook", description=__doc__, epilog=epilog)
    # Global options: `split_globals` takes them out wherever they are; declared here (and on
    # `common`, with no default that could overwrite them) so that --help shows them.
    parser.add_argument("--config", metavar="FILE", help=CONFIG_HELP)
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    parser.add_argument("--json", action="store_true", help="JSON output where a command has it")
    parser.add_argument("--quiet", action="store_true", help="no summaries; warnings only")
    parser.add_argument("--debug", action="store_true", help="tracebacks instead of one line")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    common = ArgParser(add_help=False)
    common.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS, help=CONFIG_HELP)

    serve = sub.add_parser("serve", help="run the receiver", parents=[common])
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

    migrate = sub.add_parser("migrate", help="apply schema migrations and exit", parents=[common])
    migrate.set_defaults(func=cmd_migrate)

    add_parsers(sub, common)
    add_reconcile_parser(sub, common)
    cli_prune.add_parser(sub, common)
    trigger.configure(sub, common)

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
    simulate.add_argument(
        "--concurrency",
        type=_positive,
        default=1,
        help="requests in flight at once (one item's deliveries stay in order)",
    )
    simulate.set_defaults(func=cmd_simulate)

    rebuild = sub.add_parser(
        "rebuild",
        help="rebuild the ledger from stored deliveries (or backfill one handler)",
        parents=[common],
    )
    rebuild.add_argument("--handler", metavar="NAME", help="run only this handler over history")
    rebuild.set_defaults(func=cmd_rebuild)

    for command in commands:
        plugin = sub.add_parser(command.name, help=command.help, parents=[common])
        command.configure(plugin, [common])
        plugin.set_defaults(plugin_command=command)
    return parser


BUILTIN = frozenset(
    {"serve", "migrate", "deliveries", "export", "sign", "replay", "rebuild", "simulate",
     "reconcile", "prune", "trigger"}
)  # fmt: skip


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("taskhook")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


def main(argv: Sequence[str] | None = None) -> int:
    found, rest = split_globals(sys.argv[1:] if argv is None else argv)
    if found.version:
        print(f"taskhook {_version()}")
        return 0
    return guarded(lambda: _main(found, rest), debug=found.debug)


def _main(found: Globals, rest: list[str]) -> int:
    from receiver.errors import ConfigError, RegistryError

    command = next((a for a in rest if not a.startswith("-")), None)
    app: Any = None
    commands: list[Command] = []
    epilog = None
    if command not in BUILTIN:
        # Plugin commands need the app (its config and plugins) even to be listed.
        try:
            app, commands = _plugin_commands(found.config)
        except (ConfigError, RegistryError) as exc:
            if command is not None:
                raise  # a plugin command (or a typo) cannot be told apart without plugins
            epilog = f"plugin commands are not listed: {exc}"
    args = build_parser(commands, epilog).parse_args(rest)
    args.config, args.quiet, args.debug = found.config, found.quiet, found.debug
    args.json = found.json or getattr(args, "json", False)
    if getattr(args, "plugin_command", None) is not None:
        return _run_plugin_command(app, args.plugin_command, args)
    if args.command in ("deliveries", "export", "prune", "reconcile"):
        return _run_async(args)
    code: int = args.func(args)
    return code


def _run_async(args: argparse.Namespace) -> int:
    from receiver.cli_deliveries import run_deliveries, run_export
    from receiver.cli_reconcile import run_reconcile

    runs = {"deliveries": run_deliveries, "export": run_export, "prune": cli_prune.run,
            "reconcile": run_reconcile}  # fmt: skip
    try:
        return asyncio.run(runs[args.command](_settings(args), args))
    except KeyboardInterrupt:
        if args.command == "reconcile":
            return 0  # Ctrl-C ends the polling loop: the app has shut down cleanly
        raise


if __name__ == "__main__":
    sys.exit(main())
