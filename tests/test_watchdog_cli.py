"""``taskhook expect`` as a user runs it: the installed console script, a config file of its
own, a clean environment; registering, listing, cancelling, and the refusals."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.test_cli import clean_env

TASKHOOK = Path(sys.executable).parent / "taskhook"


@pytest.fixture
def taskhook(tmp_path: Path) -> Any:
    config = tmp_path / "taskhook.toml"
    config.write_text(
        'entry_points = false\nhandlers = ["handlers.watchdog", "handlers.ledger"]\n'
        f'[database]\nurl = "sqlite:///{tmp_path / "t.db"}"\n'
        '[sources.refonte]\nkind = "refonte"\nverify = "header-token"\n'
        'header = "refonte-callback-auth"\nsecrets = ["s3cret"]\n'
    )

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(TASKHOOK), "--config", str(config), *args], cwd=tmp_path, env=clean_env(),
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip

    return run


def test_expect_registers_lists_and_cancels(taskhook: Any) -> None:
    made = taskhook("expect", "--source", "refonte", "--task", "t1", "--task", "t2",
                    "--within", "2h", "--note", "batch 12")  # fmt: skip
    assert made.returncode == 0, made.stderr
    assert "t1" in made.stdout and "t2" in made.stdout and "waiting" in made.stdout
    both = taskhook("--json", "expect", "--source", "refonte", "--task", "t0",
                    "--unique-id", "u-0", "--within", "3h")  # fmt: skip
    assert both.returncode == 0, both.stderr
    mixed = json.loads(both.stdout)["expected"]
    assert [(e["task_id"], e["unique_id"]) for e in mixed] == [("t0", None), (None, "u-0")]

    by = taskhook("--json", "expect", "--source", "refonte", "--unique-id", "u-7",
                  "--by", "2099-01-01T00:00:00+00:00")  # fmt: skip
    assert by.returncode != 0 and "more than a year away" in by.stderr
    soon = taskhook("--json", "expect", "--source", "refonte", "--unique-id", "u-7",
                    "--within", "1h30m")  # fmt: skip
    assert soon.returncode == 0, soon.stderr
    [unique] = json.loads(soon.stdout)["expected"]
    assert unique["unique_id"] == "u-7" and unique["registered_by"] == "cli"

    listed = taskhook("expect", "--list", "--json")
    assert listed.returncode == 0, listed.stderr
    page = json.loads(listed.stdout)
    assert page["total"] == 5
    # By deadline: the unique_id (1h30m), the tasks (2h), then the pair (3h).
    assert [d["task_id"] or d["unique_id"] for d in page["docs"]][:3] == ["u-7", "t1", "t2"]
    assert {d["note"] for d in page["docs"][1:3]} == {"batch 12"}

    overdue = taskhook("expect", "--list", "--overdue")
    assert overdue.returncode == 0 and "0 of 0 expectation(s)" in overdue.stdout

    cancelled = taskhook("--json", "expect", "--cancel", page["docs"][1]["id"])
    assert cancelled.returncode == 0, cancelled.stderr
    assert json.loads(cancelled.stdout)["state"] == "cancelled"
    waiting = json.loads(taskhook("expect", "--list", "--state", "waiting", "--json").stdout)
    assert [d["task_id"] or d["unique_id"] for d in waiting["docs"]] == ["u-7", "t2", "t0", "u-0"]


@pytest.mark.parametrize(
    ("args", "why"),
    [
        (("--source", "nope", "--task", "t1", "--within", "1h"), "unknown source 'nope'"),
        (("--task", "t1", "--within", "1h"), "needs --source"),
        (("--source", "refonte", "--task", "t1"), "one of --within and --by"),
        (("--source", "refonte", "--task", "t1", "--by", "2020-01-01T00:00:00Z"), "in the past"),
        (("--source", "refonte", "--task", "t1", "--by", "tomorrow"), "deadline"),
        (("--source", "refonte", "--task", "t1", "--within", "soon"), "a duration like"),
        (("--cancel", "exp_nope"), "no expectation"),
        (("--source", "refonte", "--within", "1h"), "name --task or --unique-id"),
        (("--list", "--task", "t1"), "name --task or --unique-id"),
    ],
)
def test_expect_refuses_with_a_reason(taskhook: Any, args: tuple[str, ...], why: str) -> None:
    done = taskhook("expect", *args)
    assert done.returncode == 2, done
    assert why in done.stderr
    assert "Traceback" not in done.stderr
