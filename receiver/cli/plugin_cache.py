"""Plugin commands' names and help lines, cached so that ``taskhook --help`` needs no app.

Listing ``tasks`` (the ledger's) and other plugins' commands means loading the plugins, and
that means building the app (settings, SQLAlchemy, Starlette): most of a second. What they
list changes only when the config, the installed entry points or the plugins' code does, so
it is kept in ``$XDG_CACHE_HOME/taskhook/plugin-commands.json`` (``~/.cache/taskhook`` when
that is unset) under a hash of what chooses the plugins: taskhook's version, the interpreter
and its import path, the config file as the command line resolves it (``--config``,
``$TASKHOOK_CONFIG``, ``./taskhook.toml``) with its mtime and size, and the
``taskhook.handlers`` entry points. Each entry also records the plugins' module files, and
one ``stat`` each tells on every read whether one changed. Only ``--help`` and a bare
``taskhook`` read it; running a plugin command (or ``completion``) loads the plugins.

Reading it imports nothing of the app. A cache that cannot be read is a miss, one that
cannot be written is not written: neither is an error.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from receiver.config import Settings

FORMAT = 1  # of the file; another format is a miss
KEEP = 16  # entries (configs x environments) kept, the most recently written
GROUP = "taskhook.handlers"  # receiver.plugins.ENTRY_POINT_GROUP, without importing the app
Listed = list[tuple[str, str]]  # (name, help) of each plugin command, in the parser's order


def cache_file(environ: Mapping[str, str] = os.environ) -> Path | None:
    base = environ.get("XDG_CACHE_HOME", "")
    try:
        # The XDG spec: a relative $XDG_CACHE_HOME is invalid and ignored.
        root = Path(base) if os.path.isabs(base) else Path.home() / ".cache"
    except RuntimeError:  # no home directory to speak of
        return None
    return root / "taskhook" / "plugin-commands.json"


def config_file(config: str | None, environ: Mapping[str, str] = os.environ) -> str | None:
    """The config file `receiver.config.load_settings` would read, or None (the built-in
    default); resolved the same way, which a test holds it to."""
    chosen = config or environ.get("TASKHOOK_CONFIG")
    if chosen is None and Path("taskhook.toml").is_file():
        chosen = "taskhook.toml"
    return chosen


def key(config: str | None, version: str, environ: Mapping[str, str] = os.environ) -> str:
    from importlib.metadata import entry_points

    chosen = config_file(config, environ)
    where: list[Any] | None = None
    if chosen is not None:
        path = os.path.abspath(chosen)
        try:
            st = os.stat(path)
            where = [path, st.st_mtime_ns, st.st_size]
        except OSError:
            where = [path]  # a missing config: never cached (loading it fails), but a key
    points = sorted((ep.name, ep.value) for ep in entry_points(group=GROUP))
    # sys.path: the same config names other modules from another folder or environment.
    doc = [FORMAT, version, sys.prefix, sys.path, where, points]
    return hashlib.sha256(json.dumps(doc).encode()).hexdigest()


def lookup(path: Path | None, digest: str) -> Listed | None:
    """The commands cached under `digest`, if every file recorded with them is unchanged."""
    entry = _entries(path).get(digest)
    try:
        for file, stamp in entry["files"].items():  # type: ignore[index]
            st = os.stat(file)
            if [st.st_mtime_ns, st.st_size] != stamp:
                return None
        return [(str(name), str(text)) for name, text in entry["commands"]]  # type: ignore[index]
    except (OSError, KeyError, TypeError, ValueError, AttributeError):
        return None  # no entry, a changed or missing file, or not our format


def store(path: Path | None, digest: str, commands: Listed, files: Mapping[str, list[int]]) -> None:
    if path is None:
        return
    entries = _entries(path)
    entries.pop(digest, None)  # re-inserted last: the newest
    entries[digest] = {"commands": commands, "files": dict(files)}
    for old in list(entries)[:-KEEP]:
        del entries[old]
    temporary = path.with_name(f".{path.name}.{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary.write_text(json.dumps({"format": FORMAT, "entries": entries}), "utf-8")
        os.replace(temporary, path)  # readers see the old file or the new one, never half
    except OSError:  # not writable (or full): no cache, and nothing else changes
        with contextlib.suppress(OSError):
            temporary.unlink(missing_ok=True)


def plugin_files(settings: Settings) -> dict[str, list[int]]:
    """The loaded module files of the plugins `settings` names, with their mtime and size.

    All of each plugin's top-level package counts: its commands may live in any module of it
    (the ledger's ``tasks`` is in ``handlers.ledger.cli``, registered from ``handlers.ledger``).
    """
    from receiver.plugins import discovered

    names = [spec.partition(":")[0] for spec in settings.handlers]
    if settings.entry_points:
        names += [ep.module for ep in discovered()]
    packages = {name.split(".")[0] for name in names}
    files: dict[str, list[int]] = {}
    for name in list(sys.modules):
        file = getattr(sys.modules.get(name), "__file__", None)
        if name.split(".")[0] in packages and file:
            try:
                st = os.stat(file)
            except OSError:
                continue  # a module without a file of its own to watch
            files[os.path.abspath(file)] = [st.st_mtime_ns, st.st_size]
    return files


def _entries(path: Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    try:
        doc = json.loads(path.read_text("utf-8"))
    except (OSError, ValueError):
        return {}
    entries = doc.get("entries") if isinstance(doc, dict) and doc.get("format") == FORMAT else None
    return entries if isinstance(entries, dict) else {}


def listed(commands: Sequence[Any]) -> Listed:
    return [(command.name, command.help) for command in commands]
