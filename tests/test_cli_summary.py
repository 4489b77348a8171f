"""Issue 14 (3): replay, rebuild, export and reconcile --once end with a summary table (rich on
a terminal, plain aligned lines elsewhere); --quiet drops it, --json replaces it. Each command
runs as a user runs it: a process of its own, an environment with nothing but PATH and a
temporary HOME and XDG_CACHE_HOME."""

from __future__ import annotations

import io
import json
import os
import pty
import re
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

from receiver.cli.summary import Report, emit, plain
from tests.vendors import Fake, clarifai_api, serving

SAMPLES = Path(__file__).resolve().parents[1] / "samples" / "refonte"
# The command line as `python -m receiver.cli`, but with Ctrl-C's default handling restored: a
# test runner started in the background ignores SIGINT, and its children would inherit that.
TASKHOOK = [
    sys.executable, "-c",
    "import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
    "from receiver.cli import main; sys.exit(main())",
]  # fmt: skip


def bare_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """Only PATH, and a HOME and XDG_CACHE_HOME of the test's own."""
    home = tmp_path / "home"
    (home / "cache").mkdir(parents=True, exist_ok=True)
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home),
           "XDG_CACHE_HOME": str(home / "cache")}  # fmt: skip
    return env | extra


def taskhook(
    cwd: Path, *args: str, env: dict[str, str], timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*TASKHOOK, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout, check=False)  # fmt: skip


def write_config(directory: Path, extra: str = "") -> Path:
    path = directory / "taskhook.toml"
    path.write_text(
        'entry_points = false\nhandlers = ["handlers.ledger"]\n'
        f'[database]\nurl = "sqlite:///{directory / "t.db"}"\n'
        '[sources.refonte]\nkind = "refonte"\nverify = "none"\n' + extra
    )
    return path


def row(text: str, name: str) -> str:
    """The value of the plain table's row `name` (exactly one such row)."""
    found = re.findall(rf"^{re.escape(name)}\s\s+(\S.*)$", text, re.MULTILINE)
    assert len(found) == 1, (name, text)
    return str(found[0])


def on_a_terminal(cwd: Path, *args: str, env: dict[str, str]) -> tuple[int, str]:
    """Run with stdout and stderr on a pseudo-terminal; the exit status and all it wrote."""
    master, slave = pty.openpty()
    proc = subprocess.Popen([*TASKHOOK, *args], cwd=cwd, env=env, stdin=slave, stdout=slave,
                            stderr=slave)  # fmt: skip
    os.close(slave)
    out = b""
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 1)
            if not ready:
                if proc.poll() is not None:
                    break
                continue
            try:
                data = os.read(master, 65536)
            except OSError:  # the child closed its end
                break
            if not data:
                break
            out += data
    finally:
        os.close(master)
        code = proc.wait(timeout=30)
    return code, out.decode(errors="replace")


def colours(text: str) -> set[str]:
    """The SGR colour parameters used in `text` (30-38, 40-48, 90-107; not bold)."""
    found: set[str] = set()
    for params in re.findall(r"\x1b\[([0-9;]*)m", text):
        for p in params.split(";"):
            if p.isdigit() and (30 <= int(p) <= 48 or 90 <= int(p) <= 107):
                found.add(p)
    return found


# --- the table, in-process -----------------------------------------------------------------


def test_plain_table_is_the_headline_then_aligned_rows() -> None:
    report = Report("3 things: done", [("read", 1234), ("applied", 7), ("elapsed", "1.5s")],
                    ["  rejected 1x: why"], {"read": 1234})  # fmt: skip
    assert plain(report).splitlines() == [
        "3 things: done", "  rejected 1x: why", "read     1234", "applied  7", "elapsed  1.5s"
    ]  # fmt: skip
    out = io.StringIO()
    emit(report, json_mode=True, quiet=False, stream=out)
    assert json.loads(out.getvalue()) == {"read": 1234}
    quiet = io.StringIO()
    emit(report, json_mode=False, quiet=True, stream=quiet)
    assert quiet.getvalue() == ""


def test_a_terminal_table_prints_text_as_written(monkeypatch: pytest.MonkeyPatch) -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setenv("NO_COLOR", "1")
    out = Terminal()
    emit(Report("[sources.x] [bold]not markup[/bold]", [("read", 1234567)]), json_mode=False,
         quiet=False, stream=out)  # fmt: skip
    text = out.getvalue()
    assert "[sources.x] [bold]not markup[/bold]" in text
    assert "1,234,567" in text and "╭" in text and not colours(text)


# --- the commands ----------------------------------------------------------------------------


def test_replay_ends_with_a_table_or_json_or_nothing(tmp_path: Path) -> None:
    write_config(tmp_path)
    env = bare_env(tmp_path)
    done = taskhook(tmp_path, "replay", str(SAMPLES), "--source", "refonte", env=env)
    assert done.returncode == 0, done.stderr
    assert "10 deliveries: 10 accepted, 0 duplicate, 0 rejected" in done.stdout  # kept, greppable
    assert row(done.stdout, "deliveries") == "10" and row(done.stdout, "applied") == "10"
    assert row(done.stdout, "rejected") == "0" and row(done.stdout, "rate").endswith("/s")
    assert "stored: 10 of 10" in done.stderr and "applied: 10 of 10" in done.stderr

    again = taskhook(tmp_path, "replay", str(SAMPLES), "--source", "refonte", "--json", env=env)
    summary = json.loads(again.stdout)
    assert (summary["deliveries"], summary["duplicate"], summary["applied"]) == (10, 10, 0)
    quiet = taskhook(tmp_path, "--quiet", "replay", str(SAMPLES), "--source", "refonte", env=env)
    assert quiet.returncode == 0 and quiet.stdout == ""


