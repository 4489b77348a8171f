"""A live `taskhook serve` and headless Chromium for the dashboard's end-to-end tests.

Chromium is the machine's own (Debian's ``chromium`` package, installed by
``scripts/test.sh``), driven through Playwright with ``executable_path``: no browser is
downloaded. Without it these tests fail, saying so, rather than skip: CI must run them.

Screenshots of every page go to ``$TASKHOOK_SCREENSHOTS`` (default
``test-artifacts/screenshots``); with ``TASKHOOK_UPDATE_DOCS=1`` the set the README shows is
copied to ``docs/screenshots`` as well.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.test_cli import clean_env, free_port

ROOT = Path(__file__).resolve().parents[2]
SECRET = "browser-source-secret"
KEY = "browser-ops-key-0123456789"
READER_KEY = "browser-reader-key-0123456789"
SCOPES = ["tasks.read", "deliveries.read", "deliveries.write", "task.read", "task.edit"]
PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1280, "height": 860}
# Pages the README shows (copied to docs/screenshots with TASKHOOK_UPDATE_DOCS=1).
DOCS_SHOTS = (
    "sign-in", "overview", "deliveries", "delivery-failed", "delivery-processed", "task-timeline",
    "review-task-completed", "retry-dead", "phone-overview", "phone-delivery", "phone-task",
)  # fmt: skip

FLAKY_PLUGIN = """
from pathlib import Path

FIXED = Path({fixed!r})


def flaky(event):
    if not FIXED.exists():
        raise RuntimeError("downstream is down: not fixed yet")


def register(registry):
    registry.on("task.completed", flaky, name="flaky")
"""


def chromium_path() -> str:
    found = os.environ.get("TASKHOOK_CHROMIUM") or shutil.which("chromium")
    if not found or not Path(found).exists():
        pytest.fail(
            "the dashboard's browser tests need Chromium: install Debian's package "
            "(`apt-get install chromium`; scripts/test.sh does) or set TASKHOOK_CHROMIUM",
            pytrace=False,
        )
    return found


@dataclass
class Server:
    base: str
    folder: Path
    fixed: Path  # the flag file that "fixes" the flaky handler
    log: Path
    shots: Path
    taken: list[str] = field(default_factory=list)

    def post(self, path: str, body: bytes, **headers: str) -> str:
        answer = httpx.post(f"{self.base}{path}", content=body, headers=headers, timeout=10)
        assert answer.status_code == 200, answer.text
        delivery_id: str = answer.json()["delivery_id"]
        return delivery_id

    def status_of(self, delivery_id: str) -> str:
        answer = httpx.get(
            f"{self.base}/v1/deliveries/{delivery_id}",
            headers={"authorization": f"Bearer {KEY}"},
            timeout=10,
        )
        status: str = answer.json()["status"]
        return status

    def log_tail(self, lines: int = 40) -> str:
        """The end of the server's log, for a failure's message."""
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def wait_for_status(self, delivery_id: str, wanted: str, seconds: float = 10) -> None:
        deadline = time.monotonic() + seconds
        while (found := self.status_of(delivery_id)) != wanted:
            assert time.monotonic() < deadline, f"{delivery_id} is {found}, not {wanted}"
            time.sleep(0.05)


def write_config(folder: Path, fixed: Path) -> Path:
    (folder / "flaky_plugin.py").write_text(FLAKY_PLUGIN.replace("{fixed!r}", repr(str(fixed))))
    config = folder / "taskhook.toml"
    config.write_text(
        'entry_points = false\nhandlers = ["handlers.ledger", "flaky_plugin"]\n'
        f'[database]\nurl = "sqlite:///{folder / "browser.db"}"\n'
        '[sources.refonte]\nkind = "refonte"\nverify = "header-token"\n'
        f'header = "refonte-callback-auth"\nsecrets = ["{SECRET}"]\n'
        '[sources.docs]\nkind = "document-review"\nverify = "none"\n'
        f'[api.keys.ops]\nkey = "{KEY}"\nscopes = {SCOPES!r}\n'.replace("'", '"')
        + f'[api.keys.reader]\nkey = "{READER_KEY}"\nscopes = ["deliveries.read"]\n'
        # A failed delivery waits a long time before its next attempt: Retry is what runs it.
        + "[dispatch]\npoll_interval_seconds = 0.05\nbackoff_base_seconds = 600\n"
        + "backoff_max_seconds = 600\nmax_attempts = 3\n"
        + "[ui]\nrefresh_seconds = 1\nsample_seconds = 1\n"
        + '[log]\nlevel = "warning"\n'
    )
    return config


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    folder = tmp_path_factory.mktemp("dashboard")
    fixed = folder / "fixed"
    config = write_config(folder, fixed)
    port = free_port()
    log = folder / "serve.log"
    env = clean_env(PYTHONPATH=os.pathsep.join([str(folder), str(ROOT)]))
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "receiver.cli", "serve", "--config", str(config),
             "--port", str(port)], stdout=out, stderr=subprocess.STDOUT, env=env, cwd=folder,
        )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                if httpx.get(f"{base}/readyz", timeout=0.5).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.05)
        else:
            raise AssertionError(log.read_text())
        shots = ROOT / os.environ.get("TASKHOOK_SCREENSHOTS", "test-artifacts/screenshots")
        shots.mkdir(parents=True, exist_ok=True)
        yield Server(base, folder, fixed, log, shots)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
    if os.environ.get("TASKHOOK_UPDATE_DOCS") == "1":
        docs = ROOT / "docs" / "screenshots"
        docs.mkdir(parents=True, exist_ok=True)
        for name in DOCS_SHOTS:
            if (shots / f"{name}.png").exists():
                shutil.copy2(shots / f"{name}.png", docs / f"{name}.png")


@pytest.fixture(scope="module")
def browser(server: Server) -> Iterator[object]:
    # Module-scoped: Playwright's sync API runs an event loop on this thread while it is
    # open, which the async tests of other modules must not find still running.
    from playwright.sync_api import sync_playwright

    executable = chromium_path()
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=executable, headless=True)
        try:
            yield launched
        finally:
            launched.close()
