"""kill -9 in the middle of a burst: everything acked is stored and applied exactly once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.conftest import BACKENDS, sample_json
from tests.pg import fetch, wait_until_processed
from tests.test_cli import clean_env, free_port

BURST = 2000


def start(config: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:  # the child keeps its own handle
        proc = subprocess.Popen(
            [sys.executable, "-m", "receiver.cli", "serve", "--config", str(config), "--port",
             str(port)],
            stdout=out, stderr=subprocess.STDOUT, env=clean_env(),
        )  # fmt: skip
    for _ in range(200):
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=0.5).status_code == 200:
                return proc
        except httpx.TransportError:
            time.sleep(0.05)
    raise AssertionError(log.read_text())


def stop(proc: subprocess.Popen[bytes]) -> int:
    """SIGTERM, then kill: the exit status (negative: the signal)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
    return proc.returncode


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


def test_kill_9_mid_burst_loses_nothing_acked_and_applies_once(tmp_path: Path, db_url: str) -> None:
    config = tmp_path / "taskhook.toml"
    config.write_text(
        'entry_points = false\nhandlers = ["handlers.ledger"]\n'
        f'[database]\nurl = "{db_url}"\n'
        '[sources.refonte]\nkind = "refonte"\nverify = "none"\n'
        "[dispatch]\npoll_interval_seconds = 0.1\n"
        '[log]\nlevel = "warning"\n'
    )
    port = free_port()
    log = tmp_path / "serve.log"
    proc = start(config, port, log)
    template = sample_json("05-completed-before-audit.json")
    acked: dict[int, str] = {}
    lock = threading.Lock()
    local = threading.local()
    clients: list[httpx.Client] = []

    def send(i: int) -> None:
        body = json.loads(json.dumps(template))
        body["task_id"] = body["task"]["task_id"] = f"crash-{i % 400:04d}"
        body["task"]["updated_at"] = f"2024-03-01T12:{i // 400:02d}:00.000Z"
        if not hasattr(local, "client"):
            local.client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5)
            with lock:
                clients.append(local.client)
        try:
            response = local.client.post("/callbacks/refonte", content=json.dumps(body))
        except httpx.TransportError:
            return  # not acked: the sender would retry
        if response.status_code == 200:
            with lock:
                acked[i] = response.json()["delivery_id"]

    def killer() -> None:
        while len(acked) < BURST // 3:
            time.sleep(0.005)
        os.kill(proc.pid, signal.SIGKILL)

    threading.Thread(target=killer, daemon=True).start()
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(send, range(BURST)))
    for client in clients:
        client.close()
    proc.wait(timeout=10)
    assert proc.returncode == -signal.SIGKILL
    assert BURST // 3 <= len(acked) < BURST  # the kill really landed mid-burst

    restarted = start(config, port, log)
    try:
        wait_until_processed(db_url, within=60)
    finally:
        restarted.send_signal(signal.SIGTERM)
        restarted.wait(timeout=15)

    stored = dict(fetch(db_url, "SELECT id, status FROM deliveries"))
    applied = fetch(
        db_url,
        "SELECT delivery_id, count(*) FROM ledger_history WHERE kind IN ('applied', 'stale') "
        "GROUP BY delivery_id",
    )
    lost = [d for d in acked.values() if d not in stored]
    unprocessed = [d for d in acked.values() if stored.get(d) != "processed"]
    twice = [d for d, n in applied if n != 1]
    print(f"[{db_url.split(':')[0]}] acked {len(acked)} of {BURST}, stored {len(stored)}, "
          f"applied {len(applied)}; lost {len(lost)}, unprocessed {len(unprocessed)}, "
          f"applied twice {len(twice)}")  # fmt: skip
    assert (len(lost), len(unprocessed), len(twice)) == (0, 0, 0)
    # Everything stored (acked, or committed just before the kill) was applied exactly once.
    assert len(applied) == len(stored) >= len(acked)
