"""Tests for receiver.registry and receiver.plugins, and the example handler package.

Throwaway plugin modules are written to ``tmp_path`` with a unique name per test, so one
test's module never satisfies another test's import. The example package under
``examples/taskhook-slack-notify`` is installed with pip into a private ``--target`` directory,
the way a user would install a plugin, and driven end to end through a real app.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import json
import re
import shutil
import subprocess
import sys
import textwrap
import threading
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from structlog.testing import capture_logs

from receiver.app import TaskhookApp, create_app
from receiver.config import Settings, settings_from_mapping
from receiver.errors import RegistryError
from receiver.events import EVENT_NAMES, Event
from receiver.plugins import ENTRY_POINT_GROUP, discovered, load_plugins, resolve
from receiver.records import DeliveryRecord, DeliveryStatus
from receiver.registry import HandlerRegistry, default_name
from receiver.storage.sqlite import SQLiteStorage

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "samples" / "refonte"
EXAMPLE = ROOT / "examples" / "taskhook-slack-notify"
PLUGIN_MODULE = "taskhook_slack_notify"
PLUGIN_HANDLER = "slack_notify.notify"
COMPLETED_TASK_ID = "576c41bf13e36b0600b02b34"
ERRORED_TASK_ID = "6500aa01e4b0c1d2e3f40001"
# A failing handler makes the delivery dead at once, so drain() has no backoff to wait out.
ONE_ATTEMPT = {"enabled": False, "max_attempts": 1}


def on_completed(event: Event) -> None:
    pass


async def on_anything(event: Event) -> None:
    pass


def make_event(name: str = "task.completed") -> Event:
    return Event(
        event_id="evt_1",
        name=name,
        source="refonte",
        task_id="t1",
        delivery_id="dlv_1",
        occurred_at=datetime(2024, 1, 1, tzinfo=UTC),
        payload={},
    )


def names(registry: HandlerRegistry) -> list[str]:
    return [h.name for h in registry.handlers]


# --- registry ------------------------------------------------------------------------------


def test_on_one_event() -> None:
    registry = HandlerRegistry()
    returned = registry.on("task.completed", on_completed, name="done")
    assert returned is on_completed
    [entry] = registry.handlers
    assert (entry.name, entry.func, entry.events) == (
        "done",
        on_completed,
        frozenset({"task.completed"}),
    )
    assert [h.name for h in registry.handlers_for("task.completed")] == ["done"]
    assert registry.handlers_for("task.canceled") == []


@pytest.mark.parametrize(
    "events",
    [
        ["task.completed", "task.errored"],
        ("task.completed", "task.errored"),
        {"task.completed", "task.errored"},
        (e for e in ("task.completed", "task.errored")),
    ],
    ids=["list", "tuple", "set", "generator"],
)
def test_on_several_events(events: Any) -> None:
    registry = HandlerRegistry()
    registry.on(events, on_completed, name="finished")
    assert registry.handlers[0].events == frozenset({"task.completed", "task.errored"})
    for name in ("task.completed", "task.errored"):
        assert [h.name for h in registry.handlers_for(name)] == ["finished"]
    assert registry.handlers_for("task.audited") == []


def test_on_needs_at_least_one_event() -> None:
    registry = HandlerRegistry()
    with pytest.raises(RegistryError, match="at least one event"):
        registry.on([], on_completed)
    assert registry.handlers == ()


def test_on_any_runs_for_every_known_event() -> None:
    registry = HandlerRegistry()
    assert registry.on_any(on_anything, name="all") is on_anything
    assert registry.handlers[0].events is None
    for event_name in EVENT_NAMES:
        assert [h.name for h in registry.handlers_for(event_name)] == ["all"]


def test_specific_handlers_come_before_catch_alls_in_registration_order() -> None:
    registry = HandlerRegistry()
    registry.on_any(on_anything, name="any-1")
    registry.on("task.completed", on_completed, name="specific-1")
    registry.on_any(on_anything, name="any-2")
    registry.on(["task.errored", "task.completed"], on_completed, name="specific-2")
    registry.on("task.errored", on_completed, name="errored-only")

    assert [h.name for h in registry.handlers_for("task.completed")] == [
        "specific-1",
        "specific-2",
        "any-1",
        "any-2",
    ]
    assert [h.name for h in registry.handlers_for("task.errored")] == [
        "specific-2",
        "errored-only",
        "any-1",
        "any-2",
    ]
    assert [h.name for h in registry.handlers_for("task.audited")] == ["any-1", "any-2"]
    # `handlers` itself keeps plain registration order.
    assert names(registry) == ["any-1", "specific-1", "any-2", "specific-2", "errored-only"]


@pytest.mark.parametrize(
    "events", ["task.complete", ["task.completed", "task.complete"]], ids=["alone", "mixed"]
)
def test_unknown_event_name_is_rejected_at_registration(events: Any) -> None:
    registry = HandlerRegistry()
    with pytest.raises(RegistryError, match=r"unknown event name\(s\) task\.complete;") as info:
        registry.on(events, on_completed)
    assert "known: " in str(info.value)
    assert "task.completed" in str(info.value).split("known: ")[1]
    assert registry.handlers == ()


def test_unknown_event_names_are_all_named_sorted() -> None:
    registry = HandlerRegistry()
    with pytest.raises(RegistryError, match=r"unknown event name\(s\) a\.b, z\.y;"):
        registry.on(["z.y", "task.completed", "a.b"], on_completed)


def test_known_events_can_be_narrowed() -> None:
    registry = HandlerRegistry(known_events=["ping"])
    assert registry.event_names == {"ping"}
    registry.on("ping", on_completed)
    with pytest.raises(RegistryError, match=r"task\.completed"):
        registry.on("task.completed", on_anything)


def test_default_name_is_module_and_qualname() -> None:
    registry = HandlerRegistry()
    registry.on("task.completed", on_completed)
    assert names(registry) == [f"{__name__}:on_completed"]
    assert default_name(on_completed) == f"{__name__}:on_completed"


def test_default_name_of_callable_instance_uses_its_class() -> None:
    class Notifier:
        def __call__(self, event: Event) -> None:
            pass

    registry = HandlerRegistry()
    registry.on_any(Notifier())
    assert names(registry) == [
        f"{__name__}:test_default_name_of_callable_instance_uses_its_class.<locals>.Notifier"
    ]


def test_duplicate_names_are_rejected() -> None:
    registry = HandlerRegistry()
    registry.on("task.completed", on_completed, name="notify")
    with pytest.raises(RegistryError, match="'notify' is already registered"):
        registry.on("task.errored", on_anything, name="notify")
    with pytest.raises(RegistryError, match="'notify' is already registered"):
        registry.on_any(on_anything, name="notify")
    assert names(registry) == ["notify"]


def test_same_function_twice_needs_explicit_names() -> None:
    registry = HandlerRegistry()
    registry.on("task.completed", on_completed)
    with pytest.raises(RegistryError, match=r"pass name=\.\.\. to tell them apart"):
        registry.on("task.errored", on_completed)
    registry.on("task.errored", on_completed, name="errored")
    assert names(registry) == [f"{__name__}:on_completed", "errored"]


@pytest.mark.parametrize("bad", [None, 42, "task.completed"], ids=["none", "int", "str"])
def test_non_callable_handlers_are_rejected(bad: Any) -> None:
    registry = HandlerRegistry()
    with pytest.raises(RegistryError, match="is not callable"):
        registry.on("task.completed", bad)
    with pytest.raises(RegistryError, match="is not callable"):
        registry.on_any(bad)
    with pytest.raises(RegistryError, match="is not callable"):
        registry.on_error(bad)
    assert registry.handlers == ()
    assert registry.error_hooks == ()


def test_classes_are_rejected_as_handlers() -> None:
    class Handler:
        def __init__(self, event: Event) -> None:
            pass

    registry = HandlerRegistry()
    as_handler: Any = Handler  # what a user might pass by mistake
    with pytest.raises(RegistryError, match="is a class"):
        registry.on("task.completed", as_handler)
    with pytest.raises(RegistryError, match="is a class"):
        registry.on_any(as_handler)


def test_registration_after_freeze_is_rejected() -> None:
    registry = HandlerRegistry()
    registry.on("task.completed", on_completed, name="early")
    registry.freeze()
    with pytest.raises(RegistryError, match="before the app starts"):
        registry.on("task.completed", on_anything, name="late")
    with pytest.raises(RegistryError, match="before the app starts"):
        registry.on_any(on_anything, name="late-any")

    def hook(event: Event, name: str, exc: BaseException) -> None:
        pass

    with pytest.raises(RegistryError, match="before the app starts"):
        registry.on_error(hook)
    assert names(registry) == ["early"]
    assert registry.error_hooks == ()
    assert [h.name for h in registry.handlers_for("task.completed")] == ["early"]


def test_error_hooks_are_stored_in_order() -> None:
    registry = HandlerRegistry()

    def first(event: Event, name: str, exc: BaseException) -> None:
        pass

    async def second(event: Event, name: str, exc: BaseException) -> None:
        pass

    assert registry.on_error(first) is first
    assert registry.on_error(second) is second
    assert registry.error_hooks == (first, second)
    assert registry.handlers == ()


# --- plugins from config specs -------------------------------------------------------------


PluginFactory = Callable[[str], str]


@pytest.fixture
def make_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[PluginFactory]:
    """Write a throwaway module with a unique name under tmp_path; return its name."""
    root = tmp_path / "plugins"
    root.mkdir()
    monkeypatch.syspath_prepend(str(root))
    made: list[str] = []

    def make(source: str) -> str:
        name = f"plugin_{uuid.uuid4().hex}"
        (root / f"{name}.py").write_text(textwrap.dedent(source), encoding="utf-8")
        importlib.invalidate_caches()
        made.append(name)
        return name

    yield make
    for name in made:
        sys.modules.pop(name, None)


REGISTER_MODULE = """
    from receiver.events import Event

    seen = []

    def handle(event: Event) -> None:
        seen.append(event)

    def register(registry):
        registry.on("task.completed", handle, name="from-register")
