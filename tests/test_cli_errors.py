"""Issue 14 (1, 2, 9): commands need only the secrets they use, global options anywhere,
one-line errors, a clean Ctrl-C, JSON logs from uvicorn too. Real processes, clean env."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
from pathlib import Path

import httpx
import pytest

from tests.test_cli import TASKHOOK, clean_env, free_port, run_cli

POLLED = """
[sources.refonte]
kind = "refonte"
verify = "header-token"
secrets_env = "REFONTE_SECRETS"
[sources.taskmonk]
kind = "taskmonk"
[sources.taskmonk.reconcile]
client_id = "c"
client_secret_env = "TM_SECRET"
project_id = "p"
base_url = "http://127.0.0.1:9"
max_retries = 0
[sources.clarifai]
kind = "clarifai"
reconcile = {{ api_key_env = "CLARIFAI_KEY" }}
[api.keys.ops]
key_env = "OPS_KEY"
scopes = ["deliveries.read"]
[log]
format = "{log}"
"""


def _config(tmp_path: Path, log: str = "json") -> Path:
    path = tmp_path / "taskhook.toml"
    path.write_text(POLLED.format(log=log))
    return path


def _one_line(done: subprocess.CompletedProcess[str]) -> str:
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "Traceback" not in done.stderr
    return lines[0]


@pytest.mark.parametrize(
    "argv",
    [
        ["tasks", "list"],
        ["deliveries", "list"],
        ["export"],
        ["migrate"],
        ["--version"],
        ["tasks", "--help"],
        ["--help"],
    ],
)
def test_read_only_commands_need_no_secret(tmp_path: Path, argv: list[str]) -> None:
    done = run_cli(tmp_path, *argv, env=clean_env())  # built-in default, no secret set
    assert done.returncode == 0, done.stderr
    assert "TASKHOOK_REFONTE_SECRET" not in done.stderr


def test_read_only_commands_with_a_config_whose_variables_are_unset(tmp_path: Path) -> None:
    _config(tmp_path)
    for argv in (["tasks", "list"], ["deliveries", "list"], ["export"], ["migrate"]):
        done = run_cli(tmp_path, *argv, env=clean_env())
        assert done.returncode == 0, (argv, done.stderr)


def test_serve_still_needs_its_secrets(tmp_path: Path) -> None:
    _config(tmp_path)
    done = run_cli(tmp_path, "serve", "--port", str(free_port()), env=clean_env())
    assert done.returncode == 2
    assert "REFONTE_SECRETS" in _one_line(done)


def test_reconcile_resolves_only_its_own_source(tmp_path: Path) -> None:
    _config(tmp_path)
    # Clarifai's key unset: reconciling TaskMonk goes on to poll (and fails on the network).
    done = run_cli(tmp_path, "reconcile", "taskmonk", "--once", env=clean_env(TM_SECRET="s"))
    assert "CLARIFAI_KEY" not in done.stderr
    assert "REFONTE_SECRETS" not in done.stderr
    done = run_cli(tmp_path, "reconcile", "clarifai", "--once", env=clean_env(TM_SECRET="s"))
    assert done.returncode == 2
    assert "CLARIFAI_KEY" in _one_line(done)


@pytest.mark.parametrize(
    "argv",
    [
        ["--config", "{cfg}", "deliveries", "list"],
        ["deliveries", "list", "--config", "{cfg}"],
        ["deliveries", "--config={cfg}", "list", "--quiet"],
        ["--quiet", "--config", "{cfg}", "tasks", "list"],
        ["tasks", "list", "--config", "{cfg}", "--json"],
        ["--json", "deliveries", "list", "--config", "{cfg}"],
        ["deliveries", "list", "--version"],
    ],
)
def test_global_options_before_or_after_the_command(tmp_path: Path, argv: list[str]) -> None:
    cfg = str(_config(tmp_path.parent / tmp_path.name))
    other = tmp_path / "elsewhere"
    other.mkdir()  # not the config's folder: it is found through --config only
    done = run_cli(other, *[a.replace("{cfg}", cfg) for a in argv], env=clean_env())
    assert done.returncode == 0, done.stderr


def test_json_and_quiet_on_deliveries_list(tmp_path: Path) -> None:
    _config(tmp_path)
    done = run_cli(tmp_path, "--quiet", "deliveries", "list", env=clean_env())
    assert "delivery(ies)" not in done.stdout
    done = run_cli(tmp_path, "deliveries", "list", "--json", env=clean_env())
    assert done.stdout == ""  # no rows: no lines, no header


def test_help_lists_plugin_commands_with_or_without_a_config(tmp_path: Path) -> None:
    for argv in (["--help"], ["--config", str(_config(tmp_path)), "--help"]):
        done = run_cli(tmp_path, *argv, env=clean_env())
        assert done.returncode == 0, done.stderr
        assert "tasks" in done.stdout and "serve" in done.stdout


def test_help_with_a_broken_config_still_lists_the_builtins(tmp_path: Path) -> None:
    done = run_cli(tmp_path, "--config", "missing.toml", "--help", env=clean_env())
    assert done.returncode == 0
    assert "serve" in done.stdout and "missing.toml" in done.stdout


@pytest.mark.parametrize(
    ("argv", "code", "says"),
    [
        (["deliveries", "list", "--limit", "0"], 2, "--limit"),
        (["deliveries", "list", "--status", "bogus"], 2, "invalid choice"),
        (["export", "--since", "yesterday"], 2, "--since"),
        (["serve", "--port", "80000"], 2, "65535"),
        (["sign", "--source", "refonte", "missing.json"], 1, "missing.json"),
        (["sign", "--source", "nope", "missing.json"], 2, "no source"),
        (["replay", "missing.jsonl"], 1, "missing.jsonl"),
        (["--config", "missing.toml", "tasks", "list"], 2, "missing.toml"),
        (["--config", ".", "deliveries", "list"], 2, "cannot be read"),
        (["no-such-command"], 2, "invalid choice"),
    ],
)
def test_user_mistakes_are_one_line(tmp_path: Path, argv: list[str], code: int, says: str) -> None:
    done = run_cli(tmp_path, *argv, env=clean_env(TASKHOOK_REFONTE_SECRET="x"))
    assert done.returncode == code, done.stderr
    line = _one_line(done)
    assert line.startswith("taskhook: ") and says in line


def test_unopenable_database_is_one_line(tmp_path: Path) -> None:
    env = clean_env(TASKHOOK_REFONTE_SECRET="x", TASKHOOK_DATABASE_URL="sqlite:////no/such/x.db")
    for argv in (["serve", "--port", str(free_port())], ["deliveries", "list"], ["migrate"]):
        done = run_cli(tmp_path, *argv, env=env)
        assert done.returncode == 2, done.stderr
        assert "cannot open SQLite database" in _one_line(done)


def test_port_in_use_is_one_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = run_cli(tmp_path, "serve", "--port", str(port),
                       env=clean_env(TASKHOOK_REFONTE_SECRET="x"))  # fmt: skip
    assert done.returncode == 1
    assert f"127.0.0.1:{port}" in _one_line(done)


def test_debug_brings_the_traceback_back(tmp_path: Path) -> None:
    done = run_cli(tmp_path, "--debug", "sign", "--source", "refonte", "missing.json",
                   env=clean_env(TASKHOOK_REFONTE_SECRET="x"))  # fmt: skip
    assert done.returncode != 0
    assert "Traceback" in done.stderr


def test_ctrl_c_ends_serve_cleanly_and_every_line_is_json(tmp_path: Path) -> None:
    _config(tmp_path, log="json")
    port = free_port()
    env = clean_env(REFONTE_SECRETS="s", TM_SECRET="t", CLARIFAI_KEY="k", OPS_KEY="o")
    proc = subprocess.Popen([*TASKHOOK, "serve", "--port", str(port), "--access-log"],
                            cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        for _ in range(200):
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=0.5).status_code == 200:
                    break
            except httpx.TransportError:
                assert proc.poll() is None
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr
    *logged, summary = stderr.strip().splitlines()
    assert summary.startswith("taskhook: interrupted: stopped cleanly")
    records = [json.loads(line) for line in logged]  # uvicorn's lines included
    assert any(r.get("logger", "").startswith("uvicorn") for r in records)
    assert any(r.get("logger") == "uvicorn.access" for r in records)
    assert any(r["event"] == "taskhook stopped" for r in records)


def test_no_color_and_non_tty_disable_colour() -> None:
    import io

    from receiver.logs import colour_wanted

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    assert not colour_wanted(io.StringIO())
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("NO_COLOR", raising=False)
        assert colour_wanted(Tty())
        mp.setenv("NO_COLOR", "1")
        assert not colour_wanted(Tty())


def test_trigger_and_simulate_concurrency_are_commands() -> None:
    """`taskhook trigger` is listed, and `simulate --concurrency` is checked like any option."""
    import subprocess

    from tests.test_cli import TASKHOOK, clean_env

    listed = subprocess.run([*TASKHOOK, "--help"], capture_output=True, text=True,
                            env=clean_env(), timeout=60, check=False)  # fmt: skip
    assert "trigger" in listed.stdout
    bad = subprocess.run(
        [*TASKHOOK, "simulate", "--to", "http://127.0.0.1:9", "--concurrency", "0"],
        capture_output=True, text=True, env=clean_env(), timeout=60, check=False,
    )  # fmt: skip
    assert bad.returncode == 2 and "at least 1" in bad.stderr


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_completion_scripts_list_every_command_and_its_options(shell: str) -> None:
    import subprocess

    from tests.test_cli import TASKHOOK, clean_env

    done = subprocess.run([*TASKHOOK, "completion", shell], capture_output=True, text=True,
                          env=clean_env(), timeout=60, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    for word in ("serve", "replay", "trigger", "deliveries", "tasks"):  # tasks: a plugin's
        assert word in done.stdout
    assert "graceful-timeout" in done.stdout  # a command's own option
    if shell == "bash":
        checked = subprocess.run(["bash", "-n"], input=done.stdout, text=True, check=False)
        assert checked.returncode == 0  # the script parses
