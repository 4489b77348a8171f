"""The ``taskhook`` command line: the parser and the dispatch to each command's module."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Collection, Sequence
from typing import TYPE_CHECKING, Any

# Only what parsing needs is imported here: the app, pydantic, SQLAlchemy, uvicorn, rich and
# even asyncio are imported by the command that uses them, and a command's own module only
# when that command is parsed (`commands`), so `--help` and `--version` stay fast
# (`bench/cli_startup.py` measures them; plugin commands come from `plugin_cache`).
from receiver.cli import plugin_cache
from receiver.cli.commands import BUILTIN as COMMANDS
from receiver.cli.errors import ArgParser, guarded
from receiver.cli.options import Globals, split_globals

if TYPE_CHECKING:
    from receiver.registry import Command


DESCRIPTION = (
    "Receive annotation vendors' task callbacks: verified, stored before the answer, "
    "deduplicated, and given to handlers (the task ledger, alerts, the watchdog, yours)."
)
CONFIG_HELP = "TOML file (else $TASKHOOK_CONFIG, ./taskhook.toml, the built-in default)"


def _plugin_commands(config: str | None) -> tuple[Any, list[Command]]:
    """The app for `config`, and the commands its plugins offer (no secrets needed)."""
    from receiver.app import create_app
    from receiver.config import NO_SECRETS, load_settings

    app = create_app(load_settings(config, needs=NO_SECRETS))
    return app, list(app.registry.commands)


def _run_plugin_command(app: Any, command: Command, args: argparse.Namespace) -> int:
    from receiver.cli.common import with_app

    return with_app(app, lambda _: command.run(args))


def build_parser(
    commands: Sequence[Command] = (),
    epilog: str | None = None,
    *,
    stubs: Sequence[tuple[str, str]] = (),
    declare: Collection[str] | None = None,
) -> ArgParser:
    """The parser: built-in commands, then `commands` (plugins'), then `stubs`.

    Built-in commands in `declare` (all when None) get their arguments; the others, like
    `stubs` (plugin commands known by name and help line, from the cache), are listed by
    name and help line only. Enough for ``--help``, and nothing of theirs is imported.
    """
    parser = ArgParser(prog="taskhook", description=DESCRIPTION, epilog=epilog)
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
    for name, (text, where) in COMMANDS.items():
        if declare is None or name in declare:
            module, _, function = where.partition(":")
            getattr(importlib.import_module(module), function)(sub, common)
        else:
            sub.add_parser(name, help=text, parents=[common])
    for command in commands:
        plugin = sub.add_parser(command.name, help=command.help, parents=[common])
        command.configure(plugin, [common])
        plugin.set_defaults(plugin_command=command)
    for name, text in stubs:
        sub.add_parser(name, help=text, parents=[common])
    return parser


# Built-in commands run without plugins; `completion` lists theirs too, so it loads them.
BUILTIN = frozenset(COMMANDS) - {"completion"}


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
    listing = _Listing(found.config) if command is None else None  # --help, or nothing
    stubs = listing.cached() if listing is not None else None
    if command not in BUILTIN and stubs is None:
        # Plugin commands need the app (its config and plugins) even to be listed.
        try:
            app, commands = _plugin_commands(found.config)
        except (ConfigError, RegistryError) as exc:
            if command is not None:
                raise  # a plugin command (or a typo) cannot be told apart without plugins
            epilog = f"plugin commands are not listed: {exc}"
        else:
            if listing is not None:  # a miss: the next --help will not need the app
                listing.remember(app, commands)
    # Only the command being run needs its arguments declared; `completion` needs them all.
    declare = None if command == "completion" else {c for c in (command,) if c in COMMANDS}
    parser = build_parser(commands, epilog, stubs=stubs or (), declare=declare)
    args = parser.parse_args(rest)
    if args.command == "completion":  # made from this parser: plugins' commands included
        from receiver.cli import completion

        print(completion.script(args.shell, parser), end="")
        return 0
    args.config, args.quiet, args.debug = found.config, found.quiet, found.debug
    args.json = found.json or getattr(args, "json", False)
    if getattr(args, "plugin_command", None) is not None:
        return _run_plugin_command(app, args.plugin_command, args)
    if args.command in ("deliveries", "export", "prune"):
        return _run_async(args)
    code: int = args.func(args)
    return code


class _Listing:
    """The plugin commands `--help` lists, through the cache (`plugin_cache`)."""

    def __init__(self, config: str | None) -> None:
        self.where = plugin_cache.cache_file()
        self.digest = plugin_cache.key(config, _version())

    def cached(self) -> plugin_cache.Listed | None:
        return plugin_cache.lookup(self.where, self.digest)

    def remember(self, app: Any, commands: Sequence[Command]) -> None:
        files = plugin_cache.plugin_files(app.settings)
        plugin_cache.store(self.where, self.digest, plugin_cache.listed(commands), files)


def _run_async(args: argparse.Namespace) -> int:
    import asyncio

    from receiver.cli import prune
    from receiver.cli.common import settings_for
    from receiver.cli.deliveries import run_deliveries, run_export

    runs = {"deliveries": run_deliveries, "export": run_export, "prune": prune.run}
    return asyncio.run(runs[args.command](settings_for(args), args))


if __name__ == "__main__":
    sys.exit(main())
