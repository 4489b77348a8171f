"""``taskhook trigger``: each event's delivery passes its source's real verification, and the
receiver accepts it and yields that event."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from receiver import trigger
from receiver.app import create_app
from receiver.config import Settings
from receiver.errors import VerificationError
from receiver.events import Event
from receiver.registry import HandlerRegistry
from receiver.verify import verify
from tests.conftest import make_settings
from tests.test_cli import clean_env, serving

SW_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
USE_CASE = "305ea07b-1d24-4f8f-8e1d-aae27cb07840"
TASK_DEF = "4ed59e6b-bf4b-4f33-a1dc-4015d63eef59"
SOURCES: dict[str, Any] = {
    "refonte": {"kind": "refonte", "verify": "header-token", "header": "refonte-callback-auth",
                "secrets": ["tok-new", "tok-old"]},
    "hmac": {"kind": "refonte", "verify": "hmac-sha256", "secrets": ["hmac-secret"]},
    "sha1": {"kind": "refonte", "verify": "hmac-sha1", "secrets": ["sha1-secret"]},
    "sw": {"kind": "refonte", "verify": "standard-webhooks", "secrets": [SW_SECRET]},
    "cf": {"kind": "cloudfactory", "verify": "header-token", "secrets": ["cf-key"],
           "workstream_id": "ws-7", "use_case_ids": [USE_CASE], "task_definition_ids": [TASK_DEF]},
    "docs": {"kind": "document-review", "verify": "hmac-sha256", "secrets": ["docs-secret"]},
}  # fmt: skip
CASES = [
    (name, event) for name, cfg in SOURCES.items() for event in trigger.KIND_EVENTS[cfg["kind"]]
]


def settings(tmp_path: Path) -> Settings:
    return make_settings(
        tmp_path / "trigger.db",
        sources=SOURCES,
        handlers=["handlers.ledger", "handlers.throughput"],
    )


def test_every_event_named_in_the_issue_is_triggerable() -> None:
    for event in ("task.completed", "task.errored", "task.audited", "task.recalled",
                  "throughput.recorded", "task.reported", "task.reviewing"):  # fmt: skip
        assert event in trigger.EVENTS


@pytest.mark.parametrize(("source", "event"), CASES)
def test_each_delivery_passes_the_real_verification(
    tmp_path: Path, source: str, event: str
) -> None:
    cfg = settings(tmp_path).sources[source]
    for body, headers in trigger.deliveries(event, cfg):
        checked = verify(cfg.scheme, body, headers, cfg.secret_values(), header=cfg.header_name,
                         now=time.time(), tolerance_seconds=cfg.tolerance_seconds)  # fmt: skip
        assert checked.key_index == 0  # signed with the first (the current) secret
        assert headers["content-type"] == "application/json"
        if cfg.scheme != "header-token":  # a signature covers the body: tampering shows
            with pytest.raises(VerificationError):
                verify(cfg.scheme, body + b"\n", headers,
                       cfg.secret_values(), header=cfg.header_name, now=time.time())  # fmt: skip


def test_each_trigger_is_fresh_and_realistic(tmp_path: Path) -> None:
    cfg = settings(tmp_path).sources["refonte"]
    first, _ = trigger.build("task.errored", cfg)
    second, _ = trigger.build("task.errored", cfg)
    assert first != second  # new ids each time: never a duplicate of the last trigger
    import json

    doc = json.loads(first)
    assert doc["status"] == doc["task"]["status"] == "error"
    assert doc["task"]["clear_unique_id_on_error"] is True
    assert doc["task"]["updated_at"] >= doc["task"]["created_at"]
    recall = [json.loads(b) for b, _ in trigger.deliveries("task.recalled", cfg)]
    assert [d["status"] for d in recall] == ["completed", "pending"]
    assert recall[0]["task_id"] == recall[1]["task_id"]
    assert recall[0]["task"]["updated_at"] < recall[1]["task"]["updated_at"]


async def test_the_intake_accepts_each_and_yields_the_event(tmp_path: Path) -> None:
    seen: list[Event] = []
    config = settings(tmp_path)

    def setup(registry: HandlerRegistry) -> None:
        registry.on_any(seen.append, name="collect")

    app = create_app(config, setup=setup)
    transport = httpx.ASGITransport(app=app)
    async with app.started():
        for source, event in CASES:
            answers = await trigger.send(event, "http://taskhook", config, source,
                                         transport=transport)  # fmt: skip
            assert answers and all(status in (200, 202) for status, _ in answers), (
                source, event, answers,
            )  # fmt: skip
            assert all('"duplicate"' not in text for _, text in answers)
            await app.dispatcher.drain()
            names = {e.name for e in seen if e.source == source}
            assert event in names, (source, event, names)
            if event == "task.errored":  # clear_unique_id_on_error: the unique_id is let go
                assert "unique_id.released" in names
            seen.clear()


def test_unknown_events_and_sources_are_refused(tmp_path: Path) -> None:
    config = settings(tmp_path)
    with pytest.raises(trigger.TriggerError, match="unknown event"):
        trigger.build("task.exploded", config.sources["refonte"])
    with pytest.raises(trigger.TriggerError, match=r"does not send throughput\.recorded"):
        trigger.build("throughput.recorded", config.sources["refonte"])
    with pytest.raises(trigger.TriggerError, match="no source 'nope'"):
        trigger.pick_source("task.completed", config, "nope")
    assert trigger.pick_source("task.completed", config) == "refonte"
    assert trigger.pick_source("throughput.recorded", config) == "cf"
    assert trigger.pick_source("task.reviewing", config) == "docs"


def test_trigger_command_against_a_running_receiver(tmp_path: Path) -> None:
    """The command as the CLI wires it (`receiver.cli.trigger`), over real HTTP."""
    import argparse

    from receiver.cli import trigger as trigger_command

    config = tmp_path / "taskhook.toml"
    config.write_text(
        f'entry_points = false\nhandlers = ["handlers.ledger"]\n'
        f'[database]\nurl = "sqlite:///{tmp_path / "t.db"}"\n'
        '[sources.refonte]\nkind = "refonte"\nverify = "header-token"\n'
        'header = "refonte-callback-auth"\nsecrets = ["prod-secret"]\n[log]\nlevel = "warning"\n'
    )
    parser = argparse.ArgumentParser()
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config")
    trigger_command.configure(parser.add_subparsers(dest="command"), common)
    with serving(tmp_path, "--config", str(config), env=clean_env()) as (base, _):
        args = parser.parse_args(["trigger", "task.recalled", "--to", base, "--config",
                                  str(config)])  # fmt: skip
        assert args.func(args) == 0
        bad = parser.parse_args(["trigger", "task.nope", "--to", base, "--config", str(config)])
        assert args.func(bad) == 2
        listed = subprocess.run(
            [sys.executable, "-m", "receiver.cli", "deliveries", "list", "--config", str(config)],
            capture_output=True, text=True, timeout=60, env=clean_env(),
        )  # fmt: skip
    assert "2 of 2 delivery(ies)" in listed.stdout, listed.stdout + listed.stderr