def test_rebuild_and_export_end_with_their_tables(tmp_path: Path) -> None:
    write_config(tmp_path)
    env = bare_env(tmp_path)
    assert (
        taskhook(tmp_path, "replay", str(SAMPLES), "--source", "refonte", env=env).returncode == 0
    )

    rebuilt = taskhook(tmp_path, "rebuild", env=env)
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert "rebuilt: 10 deliveries" in rebuilt.stdout
    assert row(rebuilt.stdout, "read") == "10" and row(rebuilt.stdout, "deliveries") == "10"
    assert "read: 10 of 10" in rebuilt.stderr
    as_json = json.loads(taskhook(tmp_path, "rebuild", "--json", env=env).stdout)
    assert as_json["deliveries"] == as_json["read"] == 10 and as_json["handler"] is None
    assert taskhook(tmp_path, "rebuild", "--quiet", env=env).stdout == ""

    # export: stdout is the export itself, so the summary is on stderr, in every form.
    exported = taskhook(tmp_path, "export", env=env)
    assert exported.returncode == 0, exported.stderr
    assert len([json.loads(line) for line in exported.stdout.splitlines()]) == 10
    assert "exported 10 delivery(ies)" in exported.stderr
    assert row(exported.stderr, "exported") == "10" and row(exported.stderr, "read") == "10"
    scripted = taskhook(tmp_path, "export", "--json", env=env)
    assert scripted.stdout == exported.stdout
    assert json.loads(scripted.stderr.strip().splitlines()[-1])["exported"] == 10
    silent = taskhook(tmp_path, "export", "--quiet", env=env)
    assert silent.stdout == exported.stdout and "exported" not in silent.stderr


def test_on_a_terminal_the_summary_is_a_table_and_no_color_is_honoured(tmp_path: Path) -> None:
    write_config(tmp_path)
    env = bare_env(tmp_path, TERM="xterm-256color")
    code, shown = on_a_terminal(tmp_path, "replay", str(SAMPLES), "--source", "refonte", env=env)
    assert code == 0, shown
    assert "╭" in shown and re.search(r"│ +applied +│ +10 │", re.sub(r"\x1b\[[0-9;]*m", "", shown))
    assert "10 deliveries: 10 accepted" in shown and "stored" in shown and "10/10" in shown
    assert colours(shown)  # coloured, so that the next run shows NO_COLOR at work
    code, plain_shown = on_a_terminal(tmp_path, "replay", str(SAMPLES), "--source", "refonte",
                                      env=env | {"NO_COLOR": "1"})  # fmt: skip
    assert code == 0 and "╭" in plain_shown and "applied" in plain_shown
    assert not colours(plain_shown), repr(plain_shown)


def test_reconcile_once_shows_its_phases_and_ends_with_a_table_or_json(tmp_path: Path) -> None:
    from tests.test_reconcile import API_KEY, clarifai_task

    fake = Fake()
    fake.tasks = {
        "t1": clarifai_task("t1", 54002, "2026-11-20T10:01:00Z"),
        "t2": clarifai_task("t2", 54003, "2026-11-20T10:02:00Z"),
        "t9": {"name": "a task without an id", "status": {"code": 54001}},
    }
    with serving(clarifai_api(fake, API_KEY)) as url:
        write_config(tmp_path, '[sources.clarifai]\nkind = "clarifai"\n[sources.clarifai.reconcile]'
                               f'\nbase_url = "{url}"\napi_key_env = "CLARIFAI_KEY"\n')  # fmt: skip
        env = bare_env(tmp_path, CLARIFAI_KEY=API_KEY)
        done = taskhook(tmp_path, "reconcile", "clarifai", "--once", env=env)
        assert done.returncode == 1, done.stderr  # one record quarantined
        assert "clarifai: 3 task snapshots read, 2 new fed" in done.stdout
        assert row(done.stdout, "read") == "3" and row(done.stdout, "fed") == "2"
        assert row(done.stdout, "quarantined") == "1" and row(done.stdout, "applied") == "2"
        assert re.search(r"^read: 3 \(", done.stderr, re.MULTILINE)  # no total: none is known
        assert "applied: 2 of 2" in done.stderr  # the quarantined one is not applied
        assert "1 of the 3 records read was quarantined" in done.stderr

        scripted = taskhook(tmp_path, "reconcile", "clarifai", "--once", "--json", env=env)
        assert scripted.returncode == 1  # the exit status does not depend on the form
        summary = json.loads(scripted.stdout)
        assert (summary["source"], summary["fetched"], summary["unchanged"]) == ("clarifai", 3, 2)
        assert summary["applied"] == 0 and summary["fed"] == 0
        [(reason, count)] = summary["quarantined"].items()
        assert "without an id" in reason and count == 1
        quiet = taskhook(tmp_path, "reconcile", "clarifai", "--once", "--quiet", env=env)
        assert quiet.returncode == 1 and quiet.stdout == ""
        assert "quarantined" in quiet.stderr  # a warning, which --quiet keeps
