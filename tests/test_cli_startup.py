"""Issue 14 (9): ``taskhook --help`` under 150 ms. Plugin commands are listed from a cache
(``$XDG_CACHE_HOME/taskhook``) without importing the plugins or building the app; a changed
plugin file or config, or a real use of a plugin command, loads them as before. Real
processes, bare environments; the time itself is measured by bench/cli_startup.py."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from receiver.cli import plugin_cache
from tests.test_cli_summary import bare_env, taskhook

PLUGIN = '''
"""A plugin that says, in a file beside it, each time it is imported."""
import argparse
from pathlib import Path

from receiver.registry import Command

with Path(__file__).with_name("imports.log").open("a") as log:
    log.write("imported\\n")


def register(registry):
    def configure(parser, common):
        parser.add_argument("--twice", action="store_true")

    async def run(args: argparse.Namespace) -> int:
        print("probed twice" if args.twice else "probed")
        return 0

    registry.add_command(Command("probe", "look at what the probe plugin saw", configure, run))
'''


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "probe_plugin.py").write_text(PLUGIN)
    (tmp_path / "taskhook.toml").write_text(
        'entry_points = false\nhandlers = ["probe_plugin"]\n'
        f'[database]\nurl = "sqlite:///{tmp_path / "t.db"}"\n'
        '[sources.refonte]\nkind = "refonte"\nverify = "none"\n'
    )
    return tmp_path


def imports(project: Path) -> int:
    log = project / "imports.log"
    return len(log.read_text().splitlines()) if log.exists() else 0


def touch(path: Path) -> None:
    """A new mtime, a second later than the last: as an editor saving the file leaves it."""
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))


def test_warm_help_lists_plugin_commands_without_importing_them(project: Path) -> None:
    env = bare_env(project)
    cold = taskhook(project, "--help", env=env)
    assert cold.returncode == 0, cold.stderr
    assert "look at what the probe plugin saw" in cold.stdout and imports(project) == 1
    assert (project / "home" / "cache" / "taskhook" / "plugin-commands.json").is_file()

    warm = taskhook(project, "--help", env=env)
    assert warm.stdout == cold.stdout and imports(project) == 1  # listed, not imported
    bare = taskhook(project, env=env)
    assert bare.returncode == 2 and "COMMAND" in bare.stderr and imports(project) == 1

    used = taskhook(project, "probe", "--twice", env=env)  # a real use loads the plugin
    assert used.returncode == 0 and used.stdout == "probed twice\n" and imports(project) == 2
    assert taskhook(project, "probe", "--help", env=env).returncode == 0
    assert imports(project) == 3

    touch(project / "probe_plugin.py")  # the plugin changed: the next --help reads it again
    assert "probe" in taskhook(project, "--help", env=env).stdout and imports(project) == 4
    assert "probe" in taskhook(project, "--help", env=env).stdout and imports(project) == 4

    config = project / "taskhook.toml"
    config.write_text(config.read_text() + "# another setting\n")  # so did the config
    assert "probe" in taskhook(project, "--help", env=env).stdout and imports(project) == 5
    assert "probe" in taskhook(project, "--help", env=env).stdout and imports(project) == 5

    # Another config is another entry: the one without the plugin lists no `probe`.
    other = project / "other.toml"
    other.write_text(config.read_text().replace('"probe_plugin"', ""))
    assert "probe" not in taskhook(project, "--config", str(other), "--help", env=env).stdout
    assert "probe" in taskhook(project, "--help", env=env).stdout and imports(project) == 5


def test_warm_help_imports_nothing_of_the_app(tmp_path: Path) -> None:
    env = bare_env(tmp_path)
    argv = [sys.executable, "-X", "importtime", "-m", "receiver.cli", "--help"]
    cold = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    warm = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert cold.returncode == warm.returncode == 0
    assert cold.stdout == warm.stdout and "tasks" in warm.stdout  # the ledger's, from the cache
    assert "receiver.app" in cold.stderr  # the miss built the app ...
    loaded = {line.rsplit("|", 1)[-1].strip() for line in warm.stderr.splitlines()}
    heavy = {"receiver.app", "receiver.config", "handlers.ledger", "pydantic", "sqlalchemy",
             "starlette", "structlog", "rich", "asyncio", "orjson"}  # fmt: skip
    assert not loaded & heavy  # ... the hit imports none of it
    version = subprocess.run([*argv[:-1], "--version"], cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=60)  # fmt: skip
    assert version.stdout.startswith("taskhook ")
    assert not {line.rsplit("|", 1)[-1].strip() for line in version.stderr.splitlines()} & heavy


def test_an_unwritable_cache_is_no_error(tmp_path: Path) -> None:
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("")
    env = bare_env(tmp_path) | {"XDG_CACHE_HOME": str(blocked)}
    for _ in range(2):
        done = taskhook(tmp_path, "--help", env=env)
        assert done.returncode == 0 and "tasks" in done.stdout, done.stderr
        assert done.stderr == ""


def test_the_cache_follows_the_config_the_command_line_reads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from receiver.plugins import ENTRY_POINT_GROUP

    assert plugin_cache.GROUP == ENTRY_POINT_GROUP
    monkeypatch.chdir(tmp_path)
    assert plugin_cache.config_file(None, {}) is None  # the built-in default
    (tmp_path / "taskhook.toml").write_text("")
    assert plugin_cache.config_file(None, {}) == "taskhook.toml"
    assert plugin_cache.config_file(None, {"TASKHOOK_CONFIG": "/etc/t.toml"}) == "/etc/t.toml"
    assert plugin_cache.config_file("mine.toml", {"TASKHOOK_CONFIG": "/etc/t.toml"}) == "mine.toml"
    assert plugin_cache.cache_file({"XDG_CACHE_HOME": "/c"}) == Path(
        "/c/taskhook/plugin-commands.json"
    )
    assert plugin_cache.cache_file({"XDG_CACHE_HOME": "relative"}) == (
        Path.home() / ".cache" / "taskhook" / "plugin-commands.json"
    )  # a relative $XDG_CACHE_HOME is ignored, as the XDG spec says
    first = plugin_cache.key(None, "1.0", {})
    assert first != plugin_cache.key(None, "1.1", {})  # another version, another entry
    touch(tmp_path / "taskhook.toml")
    assert first != plugin_cache.key(None, "1.0", {})
