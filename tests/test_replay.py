"""Record → export → replay: production traffic reproduced in an empty ledger."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from receiver.app import create_app
from receiver.config import load_settings
from receiver.verify import sign_standard_webhooks
from tests.conftest import SAMPLES, client_for, sample, sample_json
from tests.test_cli import clean_env, serving

SW_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def write_config(directory: Path, name: str) -> Path:
    directory.mkdir(exist_ok=True)
    path = directory / f"{name}.toml"
    path.write_text(
        'entry_points = false\nhandlers = ["handlers.ledger"]\n'
        f'[database]\nurl = "sqlite:///{directory / name}.db"\n'
        '[sources.refonte]\nkind = "refonte"\nverify = "header-token"\n'
        'header = "refonte-callback-auth"\nsecrets = ["prod-secret"]\n'
        f'[sources.sw]\nkind = "refonte"\nverify = "standard-webhooks"\nsecrets = ["{SW_SECRET}"]\n'
        '[log]\nlevel = "warning"\n'
    )
    return path


def cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "receiver.cli", *args, "--config", str(config)],
                          capture_output=True, text=True, timeout=120, env=clean_env())  # fmt: skip


TRAFFIC = [
    "05-completed-before-audit.json", "06-audit-accepted.json", "05-completed-before-audit.json",
    "07-audit-fixed.json", "08-recall-to-pending.json", "06-audit-accepted.json",
    "03-error-on-creation-clear-unique-id.json", "04-resubmitted-same-unique-id-completed.json",
    "09-audit-rejected.json", "10-canceled-clear-unique-id.json", "01-completed.json",
]  # fmt: skip


def produce(config: Path) -> None:
    async def run() -> None:
        app = create_app(load_settings(config, environ={}))
        headers = {"content-type": "application/json", "refonte-callback-auth": "prod-secret"}
        async with app.started(), client_for(app) as client:
            for name in TRAFFIC:
                response = await client.post(
                    "/callbacks/refonte", content=sample(name), headers=headers
                )
                assert response.status_code == 200
            late = sample_json("06-audit-accepted.json")
            late["task"]["callback_completed"] = False  # a late retry, not byte-identical
            await client.post("/callbacks/refonte", content=json.dumps(late), headers=headers)
            await app.dispatcher.drain()

    asyncio.run(run())


def ledger(db: Path) -> tuple[list[Any], list[Any]]:
    with sqlite3.connect(db) as conn:
        tasks = conn.execute(
            "SELECT task_id, status, unique_id, customer_review_status, task, response, audits, "
            "created_at FROM ledger_tasks ORDER BY task_id"
        ).fetchall()
        history = conn.execute(
            # Per-task order is the guarantee; tasks interleave as concurrency allows.
            "SELECT task_id, kind, name, event_id, detail FROM ledger_history ORDER BY task_id, seq"
        ).fetchall()
    return tasks, history


def test_export_then_replay_rebuilds_the_same_ledger(tmp_path: Path) -> None:
    prod = write_config(tmp_path, "prod")
    laptop = write_config(tmp_path, "laptop")
    produce(prod)
    exported = cli(prod, "export")
    assert exported.returncode == 0, exported.stderr
    recording = tmp_path / "traffic.jsonl"
    recording.write_text(exported.stdout)

    dry = cli(laptop, "replay", str(recording), "--dry-run")
    assert dry.returncode == 0, dry.stdout + dry.stderr
    assert "10 would be accepted" in dry.stdout
    assert not (tmp_path / "laptop.db").exists() or ledger(tmp_path / "laptop.db")[0] == []

    replayed = cli(laptop, "replay", str(recording))
    assert replayed.returncode == 0, replayed.stdout + replayed.stderr
    assert "10 deliveries: 10 accepted, 0 duplicate, 0 rejected" in replayed.stdout
    assert ledger(tmp_path / "laptop.db") == ledger(tmp_path / "prod.db")
    with sqlite3.connect(tmp_path / "laptop.db") as conn:
        assert conn.execute("SELECT count(*) FROM deliveries WHERE replayed = 1").fetchone() == (
            10,
        )

    again = cli(laptop, "replay", str(recording))
    assert "0 accepted, 10 duplicate" in again.stdout


def test_old_signatures_still_verify_but_tampering_is_rejected(tmp_path: Path) -> None:
    laptop = write_config(tmp_path, "laptop")
    body = sample("01-completed.json")
    long_ago = int(time.time()) - 90 * 24 * 3600
    headers = sign_standard_webhooks(body, SW_SECRET, msg_id="msg_old", timestamp=long_ago)
    lines = [
        {"source": "sw", "received_at": "2024-03-02T09:15:00Z", "headers": headers,
         "body": body.decode()},
        {"source": "sw", "received_at": "2024-03-02T09:16:00Z",
         "headers": sign_standard_webhooks(body, SW_SECRET, msg_id="msg_x", timestamp=long_ago),
         "body": body.decode().replace("red", "blue")},
        {"source": "nowhere", "headers": {}, "body": "{}"},
    ]  # fmt: skip
    recording = tmp_path / "old.jsonl"
    recording.write_text("\n".join(json.dumps(line) for line in lines) + "\nnot json\n")
    done = cli(laptop, "replay", str(recording))
    assert done.returncode == 1
    assert "4 deliveries: 1 accepted, 0 duplicate, 3 rejected" in done.stdout
    assert "401 verification failed: invalid signature" in done.stdout
    assert "unknown source 'nowhere'" in done.stdout
    assert "unreadable recording line" in done.stdout
    with sqlite3.connect(tmp_path / "laptop.db") as conn:
        received = conn.execute("SELECT received_at, replayed FROM deliveries").fetchall()
    assert received == [(1709370900.0, 1)]  # the recorded time, marked replayed


def test_a_folder_of_bare_bodies_needs_and_takes_a_source(tmp_path: Path) -> None:
    laptop = write_config(tmp_path, "laptop")
    folder = tmp_path / "bodies"
    folder.mkdir()
    for name in ("01-completed.json", "09-audit-rejected.json"):
        shutil.copy(SAMPLES / "refonte" / name, folder / name)
    without = cli(laptop, "replay", str(folder))
    assert without.returncode == 1 and "needs --source" in without.stdout
    # Bare bodies carry no auth header: they are the operator's own files, replayed into the
    # configured (header-token) source unverified.
    done = cli(laptop, "replay", str(folder), "--source", "refonte")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 deliveries: 2 accepted, 0 duplicate, 0 rejected" in done.stdout


def test_bare_bodies_replay_recursively_stored_replayed_and_unverified(tmp_path: Path) -> None:
    """`taskhook replay samples/refonte --source refonte` (a header-token source): all 10
    through the pipeline into the ledger, each marked replayed and unverified."""
    laptop = write_config(tmp_path, "laptop")
    folder = tmp_path / "samples"
    shutil.copytree(SAMPLES / "refonte", folder / "refonte")
    (folder / "README.md").write_text("not a body")  # other files are not bodies
    dry = cli(laptop, "replay", str(folder), "--source", "refonte", "--dry-run")
    assert dry.returncode == 0 and "10 would be accepted" in dry.stdout, dry.stdout + dry.stderr
    done = cli(laptop, "replay", str(folder), "--source", "refonte")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "10 deliveries: 10 accepted, 0 duplicate, 0 rejected" in done.stdout
    with sqlite3.connect(tmp_path / "laptop.db") as conn:
        rows = conn.execute(
            "SELECT id, replayed, key_index, key_fingerprint, status FROM deliveries"
        ).fetchall()
        tasks = {row[0] for row in conn.execute("SELECT task_id FROM ledger_tasks")}
    assert len(rows) == 10 and {r[1:] for r in rows} == {(1, -1, None, "processed")}
    bodies = (json.loads(p.read_text()) for p in (SAMPLES / "refonte").glob("*.json"))
    assert tasks == {body["task_id"] for body in bodies}  # every sample's task, in the ledger
    shown = cli(laptop, "deliveries", "show", rows[0][0])
    doc = json.loads(shown.stdout)
    assert doc["replayed"] is True and doc["verified_by"] is None
    assert doc["headers"]["x-taskhook-unverified"].startswith("bare body replayed from refonte/")
    again = cli(laptop, "replay", str(folder / "refonte" / "01-completed.json"), "--source",
                "refonte")  # fmt: skip
    assert "0 accepted, 1 duplicate" in again.stdout


def test_recorded_lines_are_still_verified_beside_bare_bodies(tmp_path: Path) -> None:
    laptop = write_config(tmp_path, "laptop")
    line = {"source": "refonte", "headers": {"content-type": "application/json"},
            "body": sample("01-completed.json").decode()}  # fmt: skip
    recording = tmp_path / "unsigned.jsonl"
    recording.write_text(json.dumps(line) + "\n")
    done = cli(laptop, "replay", str(recording))
    assert done.returncode == 1
    assert "missing header refonte-callback-auth" in done.stdout


def test_replaying_nothing_is_an_error(tmp_path: Path) -> None:
    from receiver.errors import ReplayError, TaskhookError
    from receiver.replay import read_recordings

    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no bodies here")
    blank = tmp_path / "blank.jsonl"
    blank.write_text("\n\n")
    only_blank = tmp_path / "exports"
    only_blank.mkdir()
    (only_blank / "day.jsonl").write_text("")
    cases = {
        str(empty): "no *.json bodies or *.jsonl recordings under",
        str(tmp_path / "missing"): "no such file or folder",
        str(blank): "is an empty recording",
        str(only_blank): "is an empty recording",
    }
    for path, message in cases.items():
        with pytest.raises(ReplayError, match=re.escape(message)) as raised:
            read_recordings([path], source="refonte")  # raised before anything is read
        assert isinstance(raised.value, TaskhookError) and "\n" not in str(raised.value)
    # One path with nothing in it fails the whole replay, before anything is stored.
    with pytest.raises(ReplayError):
        read_recordings([str(SAMPLES / "refonte"), str(empty)], source="refonte")
    laptop = write_config(tmp_path, "laptop")
    done = cli(laptop, "replay", str(empty), "--source", "refonte")
    assert done.returncode != 0 and "nothing to replay" in done.stderr
    assert not (tmp_path / "laptop.db").exists() or ledger(tmp_path / "laptop.db")[0] == []


def test_replay_to_a_running_receiver_re_signs_each_body(tmp_path: Path) -> None:
    prod = write_config(tmp_path, "prod")
    produce(prod)
    recording = tmp_path / "traffic.jsonl"
    recording.write_text(cli(prod, "export").stdout)
    target = write_config(tmp_path, "target")
    with serving(tmp_path, "--config", str(target), env=clean_env()) as (base, _):
        done = cli(target, "replay", str(recording), "--to", base)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "10 accepted" in done.stdout
    with sqlite3.connect(tmp_path / "target.db") as conn:
        assert conn.execute("SELECT count(*) FROM deliveries").fetchone() == (10,)


def test_rebuild_equals_the_live_ledger(tmp_path: Path) -> None:
    prod = write_config(tmp_path, "prod")
    produce(prod)
    live = ledger(tmp_path / "prod.db")
    done = cli(prod, "rebuild")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "rebuilt: 10 deliveries" in done.stdout
    assert ledger(tmp_path / "prod.db") == live


PLUGIN = """
from receiver.registry import HandlerRegistry

