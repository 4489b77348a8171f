"""Global options, accepted before or after the subcommand.

argparse only knows an option at the level it was declared, and a sub-parser's defaults
overwrite the values the top level parsed; plugin parsers may also declare ``--json``
themselves. So the global options are taken out of the argument list first, wherever they
are, and the rest is parsed as usual.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

FLAGS = ("--json", "--quiet", "--debug", "--version")


class Globals(NamedTuple):  # not a dataclass: `dataclasses` alone costs --help 10 ms
    config: str | None = None
    json: bool = False  # machine-readable output where a command has it
    quiet: bool = False  # no summary lines, warnings and errors only in the log
    debug: bool = False  # tracebacks instead of one-line errors
    version: bool = False
    help: bool = False  # -h/--help anywhere


def split_globals(argv: Sequence[str]) -> tuple[Globals, list[str]]:
    """The global options in `argv` (anywhere before a ``--``) and the remaining arguments."""
    found: dict[str, object] = {}
    rest: list[str] = []
    args = list(argv)
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            rest += args[i:]
            break
        if arg in FLAGS:
            found[arg[2:]] = True
        elif arg == "--config" and i + 1 < len(args):
            found["config"] = args[i + 1]
            i += 1
        elif arg.startswith("--config="):
            found["config"] = arg.partition("=")[2]
        else:
            if arg in ("-h", "--help"):
                found["help"] = True
            rest.append(arg)
        i += 1
    return Globals(**found), rest  # type: ignore[arg-type]
