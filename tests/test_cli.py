"""`taskhook serve` as a user runs it: a real process, a real port, a real SQLite file."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from tests.conftest import sample

TASKHOOK = [sys.executable, "-m", "receiver.cli"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKHOOK_")}
    return env | extra


@contextmanager
def serving(cwd: Path, *args: str, env: dict[str, str]) -> Iterator[tuple[str, Path]]:
    port = free_port()
    log_path = cwd / "serve.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [*TASKHOOK, "serve", "--port", str(port), *args],
            cwd=cwd,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        base = f"http://127.0.0.1:{port}"
        try:
            for _ in range(200):
                try:
                    if httpx.get(f"{base}/readyz", timeout=0.5).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if proc.poll() is not None:
                    raise AssertionError(log_path.read_text())
                time.sleep(0.05)
            yield base, log_path
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                raise


def run_cli(cwd: Path, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*TASKHOOK, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=30
    )


def wait_for(path: Path, text: str, within: float = 10.0) -> str:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        content = path.read_text()
        if text in content:
            return content
        time.sleep(0.05)
    raise AssertionError(f"{text!r} not in log:\n{path.read_text()}")


def test_readme_quickstart_flow(tmp_path: Path) -> None:
    env = clean_env(TASKHOOK_REFONTE_SECRET="dev-secret")
    headers = {"content-type": "application/json", "refonte-callback-auth": "dev-secret"}
    body = sample("01-completed.json")
    with serving(tmp_path, env=env) as (base, log):
        first = httpx.post(f"{base}/callbacks/refonte", content=body, headers=headers)
        assert first.status_code == 200
        assert first.json()["status"] == "accepted"
        content = wait_for(log, "delivery processed")
        assert first.json()["delivery_id"] in content
        again = httpx.post(f"{base}/callbacks/refonte", content=body, headers=headers)
        assert again.json() == {"status": "duplicate", "delivery_id": first.json()["delivery_id"]}
        assert httpx.post(f"{base}/callbacks/refonte", content=body).status_code == 401
    assert (tmp_path / "taskhook.db").exists()
    assert "dev-secret" not in log.read_text()
    assert "taskhook stopped" in log.read_text()


def test_serve_refuses_without_a_secret(tmp_path: Path) -> None:
    done = run_cli(tmp_path, "serve", "--port", str(free_port()), env=clean_env())
    assert done.returncode == 2
    assert "TASKHOOK_REFONTE_SECRET" in done.stderr
    assert "--insecure-dev" in done.stderr


def test_insecure_dev_accepts_anything_and_says_so(tmp_path: Path) -> None:
    with serving(tmp_path, "--insecure-dev", env=clean_env()) as (base, log):
        response = httpx.post(f"{base}/callbacks/refonte", content=sample("01-completed.json"))
        assert response.status_code == 200
        assert "INSECURE DEV MODE" in log.read_text()


def test_a_bad_config_stops_start_up_naming_file_and_key(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text('[sources.refonte]\nkind = "refonte"\n')
    done = run_cli(tmp_path, "serve", "--config", str(config), env=clean_env())
    assert done.returncode == 2
    assert str(config) in done.stderr
    assert "sources.refonte.verify" in done.stderr


def test_a_config_file_with_a_plugin_that_does_not_exist(tmp_path: Path) -> None:
    config = tmp_path / "taskhook.toml"
    config.write_text(
        'handlers = ["no_such_pkg.handlers"]\n'
        '[sources.refonte]\nkind = "refonte"\nverify = "none"\n'
    )
    done = run_cli(tmp_path, "serve", env=clean_env())
    assert done.returncode == 2
    assert "no_such_pkg.handlers" in done.stderr


def test_migrate(tmp_path: Path) -> None:
    done = run_cli(tmp_path, "migrate", env=clean_env(TASKHOOK_REFONTE_SECRET="x"))
    assert done.returncode == 0, done.stderr
    assert "schema up to date" in done.stdout
    assert (tmp_path / "taskhook.db").exists()


def test_procfile_serves_on_port_with_proxy_headers() -> None:
    procfile = (Path(__file__).resolve().parents[1] / "Procfile").read_text()
    web = next(line for line in procfile.splitlines() if line.startswith("web:"))
    assert "$PORT" in web and "0.0.0.0" in web and "--proxy-headers" in web


@pytest.mark.parametrize("argv", [["--help"], ["serve", "--help"]])
def test_help(argv: list[str]) -> None:
    done = subprocess.run([*TASKHOOK, *argv], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0
    assert "taskhook" in done.stdout