"""


def test_spec_module_uses_its_register(make_module: PluginFactory) -> None:
    module = make_module(REGISTER_MODULE)
    registry = HandlerRegistry()
    loaded = load_plugins(registry, specs=[module], use_entry_points=False)
    assert loaded == [module]
    assert names(registry) == ["from-register"]
    assert registry.handlers[0].func is sys.modules[module].handle


def test_spec_module_colon_function(make_module: PluginFactory) -> None:
    module = make_module(
        """
        def handle(event):
            pass

        def register(registry):
            raise AssertionError("the named function is used, not register")

        def install_handlers(registry):
            registry.on(["task.errored", "task.canceled"], handle, name="from-function")
            registry.on_error(lambda event, name, exc: None)
        """
    )
    spec = f"{module}:install_handlers"
    registry = HandlerRegistry()
    assert load_plugins(registry, specs=[spec], use_entry_points=False) == [spec]
    assert names(registry) == ["from-function"]
    assert registry.handlers[0].events == frozenset({"task.errored", "task.canceled"})
    assert len(registry.error_hooks) == 1


def test_spec_attribute_with_a_register_method(make_module: PluginFactory) -> None:
    module = make_module(
        """
        class _Plugin:
            def register(self, registry):
                registry.on_any(lambda event: None, name="from-object")

        plugin = _Plugin()
        """
    )
    registry = HandlerRegistry()
    load_plugins(registry, specs=[f"{module}:plugin"], use_entry_points=False)
    assert names(registry) == ["from-object"]


def test_specs_load_in_order(make_module: PluginFactory) -> None:
    first = make_module("def register(registry):\n    registry.on_any(print, name='first')\n")
    second = make_module("def register(registry):\n    registry.on_any(repr, name='second')\n")
    registry = HandlerRegistry()
    assert load_plugins(registry, specs=[second, first], use_entry_points=False) == [
        second,
        first,
    ]
    assert names(registry) == ["second", "first"]


def test_missing_module_is_an_error_naming_the_spec() -> None:
    spec = f"no_such_plugin_{uuid.uuid4().hex}"
    with pytest.raises(RegistryError, match=f"handler plugin '{spec}' cannot be imported"):
        load_plugins(HandlerRegistry(), specs=[spec], use_entry_points=False)
    with pytest.raises(RegistryError, match=f"'{spec}:register' cannot be imported"):
        resolve(f"{spec}:register")


def test_plugin_importing_a_missing_dependency_names_the_plugin(
    make_module: PluginFactory,
) -> None:
    missing = f"missing_dep_{uuid.uuid4().hex}"
    module = make_module(f"import {missing}\n\ndef register(registry):\n    pass\n")
    with pytest.raises(RegistryError, match=f"'{module}' cannot be imported.*{missing}"):
        resolve(module)


def test_module_without_register_is_an_error(make_module: PluginFactory) -> None:
    module = make_module("def setup(registry):\n    pass\n")
    with pytest.raises(
        RegistryError, match=f"handler plugin '{module}' has no register\\(registry\\) function"
    ):
        load_plugins(HandlerRegistry(), specs=[module], use_entry_points=False)


def test_missing_attribute_is_an_error(make_module: PluginFactory) -> None:
    module = make_module(REGISTER_MODULE)
    spec = f"{module}:install"
    with pytest.raises(RegistryError, match=f"handler plugin '{spec}': {module} has no 'install'"):
        load_plugins(HandlerRegistry(), specs=[spec], use_entry_points=False)


def test_non_callable_attribute_is_an_error(make_module: PluginFactory) -> None:
    module = make_module("register = 'not a function'\nLIMIT = 3\n")
    with pytest.raises(RegistryError, match=f"plugin {module}: expected a register"):
        resolve(module)
    with pytest.raises(RegistryError, match=f"plugin {module}:LIMIT: expected a register"):
        resolve(f"{module}:LIMIT")


def test_plugin_registering_unknown_event_names_the_plugin(make_module: PluginFactory) -> None:
    module = make_module(
        """
        def register(registry):
            registry.on("task.finished", lambda event: None, name="typo")
        """
    )
    registry = HandlerRegistry()
    with pytest.raises(RegistryError) as info:
        load_plugins(registry, specs=[module], use_entry_points=False)
    message = str(info.value)
    assert message.startswith(f"plugin {module}: ")
    assert "unknown event name(s) task.finished" in message
    assert registry.handlers == ()


def test_two_plugins_with_the_same_handler_name_conflict(make_module: PluginFactory) -> None:
    first = make_module("def register(registry):\n    registry.on_any(print, name='same')\n")
    second = make_module("def register(registry):\n    registry.on_any(repr, name='same')\n")
    with pytest.raises(RegistryError, match=f"plugin {second}: .*'same' is already registered"):
        load_plugins(HandlerRegistry(), specs=[first, second], use_entry_points=False)


def test_plugins_in_config_are_loaded_by_create_app(
    make_module: PluginFactory, tmp_path: Path
) -> None:
    module = make_module(REGISTER_MODULE)
    app = create_app(_settings(tmp_path, handlers=[module], entry_points=False))
    assert app.plugins == [module]
    assert names(app.registry) == ["from-register"]


def test_setup_runs_after_plugins(make_module: PluginFactory, tmp_path: Path) -> None:
    module = make_module(REGISTER_MODULE)

    def setup(registry: HandlerRegistry) -> None:
        registry.on_any(on_anything, name="from-setup")

    app = create_app(_settings(tmp_path, handlers=[module], entry_points=False), setup=setup)
    assert names(app.registry) == ["from-register", "from-setup"]


# --- entry points --------------------------------------------------------------------------


def _settings(tmp_path: Path, **overrides: Any) -> Settings:
    doc: dict[str, Any] = {
        "database": {"url": "sqlite:///" + str(tmp_path / "taskhook.db")},
        "sources": {"refonte": {"kind": "refonte", "verify": "none"}},
        "dispatch": {"enabled": False},
        **overrides,
    }
    return settings_from_mapping(doc, environ={})


def test_builtin_log_entry_point_is_discovered() -> None:
    found = {ep.name: ep for ep in discovered()}
    assert "log" in found
    assert found["log"].value == "handlers.log:register"
    assert found["log"].group == ENTRY_POINT_GROUP
    assert discovered("taskhook.no-such-group") == []


def test_entry_points_load_before_config_specs(make_module: PluginFactory, tmp_path: Path) -> None:
    module = make_module(REGISTER_MODULE)
    # The built-in ledger keeps state in the app's database, so it needs a storage backend.
    registry = HandlerRegistry(storage=SQLiteStorage(f"sqlite:///{tmp_path / 'x.db'}"))
    loaded = load_plugins(registry, specs=[module], use_entry_points=True)
    assert loaded[:3] == ["entry-point:alerts", "entry-point:ledger", "entry-point:log"]
    assert loaded[-1] == module
    assert names(registry)[0] == "builtin.log"
    assert names(registry)[-1] == "from-register"


def test_app_loads_builtin_log_by_default(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    assert settings.entry_points is True
    app = create_app(settings)
    assert "entry-point:log" in app.plugins
    assert "builtin.log" in names(app.registry)
    assert "builtin.log" in [h.name for h in app.registry.handlers_for("task.completed")]


def test_entry_points_false_disables_builtin_log(tmp_path: Path) -> None:
    app = create_app(_settings(tmp_path, entry_points=False))
    assert app.plugins == []
    assert app.registry.handlers == ()


def _fake_distribution(site: Path, dist: str, entry_points: dict[str, str]) -> None:
    info = site / f"{dist}-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n", encoding="utf-8"
    )
    lines = "".join(f"{name} = {value}\n" for name, value in entry_points.items())
    (info / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\n{lines}", encoding="utf-8")


def test_broken_entry_point_is_an_error_naming_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    site = tmp_path / "site"
    suffix = uuid.uuid4().hex
    _fake_distribution(site, f"broken_{suffix}", {"broken": f"gone_{suffix}:register"})
    monkeypatch.syspath_prepend(str(site))
    importlib.invalidate_caches()

    assert "broken" in [ep.name for ep in discovered()]
    with pytest.raises(RegistryError, match=f"entry point 'broken' \\(gone_{suffix}:register\\)"):
        load_plugins(HandlerRegistry(), specs=[], use_entry_points=True)
    # Turning entry points off skips it entirely.
    assert load_plugins(HandlerRegistry(), specs=[], use_entry_points=False) == []


def test_entry_point_registering_unknown_event_names_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    site = tmp_path / "site"
    module = f"ep_plugin_{uuid.uuid4().hex}"
    site.mkdir()
    (site / f"{module}.py").write_text(
        "def register(registry):\n    registry.on('task.done', print, name='typo')\n",
        encoding="utf-8",
    )
    _fake_distribution(site, module, {"typo_plugin": f"{module}:register"})
    monkeypatch.syspath_prepend(str(site))
    importlib.invalidate_caches()
    try:
        with pytest.raises(RegistryError, match=r"plugin entry point 'typo_plugin': unknown"):
            create_app(_settings(tmp_path))
    finally:
        sys.modules.pop(module, None)


# --- the example package, installed the way a user would -----------------------------------


def _venv_builds_wheels() -> bool:
    """Can this environment's setuptools build a wheel by itself (``--no-build-isolation``)?

    setuptools >= 70.1 has ``bdist_wheel`` built in; older ones need the ``wheel`` package.
    """
    if importlib.util.find_spec("wheel") is not None:
        return True
    try:
        version = importlib.metadata.version("setuptools")
    except importlib.metadata.PackageNotFoundError:
        return False
    major, minor = (int(p) for p in re.findall(r"\d+", version)[:2])
    return (major, minor) >= (70, 1)


@pytest.fixture(scope="module")
def slack_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``pip install`` the example package into a private target directory (once per module).

    pip builds in the source tree (build/, *.egg-info), so it builds from a copy and leaves
    ``examples/`` untouched. Without isolation pip uses this environment's setuptools (offline);
    if that cannot build wheels, pip gets the build backend from its configured index, as it
    would for a user.
    """
    work = tmp_path_factory.mktemp("slack-notify")
    source = work / "taskhook-slack-notify"
    shutil.copytree(
        EXAMPLE, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__")
    )
    site = work / "site"
    build = ["--no-build-isolation", "--no-index"] if _venv_builds_wheels() else []
    command = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "--no-deps",
        *build,
        "--disable-pip-version-check",
        "--quiet",
        "--target",
        str(site),
        str(source),
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert (site / PLUGIN_MODULE / "__init__.py").is_file()
    return site


