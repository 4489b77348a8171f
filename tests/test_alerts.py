"""The built-in alerts plugin against a webhook served on 127.0.0.1: both formats, Standard
Webhooks signatures, de-duplication, repeats, the hourly limit and its notice, retries that
lose nothing, and one alert from two replicas sharing a PostgreSQL database."""

from __future__ import annotations

import asyncio
import base64
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
from standardwebhooks.webhooks import Webhook
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from handlers.alerts.outbox import Outbox
from receiver.app import TaskhookApp
from receiver.signals import Signal
from tests.conftest import BACKENDS, AppFactory
from tests.vendors import serving

SECRET = "whsec_" + base64.b64encode(b"alert-signing-key-32-bytes-long!").decode()


@dataclass
class Inbox:
    """A webhook that records what it is sent and answers the scripted statuses first."""

    received: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    answers: list[int] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def app(self) -> Starlette:
        async def hook(request: Request) -> Response:
            body = await request.body()
            with self.lock:
                self.received.append((dict(request.headers), body))
                status = self.answers.pop(0) if self.answers else 200
            return JSONResponse({"ok": status < 300}, status_code=status)

        return Starlette(routes=[Route("/hook", hook, methods=["POST"])])

    def bodies(self) -> list[Any]:
        with self.lock:
            return [orjson.loads(body) for _, body in self.received]


@dataclass
class Clock:
    """The app's clock, moved by the test (started at the real time, so that a Standard
    Webhooks signature made with it verifies)."""

    now: float = field(default_factory=time.time)

    def __call__(self) -> float:
        return self.now


@contextmanager
def webhook() -> Iterator[tuple[Inbox, str]]:
    """An `Inbox` served on 127.0.0.1, and the URL to post alerts to."""
    found = Inbox()
    with serving(found.app()) as url:
        yield found, f"{url}/hook"


@pytest.fixture
def inbox() -> Iterator[tuple[Inbox, str]]:
    with webhook() as served:
        yield served


def alerting(build_app: AppFactory, url: str, clock: Clock | None = None, **alerts: Any) -> Any:
    return build_app(
        clock=clock,
        handlers=["handlers.alerts"],
        alerts={"url": url, **alerts},
    )


def dead(delivery_id: str = "dlv_1", at: float = 0.0) -> Signal:
    return Signal(
        "delivery.dead",
        delivery_id,
        f"delivery {delivery_id} of refonte is dead after 5 attempts",
        at=at or time.time(),
        details={"delivery_id": delivery_id, "source": "refonte", "attempts": 5},
        link=f"/ui/deliveries/{delivery_id}",
    )


def job(app: TaskhookApp, name: str = "alerts.outbox") -> Any:
    return next(p.job for p in app.registry.periodic if p.name == name)


def outbox_of(app: TaskhookApp) -> Outbox:
    alerts = app.settings.alerts
    return Outbox(app.storage, repeat_seconds=alerts.repeat_seconds,
                  max_per_hour=alerts.max_per_hour)  # fmt: skip


async def test_slack_format_is_one_line_of_text_with_the_link(
    build_app: AppFactory, inbox: tuple[Inbox, str]
) -> None:
    box, url = inbox
    app = alerting(build_app, url)
    async with app.started():
        await app.registry.signal(dead("dlv_<1>"))
    [(headers, _)] = box.received
    assert box.bodies() == [{
        "text": "taskhook delivery.dead: delivery dlv_&lt;1&gt; of refonte is dead after 5 "
                "attempts /ui/deliveries/dlv_&lt;1&gt;"
    }]  # fmt: skip
    assert headers["content-type"] == "application/json"
    assert "webhook-signature" not in headers  # no secret, no signature


async def test_json_format_is_signed_as_standard_webhooks(
    build_app: AppFactory, inbox: tuple[Inbox, str]
) -> None:
    box, url = inbox
    app = alerting(build_app, url, format="json", secret=SECRET)
    async with app.started():
        await app.registry.signal(dead())
        [row] = await outbox_of(app).rows()
    [(headers, body)] = box.received
    # The receiver's side, with the reference library: the exact bytes, the alert's id.
    verified = Webhook(SECRET).verify(body, headers)
    assert verified == orjson.loads(body)
    assert headers["webhook-id"] == row["id"] == verified["id"]
    assert verified["type"] == "delivery.dead" and verified["key"] == "dlv_1"
    assert verified["details"] == {"delivery_id": "dlv_1", "source": "refonte", "attempts": 5}
    assert verified["link"] == "/ui/deliveries/dlv_1"
    assert verified["raised_at"].endswith("Z")
    assert row["sent_at"] is not None and row["attempts"] == 1
    with pytest.raises(Exception, match="signature"):
        Webhook("whsec_" + base64.b64encode(b"another-key").decode()).verify(body, headers)


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


async def test_the_same_alert_is_sent_once_until_repeat_seconds_pass(
    build_app: AppFactory, inbox: tuple[Inbox, str]
) -> None:
    box, url = inbox
    clock = Clock()
    app = alerting(build_app, url, clock, format="json", repeat_seconds=600)
    async with app.started():
        await app.registry.signal(dead("dlv_1"))
        await app.registry.signal(dead("dlv_1"))  # the same (kind, key): de-duplicated
        await app.registry.signal(dead("dlv_2"))  # another key: its own alert
        clock.now += 599
        await app.registry.signal(dead("dlv_1"))  # still within repeat_seconds
        assert [b["key"] for b in box.bodies()] == ["dlv_1", "dlv_2"]
        clock.now += 2
        await app.registry.signal(dead("dlv_1"))  # past it: said again
    assert [b["key"] for b in box.bodies()] == ["dlv_1", "dlv_2", "dlv_1"]


