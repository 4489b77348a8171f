"""Wrong-credential uploads cannot grow the receiver's memory past its budget.

A real ``taskhook serve`` takes 30 concurrent 9 MiB uploads with wrong credentials: for an
HMAC source (the signature can only be checked once the body is read, so bodies draw on
``max_unverified_body_bytes``) and for a header-token source (refused before the body is
read). The server's resident memory is sampled throughout; its growth stays within the
budget plus a fixed allowance for the interpreter's own buffers.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.conftest import SECRET
from tests.test_cli import clean_env, free_port
from tests.test_crash import stop

MiB = 1024 * 1024
UPLOADS = 30
BODY = 9 * MiB
BUDGET = 16 * MiB
# The interpreter's allocator keeps freed chunks, and each connection has read buffers.
ALLOWANCE = 48 * MiB


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def start(tmp_path: Path) -> tuple[subprocess.Popen[bytes], int]:
    config = tmp_path / "taskhook.toml"
    config.write_text(
        f'entry_points = false\n[database]\nurl = "sqlite:///{tmp_path / "t.db"}"\n'
        f'[sources.signed]\nkind = "refonte"\nverify = "hmac-sha256"\nheader = "x-sig"\n'
        f'secrets = ["{SECRET}"]\nmax_body_bytes = {10 * MiB}\n'
        f'[sources.token]\nkind = "refonte"\nverify = "header-token"\nsecrets = ["{SECRET}"]\n'
        f"max_body_bytes = {10 * MiB}\n"
        f'[dispatch]\nenabled = false\n[log]\nlevel = "error"\n'
        f"[http]\nmax_unverified_body_bytes = {BUDGET}\nmax_connections = 200\n"
    )
    port = free_port()
    with (tmp_path / "serve.log").open("ab") as log:  # the child keeps its own handle
        proc = subprocess.Popen(
            [sys.executable, "-m", "receiver.cli", "serve", "--config", str(config), "--port",
             str(port)], stdout=log, stderr=subprocess.STDOUT, env=clean_env(),
        )  # fmt: skip
    for _ in range(200):
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=0.5).status_code == 200:
                return proc, port
        except httpx.TransportError:
            time.sleep(0.05)
    stop(proc)
    raise AssertionError((tmp_path / "serve.log").read_text())


def upload(port: int, path: str, header: str) -> int:
    """POST a 9 MiB body with a wrong credential; the status answered (0: none)."""
    head = (f"POST {path} HTTP/1.1\r\nHost: t\r\ncontent-type: application/json\r\n"
            f"{header}\r\ncontent-length: {BODY}\r\n\r\n").encode()  # fmt: skip
    chunk = b"x" * (256 * 1024)
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        try:
            sock.sendall(head)
            for _ in range(BODY // len(chunk)):
                sock.sendall(chunk)
        except OSError:
            pass  # refused before the body was all sent: what we want
        try:
            answer = sock.recv(64)
        except OSError:
            return 0
    return int(answer.split()[1]) if answer.startswith(b"HTTP/1.1 ") else 0


@pytest.mark.parametrize(
    ("path", "header", "expected"),
    [
        ("/callbacks/signed", "x-sig: sha256=" + "0" * 64, {401, 503}),
        ("/callbacks/token", "refonte-callback-auth: wrong", {401}),
    ],
)
def test_wrong_credential_uploads_stay_within_the_memory_budget(
    tmp_path: Path, path: str, header: str, expected: set[int]
) -> None:
    proc, port = start(tmp_path)
    try:
        before = rss(proc.pid)
        peak = [before]
        done = threading.Event()

        def sample() -> None:
            while not done.wait(0.01):
                peak[0] = max(peak[0], rss(proc.pid))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        with ThreadPoolExecutor(UPLOADS) as pool:
            statuses = list(pool.map(lambda _: upload(port, path, header), range(UPLOADS)))
        done.set()
        sampler.join(timeout=5)
        alive = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5).status_code
    finally:
        stop(proc)
    growth = peak[0] - before
    answers = sorted(set(statuses))
    print(f"{path}: {UPLOADS} x {BODY // MiB} MiB wrong-credential uploads, RSS grew "
          f"{growth / MiB:.1f} MiB (budget {BUDGET // MiB} MiB); answers {answers}")  # fmt: skip
    assert set(statuses) <= expected, statuses
    assert growth < BUDGET + ALLOWANCE
    assert alive == 200
