"""`taskhook deliveries`, `taskhook export` and `taskhook sign`, run as a user runs them."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from receiver.app import create_app
from receiver.config import load_settings
from receiver.events import Event
from receiver.verify import verify_hmac_sha256
from tests.conftest import SAMPLES, client_for, sample

CONFIG = """
[database]
url = "sqlite:///{db}"
[sources.refonte]
kind = "refonte"
verify = "none"
[sources.signed]
kind = "refonte"
verify = "hmac-sha256"
header = "x-sig"
secrets = ["hmac-secret"]
entry_points = false
[dispatch]
max_attempts = 1
"""


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "taskhook.toml"
    text = CONFIG.format(db=tmp_path / "t.db")
    # entry_points is a top-level key: TOML needs it before the first table.
    text = "entry_points = false\n" + text.replace("entry_points = false\n", "")
    path.write_text(text)

    def broken(event: Event) -> None:
        if event.task_id == "65f0c0de0000000000000003":
            raise RuntimeError("warehouse down")

    async def fill() -> None:
        app = create_app(
            load_settings(path, environ={}), setup=lambda r: r.on_any(broken, name="warehouse")
        )
        async with app.started(), client_for(app) as client:
            for name in ("01-completed.json", "09-audit-rejected.json", "01-completed.json"):
                await client.post(
                    "/callbacks/refonte",
                    content=sample(name),
                    headers={"content-type": "application/json"},
                )
            await client.post("/callbacks/refonte", content=b"\xff\xfe not json")
            await app.dispatcher.drain()

    asyncio.run(fill())
    return path


def cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "receiver.cli", *args, "--config", str(config)],
                          capture_output=True, text=True, timeout=60)  # fmt: skip


def test_list_show_and_retry(config: Path) -> None:
    listed = cli(config, "deliveries", "list")
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.splitlines()[0].split()[:3] == ["DELIVERY_ID", "STATUS", "SOURCE"]
    assert "4 of 4 delivery(ies)" in listed.stdout
    dead = cli(config, "deliveries", "list", "--status", "dead")
    dead_id = dead.stdout.splitlines()[1].split()[0]
    assert "warehouse on evt_" in dead.stdout  # truncated to fit the table
    shown = json.loads(cli(config, "deliveries", "show", dead_id).stdout)
    assert shown["status"] == "dead" and "RuntimeError" in shown["last_traceback"]
    assert cli(config, "deliveries", "show", "dlv_nope").returncode == 1
    retried = cli(config, "deliveries", "retry", dead_id)
    assert retried.returncode == 0 and f"requeued {dead_id}" in retried.stdout
    again = cli(config, "deliveries", "retry", dead_id)
    assert again.returncode == 1 and "not failed, dead or quarantined" in again.stderr
    assert cli(config, "deliveries", "retry").returncode == 2


def test_retry_all_dead(config: Path) -> None:
    done = cli(config, "deliveries", "retry", "--all-dead")
    assert done.returncode == 0
    assert "1 dead delivery(ies) requeued" in done.stdout
    db = config.parent / "t.db"
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM deliveries WHERE status = 'dead'").fetchone() == (
            0,
        )


def test_export_streams_the_replay_format(config: Path) -> None:
    done = cli(config, "export")
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert len(lines) == 3  # the duplicate receipt carries no body of its own
    assert set(lines[0]) == {"source", "received_at", "headers", "body"}
    assert lines[0]["body"] == sample("01-completed.json").decode()
    assert lines[0]["received_at"].endswith("Z")
    assert "body_b64" in lines[2]  # bytes that are not UTF-8
    assert "exported 3 delivery(ies)" in done.stderr
    quarantined = cli(config, "export", "--status", "quarantined").stdout.splitlines()
    assert len(quarantined) == 1
    future = cli(config, "export", "--since", "2999-01-01").stdout
    assert future == ""
    assert cli(config, "export", "--since", "yesterday").returncode != 0


def test_sign_prints_headers_that_verify(config: Path) -> None:
    body_file = SAMPLES / "refonte" / "01-completed.json"
    done = cli(config, "sign", "--source", "signed", str(body_file))
    assert done.returncode == 0, done.stderr
    headers = dict(line.split(": ", 1) for line in done.stdout.splitlines())
    assert headers["content-type"] == "application/json"
    verified = verify_hmac_sha256(body_file.read_bytes(), headers, ["hmac-secret"], header="x-sig")
    assert verified.key_index == 0
    unknown = cli(config, "sign", "--source", "nope", str(body_file))
    assert unknown.returncode == 2 and "signed" in unknown.stderr