async def test_max_per_hour_suppresses_and_then_says_how_many(
    build_app: AppFactory, inbox: tuple[Inbox, str]
) -> None:
    box, url = inbox
    clock = Clock()
    app = alerting(build_app, url, clock, format="json", max_per_hour=2)
    async with app.started():
        for n in range(4):
            await app.registry.signal(dead(f"dlv_{n}"))
        late = Signal("task.late", "refonte/t1", "no callback for task t1", at=clock.now)
        await app.registry.signal(late)
        assert [b["key"] for b in box.bodies()] == ["dlv_0", "dlv_1"]
        await job(app)()  # the hour is still full: no notice yet
        assert len(box.received) == 2
        clock.now += 3601
        await job(app)()
        await job(app)()  # once
    bodies = box.bodies()
    assert len(bodies) == 3
    notice = bodies[2]
    assert notice["type"] == "alerts.suppressed"
    assert notice["details"]["suppressed"] == 3
    assert notice["details"]["by_kind"] == {"delivery.dead": 2, "task.late": 1}
    assert "3 alert(s) suppressed" in notice["summary"]


async def test_a_refused_alert_is_kept_and_retried_with_backoff(
    build_app: AppFactory, inbox: tuple[Inbox, str]
) -> None:
    box, url = inbox
    box.answers = [500]
    clock = Clock()
    app = alerting(build_app, url, clock, format="json")
    async with app.started():
        await app.registry.signal(dead("dlv_1"))
        [row] = await outbox_of(app).rows()
        assert row["sent_at"] is None and row["attempts"] == 1
        assert row["last_error"].startswith("answered 500")
        await app.registry.signal(dead("dlv_2"))  # queued; left to the job while failing
        await job(app)()  # dlv_1 is not due yet (its backoff); dlv_2 goes
        assert [b["key"] for b in box.bodies()] == ["dlv_1", "dlv_2"]
        clock.now += 11
        await job(app)()
        rows = await outbox_of(app).rows()
    assert [b["key"] for b in box.bodies()] == ["dlv_1", "dlv_2", "dlv_1"]
    first, _, again = (orjson.loads(body) for _, body in box.received)
    assert first == again  # the same alert, the same id: the receiver can drop a repeat
    assert [(r["key"], r["attempts"], r["last_error"]) for r in rows] == [
        ("dlv_1", 2, None), ("dlv_2", 1, None),
    ]  # fmt: skip
    assert all(r["sent_at"] is not None for r in rows)


async def test_an_unreachable_webhook_loses_nothing(build_app: AppFactory) -> None:
    from tests.test_cli import free_port

    clock = Clock()
    app = alerting(build_app, f"http://127.0.0.1:{free_port()}/hook", clock, timeout_seconds=2)
    async with app.started():
        await app.registry.signal(dead("dlv_1"))
        await app.registry.signal(dead("dlv_2"))
        clock.now += 11
        await job(app)()
        rows = await outbox_of(app).rows()
    assert [r["key"] for r in rows] == ["dlv_1", "dlv_2"]
    assert all(r["sent_at"] is None for r in rows) and rows[0]["last_error"]
    # dlv_1 was tried when raised; dlv_2 was not (the webhook was failing: no one waits on
    # a timeout per alert); the pass 11 s later stops at its first failure (dlv_1, oldest),
    # so dlv_2, due too, waits its turn rather than time out as well.
    assert [r["attempts"] for r in rows] == [2, 0]


async def test_switched_off_kinds_are_not_sent(
    build_app: AppFactory, inbox: tuple[Inbox, str]
) -> None:
    box, url = inbox
    app = alerting(build_app, url, format="json", dead=False)
    async with app.started():
        await app.registry.signal(dead())
        await app.registry.signal(Signal("task.late", "refonte/t1", "late", at=time.time()))
    assert [b["type"] for b in box.bodies()] == ["task.late"]


async def test_without_a_url_the_plugin_registers_nothing(build_app: AppFactory) -> None:
    app = build_app(handlers=["handlers.alerts"])
    assert app.plugins == ["handlers.alerts"] and app.registry.periodic == ()
    async with app.started():
        await app.registry.signal(dead())  # heard by nobody
        assert "alerts" not in app.storage.versions  # type: ignore[attr-defined]


@pytest.mark.parametrize("backend", ["postgres"])
async def test_two_replicas_raising_the_same_signal_send_one_alert(
    build_app: AppFactory, inbox: tuple[Inbox, str]
) -> None:
    box, url = inbox
    first = alerting(build_app, url, format="json")
    second = alerting(build_app, url, format="json")
    async with first.started(), second.started():
        signal = dead("dlv_shared")
        for _ in range(3):
            await asyncio.gather(first.registry.signal(signal), second.registry.signal(signal))
        await asyncio.gather(job(first)(), job(second)())
        rows = await outbox_of(first).rows()
    assert [b["key"] for b in box.bodies()] == ["dlv_shared"]
    assert len(rows) == 1 and rows[0]["sent_at"] is not None
