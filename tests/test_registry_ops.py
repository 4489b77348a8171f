"""Tests for the registry's operational seams (signals, periodic jobs, dashboard links, the
targeted reconcile hook) and the ``[ui]``/``[alerts]``/``[watchdog]`` settings."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from structlog.testing import capture_logs

from receiver.config import NO_SECRETS, settings_from_mapping
from receiver.errors import ConfigError, RegistryError
from receiver.registry import HandlerRegistry
from receiver.signals import Signal
from tests.conftest import AppFactory

SOURCE = {"sources": {"r": {"kind": "refonte", "verify": "none"}}}


def _signal(key: str = "d1") -> Signal:
    return Signal("delivery.dead", key, "delivery d1 is dead", at=1.0)


async def test_signal_reaches_every_hook_in_order_and_a_failing_one_is_contained() -> None:
    registry = HandlerRegistry()
    heard: list[str] = []

    def broken(signal: Signal) -> None:
        raise RuntimeError("hook bug")

    async def later(signal: Signal) -> None:
        heard.append("async:" + signal.key)

    registry.on_signal(lambda s: heard.append("sync:" + s.key))
    registry.on_signal(broken)
    registry.on_signal(later)
    with capture_logs() as logs:
        await registry.signal(_signal())
    assert heard == ["sync:d1", "async:d1"]
    assert [entry["event"] for entry in logs] == ["signal hook failed"]


def test_signal_kinds_are_checked() -> None:
    with pytest.raises(ValueError, match="unknown signal kind"):
        Signal("delivery.deed", "x", "typo", at=0.0)


def test_seams_refuse_registration_after_freeze_and_bad_values() -> None:
    registry = HandlerRegistry()

    async def job() -> None:
        return None

    with pytest.raises(RegistryError, match="above 0"):
        registry.every(0, job, name="j")
    with pytest.raises(RegistryError, match="under /ui/"):
        registry.add_nav("Expected", "/expected")
    registry.add_nav("Expected", "/ui/expected")
    registry.every(5, job, name="j")
    assert [(n.title, n.path) for n in registry.nav] == [("Expected", "/ui/expected")]
    assert [(p.name, p.seconds) for p in registry.periodic] == [("j", 5.0)]
    registry.freeze()
    with pytest.raises(RegistryError):
        registry.on_signal(lambda s: None)
    with pytest.raises(RegistryError):
        registry.every(5, job, name="late")


async def test_reconcile_task_without_an_app_says_nothing_was_asked() -> None:
    registry = HandlerRegistry()
    assert await registry.reconcile_task("r", "t1") is False
    asked: list[tuple[str, str]] = []

    async def reconcile(source: str, task_id: str) -> bool:
        asked.append((source, task_id))
        return True

    registry.set_task_reconciler(reconcile)
    assert await registry.reconcile_task("r", "t1") is True
    assert asked == [("r", "t1")]


async def test_serve_runs_periodic_jobs_and_survives_a_failing_run(build_app: AppFactory) -> None:
    runs: list[int] = []
    done = asyncio.Event()

    async def job() -> None:
        runs.append(len(runs))
        if len(runs) == 1:
            raise RuntimeError("first run fails")
        if len(runs) >= 3:
            done.set()

    def setup(registry: HandlerRegistry) -> None:
        assert registry.settings is not None and registry.settings.ui.enabled
        registry.every(0.01, job, name="tick")

    app = build_app(setup=setup)
    with capture_logs() as logs:
        async with app.started():
            await asyncio.wait_for(done.wait(), timeout=10)
    assert len(runs) >= 3
    assert any(e["event"] == "periodic job failed" and e["job"] == "tick" for e in logs)


def test_ops_sections_validate_and_resolve_the_alerts_secret() -> None:
    doc: dict[str, Any] = SOURCE | {
        "alerts": {"url": "https://hooks.example/x", "secret_env": "ALERT_SECRET"},
        "ui": {"session_hours": 2},
        "watchdog": {"check_seconds": 5},
    }
    settings = settings_from_mapping(doc, environ={"ALERT_SECRET": "whsec_c2VjcmV0"})
    assert settings.alerts.secret is not None
    assert settings.alerts.secret.get_secret_value() == "whsec_c2VjcmV0"
    assert "whsec_c2VjcmV0" in settings.secret_values()  # redacted like any secret
    assert settings.ui.session_hours == 2 and settings.watchdog.check_seconds == 5
    with pytest.raises(ConfigError, match="ALERT_SECRET"):
        settings_from_mapping(doc, environ={})
    # A read-only command does not need it: a key nobody holds, and the key is named.
    quiet = settings_from_mapping(doc, environ={}, needs=NO_SECRETS)
    assert "alerts.secret_env" in quiet.unresolved
    with pytest.raises(ConfigError, match="http"):
        settings_from_mapping(SOURCE | {"alerts": {"url": "ftp://x"}}, environ={})
    with pytest.raises(ConfigError, match="ui"):
        settings_from_mapping(SOURCE | {"ui": {"enabeld": False}}, environ={})


async def test_when_skips_the_events_a_handler_does_not_want(build_app: AppFactory) -> None:
    from receiver.events import Event
    from tests.conftest import client_for, sample, signed

    ran: list[str] = []

    def never(event: Event) -> bool:
        return False

    def broken(event: Event) -> bool:
        raise RuntimeError("filter bug")

    def setup(registry: HandlerRegistry) -> None:
        registry.on_any(lambda e: ran.append("skipped"), name="skipped", when=never)
        registry.on_any(lambda e: ran.append("broken"), name="broken", when=broken)
        registry.on("task.completed", lambda e: ran.append("plain"), name="plain")
        with pytest.raises(RegistryError, match="callable"):
            registry.on_any(lambda e: None, name="bad", when=True)  # type: ignore[arg-type]

    app = build_app(setup=setup)
    async with app.started(), client_for(app) as client:
        answer = await client.post(
            "/callbacks/refonte", content=sample("01-completed.json"), headers=signed()
        )
        delivery_id = answer.json()["delivery_id"]
        with capture_logs() as logs:
            await app.dispatcher.drain()
        events = await app.storage.load_events(delivery_id)
        done = await app.storage.succeeded_runs([e.event_id for e in events])
    assert sorted(ran) == ["broken", "plain"]  # a filter that fails lets the handler decide
    assert {handler for _, handler in done} == {"broken", "plain"}  # nothing recorded for it
    assert any(e["event"] == "handler filter failed" for e in logs)