SEEN = []


def register(registry: HandlerRegistry) -> None:
    def audit_counter(event):
        with open({path!r}, "a") as out:
            out.write(event.event_id + "\\n")

    registry.on("task.audited", audit_counter, name="audit-counter")
"""


def test_rebuild_handler_backfills_one_new_handler_once(tmp_path: Path) -> None:
    prod = write_config(tmp_path, "prod")
    produce(prod)
    seen = tmp_path / "seen.txt"
    (tmp_path / "new_handler_plugin.py").write_text(PLUGIN.replace("{path!r}", repr(str(seen))))
    with_plugin = tmp_path / "with.toml"
    with_plugin.write_text(
        prod.read_text().replace(
            'handlers = ["handlers.ledger"]', 'handlers = ["handlers.ledger", "new_handler_plugin"]'
        )
    )
    env = clean_env(PYTHONPATH=str(tmp_path))

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "receiver.cli", *args, "--config", str(with_plugin)],
            capture_output=True, text=True, timeout=120, env=env,
        )  # fmt: skip

    with sqlite3.connect(tmp_path / "prod.db") as conn:
        before = conn.execute("SELECT count(*) FROM handler_runs").fetchone()[0]
    first = run("rebuild", "--handler", "audit-counter")
    assert first.returncode == 0, first.stdout + first.stderr
    audits = seen.read_text().split()
    assert len(audits) == len(set(audits)) == 3  # accepted and fixed (task 1), rejected (3)
    second = run("rebuild", "--handler", "audit-counter")
    assert second.returncode == 0
    assert seen.read_text().split() == audits  # already handled: not run again
    with sqlite3.connect(tmp_path / "prod.db") as conn:
        after = conn.execute("SELECT count(*) FROM handler_runs").fetchone()[0]
        others = conn.execute(
            "SELECT count(*) FROM handler_runs WHERE handler != 'audit-counter'"
        ).fetchone()[0]
    assert after == before + 3 and others == before
    unknown = run("rebuild", "--handler", "nope")
    assert unknown.returncode == 2 and "audit-counter" in unknown.stderr


def test_simulate_plays_a_vendor_into_a_running_receiver(tmp_path: Path) -> None:
    from receiver.simulate import traffic

    first = [r.body for r in traffic(30, 5, "refonte")]
    assert first == [r.body for r in traffic(30, 5, "refonte")]  # the seed fixes the traffic
    assert len(set(first)) < len(first)  # exact duplicates and late retries are in it
    target = write_config(tmp_path, "target")
    with serving(tmp_path, "--config", str(target), env=clean_env()) as (base, _):
        done = cli(target, "simulate", "--to", base, "--tasks", "30", "--seed", "5")
        assert done.returncode == 0, done.stdout + done.stderr
        for _ in range(200):  # until the receiver's dispatcher has applied every delivery
            with sqlite3.connect(tmp_path / "target.db") as conn:
                waiting = conn.execute(
                    "SELECT count(*) FROM deliveries WHERE status IN ('received', 'failed')"
                ).fetchone()[0]
            if waiting == 0:
                break
            time.sleep(0.05)
    summary = done.stdout
    assert "0 rejected" in summary and " duplicate" in summary
    with sqlite3.connect(tmp_path / "target.db") as conn:
        items = conn.execute(
            "SELECT count(DISTINCT unique_id) FROM ledger_tasks WHERE unique_id IS NOT NULL"
        ).fetchone()[0]
        errored = conn.execute(
            "SELECT count(*) FROM ledger_tasks WHERE status = 'error'"
        ).fetchone()[0]
        stale = conn.execute("SELECT count(*) FROM ledger_history WHERE kind = 'stale'").fetchone()[
            0
        ]
    assert items == 30  # every item ends with its unique_id held by one live task
    assert errored >= 1 and stale >= 1


def test_replay_and_rebuild_give_their_summary_as_json(tmp_path: Path) -> None:
    """`--json`: the summary for scripts; the progress goes to stderr, never into it."""
    config = write_config(tmp_path, "json")
    samples = Path(__file__).resolve().parents[1] / "samples" / "refonte"
    replayed = cli(config, "replay", str(samples), "--source", "refonte", "--json")
    assert replayed.returncode == 0, replayed.stderr
    summary = json.loads(replayed.stdout)
    assert summary["accepted"] == summary["deliveries"] > 0 and summary["rejected"] == {}
    assert "stored:" in replayed.stderr and "applied:" in replayed.stderr
    rebuilt = cli(config, "rebuild", "--json")
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert json.loads(rebuilt.stdout)["deliveries"] == summary["accepted"]
    assert "read:" in rebuilt.stderr
