"""The ``taskhook`` command line: the parser and the dispatch to each command's module."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from receiver.cli import completion, trigger

# Only what parsing needs is imported here: the app, pydantic, SQLAlchemy and uvicorn are
# imported by the command that uses them, so `--help` and `--version` stay fast.
from receiver.cli import prune as cli_prune
from receiver.cli.common import positive, settings_for, with_app
from receiver.cli.deliveries import add_parsers
from receiver.cli.errors import ArgParser, guarded, port
from receiver.cli.options import Globals, split_globals
from receiver.cli.reconcile import add_parser as add_reconcile_parser
from receiver.cli.replay import cmd_rebuild, cmd_replay
from receiver.cli.serve import cmd_migrate, cmd_serve
from receiver.cli.simulate import cmd_sign, cmd_simulate

if TYPE_CHECKING:
    from receiver.registry import Command


CONFIG_HELP = "TOML file (else $TASKHOOK_CONFIG, ./taskhook.toml, the built-in default)"


def _plugin_commands(config: str | None) -> tuple[Any, list[Command]]:
    """The app for `config`, and the commands its plugins offer (no secrets needed)."""
    from receiver.app import create_app
    from receiver.config import NO_SECRETS, load_settings

    app = create_app(load_settings(config, needs=NO_SECRETS))
    return app, list(app.registry.commands)


def _run_plugin_command(app: Any, command: Command, args: argparse.Namespace) -> int:
    return with_app(app, lambda _: command.run(args))


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
    complete = sub.add_parser(
        "completion", help="print a shell completion script (bash, zsh or fish)", parents=[common]
    )
    complete.add_argument("shell", choices=completion.SHELLS)

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
        type=positive,
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
    parser = build_parser(commands, epilog)
    args = parser.parse_args(rest)
    if args.command == "completion":  # made from this parser: plugins' commands included
        print(completion.script(args.shell, parser), end="")
        return 0
    args.config, args.quiet, args.debug = found.config, found.quiet, found.debug
    args.json = found.json or getattr(args, "json", False)
    if getattr(args, "plugin_command", None) is not None:
        return _run_plugin_command(app, args.plugin_command, args)
    if args.command in ("deliveries", "export", "prune", "reconcile"):
        return _run_async(args)
    code: int = args.func(args)
    return code


def _run_async(args: argparse.Namespace) -> int:
    from receiver.cli.deliveries import run_deliveries, run_export
    from receiver.cli.reconcile import run_reconcile

    runs = {"deliveries": run_deliveries, "export": run_export, "prune": cli_prune.run,
            "reconcile": run_reconcile}  # fmt: skip
    try:
        return asyncio.run(runs[args.command](settings_for(args), args))
    except KeyboardInterrupt:
        if args.command == "reconcile":
            return 0  # Ctrl-C ends the polling loop: the app has shut down cleanly
        raise


if __name__ == "__main__":
    sys.exit(main())
