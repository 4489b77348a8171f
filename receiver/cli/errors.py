"""How the command line reports a user's mistake: one line on stderr and an exit status.

A traceback is for bugs, not for a missing file or a port in use; ``--debug`` brings it back.
Usage errors (argparse's, and ours raised as `UsageError`) exit 2, like argparse itself.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import NoReturn

USAGE = 2
INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for a command ended by Ctrl-C


class UsageError(Exception):
    """A mistake in how the command was called: one line, exit 2."""


class ArgParser(argparse.ArgumentParser):
    """argparse, but a bad argument is one line naming the command and where to get help
    (argparse prints the whole usage block first, often several lines)."""

    def error(self, message: str) -> NoReturn:
        command = self.prog.removeprefix("taskhook").strip()
        where = f"{command}: " if command else ""
        print(f"taskhook: {where}{message} (see `{self.prog} --help`)", file=sys.stderr)
        sys.exit(USAGE)


def int_between(low: int, high: int | None = None) -> Callable[[str], int]:
    """An argparse type: an integer in [low, high], refused as a usage error otherwise."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < low or (high is not None and value > high):
            bound = f"from {low} to {high}" if high is not None else f"at least {low}"
            raise argparse.ArgumentTypeError(f"{value} is out of range (must be {bound})")
        return value

    parse.__name__ = "integer"  # argparse names the type in its messages
    return parse


port = int_between(0, 65535)


def interrupted_leftovers() -> None:
    """Collect what Ctrl-C left unfinished, quietly: connection attempts cancelled before they
    started would otherwise each print "coroutine ... was never awaited" after our one line."""
    import gc
    import warnings

    # For the rest of the process too: what is still referenced goes at interpreter exit.
    warnings.filterwarnings("ignore", "coroutine .* was never awaited", RuntimeWarning)
    gc.collect()


def fail(message: str, code: int = 1) -> int:
    print(f"taskhook: {message}", file=sys.stderr)
    return code


def guarded(run: Callable[[], int], *, debug: bool) -> int:
    """`run()`, with what users cause turned into one line; anything else is a bug and
    keeps its traceback under ``--debug`` only."""
    from receiver.errors import (
        ConfigError,
        RegistryError,
        ReplayError,
        StorageUnavailable,
        TaskhookError,
        VendorError,
    )

    try:
        return run()
    except KeyboardInterrupt:
        return fail("interrupted", INTERRUPTED)
    except (UsageError, ConfigError, RegistryError) as exc:
        return fail(str(exc), USAGE)
    except (StorageUnavailable, VendorError, ReplayError) as exc:
        if debug:
            raise
        return fail(str(exc), USAGE if isinstance(exc, StorageUnavailable) else 1)
    except TaskhookError as exc:  # our own errors carry a message meant for the user
        if debug:
            raise
        return fail(str(exc))
    except OSError as exc:  # a file named on the command line: missing, a folder, unreadable
        if debug:
            raise
        where = f"{exc.filename}: " if exc.filename else ""
        return fail(f"{where}{exc.strerror or exc}")
    except Exception as exc:
        if debug:
            raise
        return fail(f"{type(exc).__name__}: {exc} (run with --debug for the traceback)")
