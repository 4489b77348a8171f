"""SIGTERM: in-flight handlers finish within the grace period, claims are released."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import BACKENDS, sample
from tests.pg import fetch
from tests.test_cli import clean_env, free_port

SLOW_PLUGIN = """
import asyncio
from pathlib import Path

MARKS = Path({marks!r})


async def slow(event):
    (MARKS / "started").write_text(event.delivery_id)
    await asyncio.sleep(1.5)
    (MARKS / "finished").write_text(event.delivery_id)


def register(registry):
    registry.on("task.completed", slow, name="slow")
"""


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


def test_sigterm_lets_running_handlers_finish_and_releases_claims(
    tmp_path: Path, db_url: str
) -> None:
    (tmp_path / "slow_plugin.py").write_text(SLOW_PLUGIN.replace("{marks!r}", repr(str(tmp_path))))
    config = tmp_path / "taskhook.toml"
    config.write_text(
        'entry_points = false\nhandlers = ["slow_plugin"]\n'
        f'[database]\nurl = "{db_url}"\n'
        '[sources.refonte]\nkind = "refonte"\nverify = "none"\n'
    )
    port = free_port()
    env = clean_env(PYTHONPATH=str(tmp_path))
    with (tmp_path / "serve.log").open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "receiver.cli", "serve", "--config", str(config), "--port",
             str(port)], stdout=log, stderr=subprocess.STDOUT, env=env,
        )  # fmt: skip
    try:
        base = f"http://127.0.0.1:{port}"
        for _ in range(200):
            try:
                if httpx.get(f"{base}/readyz", timeout=0.5).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.05)
        answer = httpx.post(f"{base}/callbacks/refonte", content=sample("01-completed.json"))
        delivery_id = answer.json()["delivery_id"]
        for _ in range(200):
            if (tmp_path / "started").exists():
                break
            time.sleep(0.02)
        proc.send_signal(signal.SIGTERM)  # while the handler is mid-way
        # uvicorn re-raises the signal after its graceful shutdown, so -SIGTERM is a clean exit.
        assert proc.wait(timeout=15) in (0, -signal.SIGTERM)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "Application shutdown complete" in (tmp_path / "serve.log").read_text()
    assert (tmp_path / "finished").read_text() == delivery_id
    rows = fetch(db_url, "SELECT id, status, lease_owner FROM deliveries")
    assert rows == [(delivery_id, "processed", None)]  # finished, and no claim left behind
