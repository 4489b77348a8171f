"""Issue 14 (2): Ctrl-C ends replay, reconcile (--once and the loop) and simulate with exit 130
and one last line saying what was done so far; no traceback. Real processes sent SIGINT, in a
bare environment, talking to 127.0.0.1 only: a fake vendor API for reconcile, a fake receiver
for simulate. Each waits for evidence the work has begun, then interrupts it."""

from __future__ import annotations

import asyncio
import base64
import json
import re
import signal
import sqlite3
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.test_cli_summary import SAMPLES, TASKHOOK, bare_env, write_config
from tests.test_reconcile import refonte_task
from tests.vendors import serving


def interrupted(
    cwd: Path, args: list[str], env: dict[str, str], begun: Callable[[], bool]
) -> tuple[int, list[str]]:
    """Start the command, SIGINT it once `begun()`; its exit status and stderr lines."""
    proc = subprocess.Popen([*TASKHOOK, *args], cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not begun():
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the command never got going"
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr
    return proc.returncode, stderr.strip().splitlines()


def count(db: Path, status: str | None = None) -> int:
    """Deliveries stored (with `status`, if given) so far."""
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(db, timeout=0.1) as conn:
            found: int = conn.execute(
                "SELECT count(*) FROM deliveries WHERE ? IS NULL OR status = ?", (status, status)
            ).fetchone()[0]
    except sqlite3.OperationalError:  # not created yet, or busy
        return 0
    return found


def recording(path: Path, lines: int) -> Path:
    body = json.loads((SAMPLES / "01-completed.json").read_bytes())
    with path.open("w") as out:
        for i in range(lines):
            body["task_id"] = body["task"]["task_id"] = f"task{i:08d}"
            line = {"source": "refonte", "headers": {"content-type": "application/json"},
                    "body": json.dumps(body)}  # fmt: skip
            out.write(json.dumps(line) + "\n")
    return path


def test_ctrl_c_while_a_replay_stores(tmp_path: Path) -> None:
    write_config(tmp_path)
    traffic = recording(tmp_path / "traffic.jsonl", 20_000)
    code, lines = interrupted(tmp_path, ["replay", str(traffic)], bare_env(tmp_path),
                              lambda: count(tmp_path / "t.db") > 0)  # fmt: skip
    assert code == 130, lines
    said = re.fullmatch(r"taskhook: interrupted: ([\d,]+) of 20,000 deliveries stored, "
                        r"([\d,]+) applied", lines[-1])  # fmt: skip
    assert said, lines
    stored = int(said[1].replace(",", ""))
    assert stored <= count(tmp_path / "t.db")  # what it says was stored is stored


def test_ctrl_c_while_a_replay_applies(tmp_path: Path) -> None:
    write_config(tmp_path)
    traffic = recording(tmp_path / "traffic.jsonl", 5_000)
    code, lines = interrupted(tmp_path, ["replay", str(traffic)], bare_env(tmp_path),
                              lambda: count(tmp_path / "t.db", "processed") > 0)  # fmt: skip
    assert code == 130, lines
    said = re.fullmatch(r"taskhook: interrupted: 5,000 of 5,000 deliveries stored, ([\d,]+) "
                        r"applied", lines[-1])  # fmt: skip
    assert said, lines
    assert int(said[1].replace(",", "")) <= count(tmp_path / "t.db", "processed")


def endless_refonte(pages: list[int], delay: float = 0.05) -> Starlette:
    """A Refonte task API that always has one more page of new tasks (the pass never ends)."""

    async def tasks(request: Request) -> Response:
        await asyncio.sleep(delay)
        token = request.query_params.get("next_token")
        page = int(base64.b64decode(token)) if token else 0
        pages.append(page)
        docs = [refonte_task(f"t{page:05d}{i}", "completed", "2026-11-02T00:00:00Z")
                for i in range(5)]  # fmt: skip
        next_token = base64.b64encode(str(page + 1).encode()).decode()
        return JSONResponse({"docs": docs, "has_more": True, "next_token": next_token})

    return Starlette(routes=[Route("/v1/tasks", tasks)])


def polled(url: str, interval: float = 300) -> str:
    return ('[sources.polled]\nkind = "refonte"\nverify = "none"\n[sources.polled.reconcile]\n'
            f'base_url = "{url}"\napi_key = "k"\ninterval_seconds = {interval}\n')  # fmt: skip


def test_ctrl_c_during_a_reconcile_pass(tmp_path: Path) -> None:
    pages: list[int] = []
    with serving(endless_refonte(pages)) as url:
        write_config(tmp_path, polled(url))
        code, lines = interrupted(tmp_path, ["reconcile", "polled", "--once"], bare_env(tmp_path),
                                  lambda: len(pages) >= 3)  # fmt: skip
    assert code == 130, lines
    said = re.fullmatch(r"taskhook: interrupted: polled: ([\d,]+) records read, ([\d,]+) fed, "
                        r"0 applied", lines[-1])  # fmt: skip
    assert said, lines
    read, fed = (int(n.replace(",", "")) for n in said.groups())
    assert 10 <= read <= 5 * len(pages) and fed <= read
    assert fed <= count(tmp_path / "t.db")


def test_ctrl_c_ends_the_reconcile_loop(tmp_path: Path) -> None:
    passes: list[int] = []

    async def tasks(request: Request) -> Response:
        passes.append(1)
        doc = refonte_task("t1", "completed", "2026-11-02T00:00:00Z")
        return JSONResponse({"docs": [doc], "has_more": False, "next_token": None})

    with serving(Starlette(routes=[Route("/v1/tasks", tasks)])) as url:
        write_config(tmp_path, polled(url, interval=0.1))
        code, lines = interrupted(tmp_path, ["reconcile", "polled"], bare_env(tmp_path),
                                  lambda: len(passes) >= 3)  # fmt: skip
    assert code == 130, lines
    said = re.fullmatch(r"taskhook: interrupted: polled: ([\d,]+) records read, 1 fed; "
                        r"stopped cleanly after \d+s of polling", lines[-1])  # fmt: skip
    assert said and int(said[1]) >= 2, lines


def test_ctrl_c_ends_simulate(tmp_path: Path) -> None:
    received: list[int] = []

    async def callback(request: Request) -> Response:
        await request.body()
        received.append(1)
        return JSONResponse({"status": "accepted", "delivery_id": f"dlv_{len(received)}"})

    with serving(
        Starlette(routes=[Route("/callbacks/{source}", callback, methods=["POST"])])
    ) as url:
        args = ["simulate", "--to", url, "--tasks", "2000", "--rate", "100"]
        env = bare_env(tmp_path, TASKHOOK_REFONTE_SECRET="s")
        code, lines = interrupted(tmp_path, args, env, lambda: len(received) >= 5)
    assert code == 130, lines
    said = re.fullmatch(r"taskhook: interrupted: ([\d,]+) deliveries sent", lines[-1])
    assert said, lines
    assert 5 <= int(said[1].replace(",", "")) <= len(received)