@pytest.fixture
def slack_plugin(slack_site: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The installed example on sys.path, imported fresh for this test."""
    sys.modules.pop(PLUGIN_MODULE, None)
    monkeypatch.syspath_prepend(str(slack_site))
    importlib.invalidate_caches()
    monkeypatch.delenv("SLACK_WEBHOOK_URL", raising=False)
    yield slack_site
    sys.modules.pop(PLUGIN_MODULE, None)
    importlib.invalidate_caches()


class SlackStub:
    """A stand-in Slack Incoming Webhook on 127.0.0.1 recording what it is sent."""

    def __init__(self, status: int = 200) -> None:
        self.status = status
        self.requests: list[tuple[str, str, bytes]] = []
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("content-length", "0"))
                stub.requests.append(
                    (self.path, self.headers["content-type"], self.rfile.read(length))
                )
                body = b"ok" if stub.status == 200 else b"invalid_token"
                self.send_response(stub.status)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/services/T0/B0/secret"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def texts(self) -> list[str]:
        return [json.loads(body)["text"] for _, _, body in self.requests]


@pytest.fixture
def slack() -> Iterator[SlackStub]:
    stub = SlackStub()
    stub.thread.start()
    try:
        yield stub
    finally:
        stub.server.shutdown()
        stub.server.server_close()
        stub.thread.join(timeout=5)


def test_installed_example_is_discovered_as_an_entry_point(slack_plugin: Path) -> None:
    found = {ep.name: ep for ep in discovered()}
    assert found["slack_notify"].value == "taskhook_slack_notify:register"
    assert found["slack_notify"].dist is not None
    assert found["slack_notify"].dist.name == "taskhook-slack-notify"
    assert "log" in found


async def post_sample(app: TaskhookApp, name: str) -> DeliveryRecord:
    """POST a sample callback through the app, drain the dispatcher, return the delivery."""
    async with app.started():
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://t"
        ) as client:
            response = await client.post(
                "/callbacks/refonte",
                content=(SAMPLES / name).read_bytes(),
                headers={"content-type": "application/json"},
            )
        assert response.status_code == 200, response.text
        assert response.json()["status"] == "accepted"
        delivery_id: str = response.json()["delivery_id"]
        await app.dispatcher.drain()
        record = await app.storage.get_delivery(delivery_id)
        assert record is not None
    return record


async def test_user_installs_example_and_it_posts_to_slack(
    slack_plugin: Path, slack: SlackStub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SLACK_WEBHOOK_URL", slack.url)
    app = create_app(
        settings_from_mapping(
            {
                "database": {"url": "sqlite:///" + str(tmp_path / "taskhook.db")},
                "sources": {"refonte": {"kind": "refonte", "verify": "none"}},
                "dispatch": {"enabled": False},
            },
            environ={},
        )
    )
    assert app.plugins == [
        "entry-point:alerts",
        "entry-point:ledger",
        "entry-point:log",
        "entry-point:slack_notify",
        "entry-point:throughput",
        "entry-point:watchdog",
    ]
    assert names(app.registry) == [
        "builtin.log",
        PLUGIN_HANDLER,
        "builtin.throughput",
        "builtin.watchdog",
    ]
    assert [h.name for h in app.registry.handlers_for("task.completed")] == [
        PLUGIN_HANDLER,
        "builtin.log",
        "builtin.watchdog",
    ]
    assert app.registry.handlers_for("task.errored")[0].name == PLUGIN_HANDLER
    assert PLUGIN_HANDLER not in [h.name for h in app.registry.handlers_for("task.audited")]
    assert len(app.registry.error_hooks) == 1

    record = await post_sample(app, "01-completed.json")

    assert record.status is DeliveryStatus.PROCESSED
    assert len(slack.requests) == 1
    path, content_type, _ = slack.requests[0]
    assert path == "/services/T0/B0/secret"
    assert content_type == "application/json"
    [text] = slack.texts()
    assert COMPLETED_TASK_ID in text
    assert "completed" in text


async def test_example_reports_errored_tasks(
    slack_plugin: Path, slack: SlackStub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SLACK_WEBHOOK_URL", slack.url)
    app = create_app(_settings(tmp_path))
    record = await post_sample(app, "03-error-on-creation-clear-unique-id.json")
    assert record.status is DeliveryStatus.PROCESSED
    [text] = slack.texts()
    assert ERRORED_TASK_ID in text
    assert "errored: One or more attachments could not be downloaded." in text


async def test_example_without_webhook_url_only_logs(
    slack_plugin: Path, slack: SlackStub, tmp_path: Path
) -> None:
    app = create_app(_settings(tmp_path))
    with capture_logs() as logs:
        record = await post_sample(app, "01-completed.json")
    assert record.status is DeliveryStatus.PROCESSED
    assert slack.requests == []
    skipped = [e for e in logs if e["event"].startswith("slack notification skipped")]
    assert len(skipped) == 1
    assert COMPLETED_TASK_ID in skipped[0]["text"]


async def test_example_slack_failure_fails_the_run(
    slack_plugin: Path, slack: SlackStub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    slack.status = 500
    monkeypatch.setenv("SLACK_WEBHOOK_URL", slack.url)
    app = create_app(_settings(tmp_path, dispatch=ONE_ATTEMPT))

    with capture_logs() as logs:
        record = await post_sample(app, "01-completed.json")

    assert record.status is DeliveryStatus.DEAD
    assert record.last_error is not None
    assert PLUGIN_HANDLER in record.last_error
    assert "500" in record.last_error
    # The plugin's error hook logged the failure but did not report Slack's failure to Slack.
    hooked = [e for e in logs if e["event"] == "taskhook handler failed"]
    assert [(e["handler"], e["task_id"]) for e in hooked] == [(PLUGIN_HANDLER, COMPLETED_TASK_ID)]
    assert len(slack.requests) == 1


async def test_example_error_hook_reports_other_handlers_failures(
    slack_plugin: Path, slack: SlackStub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SLACK_WEBHOOK_URL", slack.url)

    def explode(event: Event) -> None:
        raise RuntimeError("ledger unavailable")

    def setup(registry: HandlerRegistry) -> None:
        registry.on("task.completed", explode, name="ledger")

    app = create_app(_settings(tmp_path, dispatch=ONE_ATTEMPT), setup=setup)
    record = await post_sample(app, "01-completed.json")

    assert record.status is DeliveryStatus.DEAD
    completed, warning = slack.texts()
    assert COMPLETED_TASK_ID in completed
    assert warning == (
        ":warning: taskhook handler `ledger` failed on task.completed: ledger unavailable"
    )


def test_example_enabled_from_config_with_entry_points_off(
    slack_plugin: Path, tmp_path: Path
) -> None:
    app = create_app(_settings(tmp_path, handlers=[PLUGIN_MODULE], entry_points=False))
    assert app.plugins == [PLUGIN_MODULE]
    assert names(app.registry) == [PLUGIN_HANDLER]

    colon = create_app(
        _settings(tmp_path, handlers=[f"{PLUGIN_MODULE}:register"], entry_points=False)
    )
    assert names(colon.registry) == [PLUGIN_HANDLER]


def test_example_listed_in_config_and_installed_conflicts(
    slack_plugin: Path, tmp_path: Path
) -> None:
    with pytest.raises(
        RegistryError, match=f"plugin {PLUGIN_MODULE}: .*'{PLUGIN_HANDLER}' is already registered"
    ):
        create_app(_settings(tmp_path, handlers=[PLUGIN_MODULE]))


def test_example_format_message_for_other_events(slack_plugin: Path) -> None:
    module = importlib.import_module(PLUGIN_MODULE)
    assert module.format_message(make_event("task.completed")) == (
        ":white_check_mark: Task `t1` from refonte completed"
    )
    assert module.format_message(make_event("task.errored")) == (
        ":x: Task `t1` from refonte errored: no error message"
    )


def test_any_import_or_register_failure_names_the_plugin(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "boom_at_import_plugin.py").write_text('raise ValueError("boom at import")\n')
    (tmp_path / "boom_in_register_plugin.py").write_text(
        "def register(registry):\n    raise KeyError('cfg')\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    for spec, words in (
        ("boom_at_import_plugin", "ValueError: boom at import"),
        ("boom_in_register_plugin", "KeyError"),
    ):
        with pytest.raises(RegistryError) as caught:
            load_plugins(HandlerRegistry(), specs=[spec], use_entry_points=False)
        assert spec in str(caught.value)
        assert words in str(caught.value)
        sys.modules.pop(spec, None)
