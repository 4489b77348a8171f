"""The dashboard in a real browser: headless Chromium against a live `taskhook serve`.

Each test signs in through the form, as a person would, and checks what the page shows;
every page visited is written as a screenshot (see `conftest`). Any Content-Security-Policy
violation or script error on a page fails the test: the pages must work under the strict
policy they are served with.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from tests.browser.conftest import DESKTOP, KEY, PHONE, READER_KEY, SECRET, Server
from tests.conftest import sample

pytestmark = pytest.mark.slow

REFONTE = {"content-type": "application/json", "refonte-callback-auth": SECRET}
FIRST_TASK = "576c41bf13e36b0600b02b34"  # samples/refonte/01-completed.json
AUDITED_TASK = "65f0c0de0000000000000001"  # 05..08: completed, audits, a recall
TIMEOUT_MS = 10_000


class Tab:
    """One browser page, collecting what the console says is wrong with it."""

    def __init__(self, server: Server, page: Any) -> None:
        self.server = server
        self.page = page
        self.problems: list[str] = []
        page.set_default_timeout(TIMEOUT_MS)
        page.on("console", self._console)
        page.on("pageerror", lambda exc: self.problems.append(f"script error: {exc}"))
        page.on("response", self._response)

    def _console(self, message: Any) -> None:
        # A page answered 401/403/404 on purpose is logged too: only its own status, not a fault.
        if message.type == "error" and "server responded with a status" not in message.text:
            self.problems.append(message.text)

    def _response(self, response: Any) -> None:
        if response.status >= 500 or ("/ui/static/" in response.url and response.status >= 400):
            self.problems.append(f"{response.url}: {response.status}\n{self.server.log_tail()}")

    def go(self, path: str) -> Any:
        answer = self.page.goto(self.server.base + path)
        assert answer.status < 500, f"{path}: {answer.status}\n{self.server.log_tail()}"
        return answer

    def shot(self, name: str) -> None:
        self.page.screenshot(path=str(self.server.shots / f"{name}.png"), full_page=True)
        self.server.taken.append(name)

    def sign_in(self, key: str = KEY) -> None:
        self.page.fill("#key", key)
        self.page.click("button:has-text('Sign in')")
        self.page.wait_for_load_state()

    def badge(self) -> str:
        text: str = self.page.inner_text(".heading .badge")
        return text.strip()


@pytest.fixture
def tabs(browser: Any, server: Server) -> Iterator[Callable[..., Tab]]:
    contexts: list[Any] = []
    opened: list[Tab] = []

    def open_tab(viewport: dict[str, int] = DESKTOP, *, dark: bool = False) -> Tab:
        context = browser.new_context(viewport=viewport, color_scheme="dark" if dark else "light")
        contexts.append(context)
        tab = Tab(server, context.new_page())
        opened.append(tab)
        return tab

    yield open_tab
    for context in contexts:
        context.close()
    problems = [p for tab in opened for p in tab.problems]
    assert not problems, problems  # CSP violations and script errors


def test_sign_in_then_retry_a_failed_delivery_once_its_handler_is_fixed(
    server: Server, tabs: Callable[..., Tab]
) -> None:
    delivery = server.post("/callbacks/refonte", sample("01-completed.json"), **REFONTE)
    server.wait_for_status(delivery, "failed")
    tab = tabs()
    tab.go(f"/ui/deliveries/{delivery}")
    assert "/ui/sign-in?next=" in tab.page.url  # no session: off to sign in first
    tab.shot("sign-in")
    tab.sign_in("not-a-key-of-this-receiver")
    assert "Sign-in failed" in tab.page.inner_text(".notice")
    assert "not-a-key-of-this-receiver" not in tab.page.content()  # never echoed
    tab.sign_in()
    assert tab.page.url == f"{server.base}/ui/deliveries/{delivery}"  # back where it was going
    assert tab.badge() == "failed"
    assert "not fixed yet" in tab.page.inner_text("main")
    assert SECRET not in tab.page.content()  # the verifying header is shown redacted
    tab.shot("delivery-failed")

    server.fixed.touch()  # the downstream the handler needs is back
    tab.page.click("button:has-text('Retry')")
    assert "Requeued" in tab.page.inner_text(".notice")
    deadline = time.monotonic() + 10
    while tab.badge() != "processed":
        assert time.monotonic() < deadline, "the retried delivery never turned processed"
        time.sleep(0.2)
        tab.page.reload()
    assert "ok" in tab.page.inner_text("table.list")  # the handler run, now successful
    tab.shot("delivery-processed")

    tab.go("/ui/deliveries")
    assert delivery[:14] in tab.page.inner_text("table.list")
    tab.page.select_option("select[name=status]", "processed")
    tab.page.click("button:has-text('Filter')")
    assert "status=processed" in tab.page.url
    assert delivery[:14] in tab.page.inner_text("table.list")
    tab.shot("deliveries-filtered")
    phone = tabs(PHONE)
    phone.go(f"/ui/deliveries/{delivery}")
    phone.sign_in()
    phone.shot("phone-delivery")


def test_a_task_timeline_and_a_review_action(server: Server, tabs: Callable[..., Tab]) -> None:
    # A task completed, audited twice (one audit fixing the response), a late retry of an
    # older snapshot (stale), then recalled to pending.
    for name in ("05-completed-before-audit", "07-audit-fixed", "06-audit-accepted",
                 "08-recall-to-pending"):  # fmt: skip
        last = server.post("/callbacks/refonte", sample(f"{name}.json"), **REFONTE)
    for status in ("PROCESSING", "REVIEWING"):
        body = {"task_id": "invoice-1001", "status": status, "project_id": "invoices"}
        review = server.post(
            "/callbacks/docs", json.dumps(body).encode(), **{"content-type": "application/json"}
        )
    server.post("/callbacks/refonte", sample("05-completed-before-audit.json"), **REFONTE)
    unreadable = httpx.post(f"{server.base}/callbacks/refonte", content=b"{oops", headers=REFONTE)
    assert unreadable.status_code == 400  # authenticated but unreadable: kept, quarantined
    server.wait_for_status(review, "processed")
    server.wait_for_status(last, "processed")  # each interpreted (the handler may still fail)

    tab = tabs()
    tab.go("/ui/")
    tab.sign_in()
    assert tab.page.url == f"{server.base}/ui/"
    tab.page.wait_for_selector("[data-counter=backlog]")
    # The monitor adds each second's counters to the series (`sample_seconds = 1` here):
    # the live refresh shows them without a reload.
    tab.page.wait_for_function(
        "document.querySelector('[data-counter=accepted]').textContent.trim() !== '0'",
        timeout=20_000,
    )
    # The script (a file: the CSP allows no other) polls the live counters.
    with tab.page.expect_response(lambda r: "/ui/overview.json" in r.url) as polled:
        pass
    assert polled.value.status == 200
    assert tab.page.inner_text("[data-updated]").endswith("ago")  # relative times, by script
    tab.shot("overview")

    tab.page.fill("#task-search", AUDITED_TASK)
    tab.page.click("button:has-text('Find task')")
    assert tab.page.url == f"{server.base}/ui/tasks/{AUDITED_TASK}"
    timeline = tab.page.inner_text("ol.timeline")
    for entry in ("applied", "stale", "task.audited", "task.recalled"):
        assert entry in timeline, entry
    tab.shot("task-timeline")
    tab.page.click("ol.timeline a >> nth=0")  # each entry links to its delivery
    assert re.search(r"/ui/deliveries/dlv_\w+$", tab.page.url)

    tab.go("/ui/tasks/invoice-1001")
    assert tab.badge() == "REVIEWING"
    tab.shot("review-task")
    tab.page.click("button:has-text('Complete')")
    assert tab.page.inner_text(".notice").strip() == "Completed."
    assert tab.badge() == "COMPLETED"
    assert "action" in tab.page.inner_text("ol.timeline")
    assert tab.page.is_visible("button:has-text('Unlock')")  # what COMPLETED allows next
    tab.shot("review-task-completed")

    tab.go("/ui/deliveries")
    assert "quarantined" in tab.page.inner_text("table.list")
    tab.shot("deliveries")
    tab.go("/ui/deliveries/retry-dead")
    tab.shot("retry-dead")
    phone = tabs(PHONE)
    phone.go("/ui/")
    phone.sign_in()
    phone.shot("phone-overview")
    phone.go(f"/ui/tasks/{AUDITED_TASK}")
    phone.shot("phone-task")


def test_no_session_means_sign_in_and_no_csrf_token_means_refused(
    server: Server, tabs: Callable[..., Tab]
) -> None:
    tab = tabs()
    for path in ("/ui/", "/ui/deliveries", f"/ui/tasks/{FIRST_TASK}"):
        tab.go(path)
        assert tab.page.url.startswith(f"{server.base}/ui/sign-in?next="), path
    tab.sign_in()
    tab.go("/ui/tasks/invoice-1001")
    # A form whose token is gone (a forged one would not know it): refused, nothing done.
    tab.page.evaluate(
        "document.querySelectorAll('input[name=csrf]').forEach(function (e) { e.remove(); })"
    )
    tab.page.fill("#reason", "forged")
    with tab.page.expect_navigation():
        tab.page.click("form.report button")
    assert "CSRF token is missing or wrong" in tab.page.inner_text("main")
    answer = tab.page.request.post(
        f"{server.base}/ui/deliveries/retry-dead", form={"confirm": "yes"}, max_redirects=0
    )
    assert answer.status == 403
    tab.go("/ui/tasks/invoice-1001")
    assert "forged" not in tab.page.inner_text("ol.timeline")

    reader = tabs(dark=True)
    reader.go("/ui/deliveries")
    reader.sign_in(READER_KEY)
    assert reader.page.url == f"{server.base}/ui/deliveries"
    assert not reader.page.is_visible("text=Retry all dead")  # no deliveries.write: no button
    reader.shot("dark-deliveries")
    answer = reader.go("/ui/deliveries/retry-dead")
    assert answer.status == 403
