"""The dashboard's pages, in process and on both backends: the inbox and its filters and
pages, a delivery's page, Retry and "retry all dead", the overview, a task's timeline and a
document-review action."""

from __future__ import annotations

import html
import json
import re
from typing import Any
from urllib.parse import parse_qs

import httpx
import pytest

from receiver.events import Event
from receiver.registry import HandlerRegistry
from tests.conftest import BACKENDS, OPS_KEY, AppFactory, client_for, sample, signed
from tests.test_ui import ALL_SCOPES, csrf_in, signed_in_token


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


class Downstream:
    """A handler that fails until it is fixed."""

    def __init__(self) -> None:
        self.fixed = False
        self.ran: list[str] = []

    def __call__(self, event: Event) -> None:
        if not self.fixed:
            raise RuntimeError("downstream is down")
        self.ran.append(event.delivery_id)

    def setup(self, registry: HandlerRegistry) -> None:
        registry.on("task.completed", self, name="downstream")


def dead_app(build_app: AppFactory, downstream: Downstream, **overrides: Any) -> Any:
    keys = {"ops": {"key": OPS_KEY, "scopes": ALL_SCOPES}}
    return build_app(
        setup=downstream.setup,
        handlers=["handlers.ledger"],
        dispatch={"max_attempts": 1},  # the first failure is final: dead
        api={"keys": keys},
        **overrides,
    )


async def deliver(client: httpx.AsyncClient, name: str, **headers: str) -> str:
    answer = await client.post(
        "/callbacks/refonte", content=sample(name), headers=signed() | headers
    )
    assert answer.status_code == 200, answer.text
    delivery_id: str = answer.json()["delivery_id"]
    return delivery_id


async def test_retry_runs_a_dead_delivery_again_through_the_pipeline(
    build_app: AppFactory,
) -> None:
    downstream = Downstream()
    app = dead_app(build_app, downstream)
    async with app.started(), client_for(app) as client:
        delivery_id = await deliver(client, "01-completed.json")
        await app.dispatcher.drain()
        token = await signed_in_token(client)
        page = await client.get(f"/ui/deliveries/{delivery_id}")
        assert page.status_code == 200
        assert 'class="badge s-dead">dead<' in page.text
        assert "downstream is down" in page.text  # the last error, and the run's
        assert "Traceback" in page.text
        assert f'action="/ui/deliveries/{delivery_id}/retry"' in page.text
        assert '"category": "red"' in html.unescape(page.text)  # the JSON body, indented
        assert "refonte-callback-auth" in page.text and "[redacted]" in page.text

        downstream.fixed = True
        answer = await client.post(f"/ui/deliveries/{delivery_id}/retry", data={"csrf": token})
        assert answer.status_code == 303
        assert answer.headers["location"] == f"/ui/deliveries/{delivery_id}?retried=1"
        await app.dispatcher.drain()
        page = await client.get(answer.headers["location"])
        assert "Requeued" in page.text
        assert 'class="badge s-processed">processed<' in page.text
        assert f'action="/ui/deliveries/{delivery_id}/retry"' not in page.text  # nothing to retry
        assert downstream.ran == [delivery_id]
        again = await client.post(f"/ui/deliveries/{delivery_id}/retry", data={"csrf": token})
        assert again.status_code == 409
        assert "Not retried" in again.text
        unknown = await client.post("/ui/deliveries/dlv_nope/retry", data={"csrf": token})
        assert unknown.status_code == 404


async def test_retry_all_dead_asks_first_then_requeues_every_one(build_app: AppFactory) -> None:
    downstream = Downstream()
    app = dead_app(build_app, downstream)
    async with app.started(), client_for(app) as client:
        ids = [await deliver(client, n) for n in ("01-completed.json", "09-audit-rejected.json")]
        await app.dispatcher.drain()
        assert sorted(await app.storage.dead_ids()) == sorted(ids)
        token = await signed_in_token(client)
        confirm = await client.get("/ui/deliveries/retry-dead")
        assert "2 deliveries are dead" in confirm.text
        assert 'name="confirm" value="yes"' in confirm.text
        unconfirmed = await client.post("/ui/deliveries/retry-dead", data={"csrf": token})
        assert unconfirmed.headers["location"] == "/ui/deliveries/retry-dead"  # asks again
        assert len(await app.storage.dead_ids()) == 2
        downstream.fixed = True
        done = await client.post(
            "/ui/deliveries/retry-dead", data={"csrf": csrf_in(confirm.text), "confirm": "yes"}
        )
        assert done.headers["location"] == "/ui/deliveries?requeued=2"
        assert "Requeued 2 dead deliveries." in (await client.get(done.headers["location"])).text
        await app.dispatcher.drain()
        assert await app.storage.dead_ids() == []
        assert sorted(downstream.ran) == sorted(ids)
        assert "No delivery is dead" in (await client.get("/ui/deliveries/retry-dead")).text


def rows_of(html: str) -> list[str]:
    return re.findall(r'href="/ui/deliveries/(dlv_\w+)"', html)


async def test_the_inbox_filters_and_pages_by_keyset(build_app: AppFactory) -> None:
    app = build_app(handlers=["handlers.ledger"])
    async with app.started(), client_for(app) as client:
        body = json.loads(sample("01-completed.json"))
        for n in range(55):
            snapshot = body | {
                "task_id": f"t-{n:03d}",
                "task": body["task"] | {"task_id": f"t-{n:03d}"},
            }
            answer = await client.post(
                "/callbacks/refonte", content=json.dumps(snapshot), headers=signed()
            )
            assert answer.status_code == 200
        await client.post("/callbacks/refonte", content=b"{not json", headers=signed())
        await signed_in_token(client)
        first = await client.get("/ui/deliveries")
        assert first.status_code == 200
        assert "56" in first.text  # the total
        ids = rows_of(first.text)
        assert len(ids) == 50
        older = re.search(r'href="(/ui/deliveries\?next_token=[^"]+)"', first.text)
        assert older, "no link to older deliveries"
        second = await client.get(older.group(1).replace("&amp;", "&"))
        rest = rows_of(second.text)
        assert len(rest) == 6 and not set(rest) & set(ids)
        assert "← Newest" in second.text

        quarantined = await client.get("/ui/deliveries", params={"status": "quarantined"})
        assert len(rows_of(quarantined.text)) == 1
        unreadable = await client.get(f"/ui/deliveries/{rows_of(quarantined.text)[0]}")
        assert unreadable.status_code == 200
        assert "{not json" in html.unescape(unreadable.text)  # the exact bytes, as text
        assert "/retry" in unreadable.text  # quarantined: may be retried
        assert 'value="quarantined" selected' in quarantined.text
        by_task = await client.get("/ui/deliveries", params={"task": "t-007"})
        assert len(rows_of(by_task.text)) == 1
        assert "t-007" in by_task.text
        by_source = await client.get("/ui/deliveries", params={"source": "other", "status": ""})
        assert rows_of(by_source.text) == []
        assert "No deliveries match these filters" in by_source.text
        bad = await client.get("/ui/deliveries", params={"status": "lost"})
        assert bad.status_code == 400
        assert "there is no status" in bad.text
        # A link to the next page keeps the filters.
        received = await client.get("/ui/deliveries", params={"status": "received"})
        link = re.search(r'href="/ui/deliveries\?([^"]+)"[^>]*>Older', received.text)
        assert link is not None
        assert parse_qs(link.group(1).replace("&amp;", "&"))["status"] == ["received"]


async def test_the_overview_shows_the_counters_and_refreshes_them(build_app: AppFactory) -> None:
    app = build_app(handlers=["handlers.ledger"], ui={"refresh_seconds": 3})
    async with app.started(), client_for(app) as client:
        await deliver(client, "01-completed.json")
        await signed_in_token(client)
        page = await client.get("/ui/")
        assert page.status_code == 200
        assert 'data-live="/ui/overview.json" data-refresh="3.0"' in page.text
        for name in ("accepted", "duplicates", "rejected", "backlog", "oldest", "dead"):
            assert f'data-counter="{name}"' in page.text, name
        live = (await client.get("/ui/overview.json")).json()
        assert live["cards"]["backlog"]["value"] == "1"
        assert live["overview"]["backlog"] == 1
        assert live["cards"]["oldest"]["value"] != "—"
        day = await client.get("/ui/", params={"window": "day"})
        assert 'href="/ui/?window=day" aria-current="page"' in day.text
        assert "<svg" in day.text or "Charts unavailable" in day.text


async def test_a_task_page_shows_the_ledger_fields_and_the_timeline(
    build_app: AppFactory,
) -> None:
    app = build_app(handlers=["handlers.ledger"])
    task_id = "65f0c0de0000000000000001"
    async with app.started(), client_for(app) as client:
        ids = [await deliver(client, f"{n}.json") for n in (
            "05-completed-before-audit", "07-audit-fixed", "06-audit-accepted",
            "08-recall-to-pending")]  # fmt: skip
        await app.dispatcher.drain()
        await signed_in_token(client)
        found = await client.get("/ui/tasks", params={"task_id": task_id})
        assert found.headers["location"] == f"/ui/tasks/{task_id}"
        page = await client.get(found.headers["location"])
        assert page.status_code == 200
        assert "street_scenes" in page.text  # the ledger's fields
        assert 'class="badge s-pending">pending<' in page.text
        timeline = page.text[page.text.index('<ol class="timeline">') :]
        kinds = re.findall(r"<strong>([\w.: ]+)</strong>\s*<time", timeline)
        assert kinds[:2] == ["snapshot applied", "task.completed"]
        for kind in ("task.audited", "stale snapshot: ignored", "task.recalled"):
            assert kind in kinds, kind
        for delivery_id in ids:
            assert f'href="/ui/deliveries/{delivery_id}"' in timeline
        missing = await client.get("/ui/tasks", params={"task_id": "nope"})
        assert missing.status_code == 404
        assert "The ledger has no task" in missing.text
        assert (await client.get("/ui/tasks/nope")).status_code == 404
        listing = await client.get("/ui/tasks")
        assert f'href="/ui/tasks/{task_id}"' in listing.text


async def test_unique_id_released_and_bound_show_on_the_timelines(build_app: AppFactory) -> None:
    app = build_app(handlers=["handlers.ledger"])
    async with app.started(), client_for(app) as client:
        for name in (
            "03-error-on-creation-clear-unique-id",
            "04-resubmitted-same-unique-id-completed",
        ):
            await deliver(client, f"{name}.json")
        await app.dispatcher.drain()
        await signed_in_token(client)
        errored = await client.get("/ui/tasks/6500aa01e4b0c1d2e3f40001")
        assert "task.errored" in errored.text
        assert "unique_id.released" in errored.text
        assert 'class="badge s-released">released<' in errored.text
        successor = await client.get("/ui/tasks/6500ab77e4b0c1d2e3f40002")
        assert "kitten-001" in successor.text


async def test_review_actions_are_buttons_for_task_edit_keys(build_app: AppFactory) -> None:
    keys = {"editor": {"key": OPS_KEY, "scopes": ["task.read", "task.edit"]},
            "viewer": {"key": "viewer-key", "scopes": ["task.read"]}}  # fmt: skip
    app = build_app(
        handlers=["handlers.ledger"],
        sources={"docs": {"kind": "document-review", "verify": "none"}},
        api={"keys": keys},
    )
    async with app.started(), client_for(app) as client:
        for status in ("PROCESSING", "REVIEWING"):
            body = {"task_id": "inv-1", "status": status, "project_id": "invoices"}
            assert (await client.post("/callbacks/docs", json=body)).status_code == 200
        await app.dispatcher.drain()
        token = await signed_in_token(client)
        page = await client.get("/ui/tasks/inv-1")
        assert page.status_code == 200
        buttons = re.findall(r'name="action" value="(\w+)"', page.text)
        assert buttons == ["complete", "discard", "report"]  # what REVIEWING allows
        done = await client.post(
            "/ui/tasks/inv-1/action", data={"csrf": token, "action": "complete"}
        )
        assert done.status_code == 303
        assert done.headers["location"] == "/ui/tasks/inv-1?done=complete"
        page = await client.get(done.headers["location"])
        assert "Completed." in page.text
        assert "operator action: complete" in page.text
        assert re.findall(r'name="action" value="(\w+)"', page.text) == ["unlock", "report"]
        refused = await client.post(
            "/ui/tasks/inv-1/action", data={"csrf": token, "action": "discard"}
        )
        assert refused.status_code == 400
        assert "only a REVIEWING task can discard" in refused.text
        no_reason = await client.post(
            "/ui/tasks/inv-1/action", data={"csrf": token, "action": "report"}
        )
        assert no_reason.status_code == 400
        reported = await client.post(
            "/ui/tasks/inv-1/action", data={"csrf": token, "action": "report", "reason": "blurry"}
        )
        assert reported.status_code == 303
        api = await client.get("/v1/task/inv-1", headers={"authorization": f"Bearer {OPS_KEY}"})
        history = api.json()["history"]
        assert [h["kind"] for h in history if h["kind"] in ("action", "report")] == [
            "action",
            "report",
        ]  # the same operator actions the API records, by the same key
        assert all(h["detail"].get("by") == "editor" for h in history if h["kind"] == "action")

        client.cookies.clear()
        await signed_in_token(client, key="viewer-key")
        viewer = await client.get("/ui/tasks/inv-1")
        assert viewer.status_code == 200
        assert 'name="action"' not in viewer.text  # no task.edit: no buttons
        token = csrf_in(viewer.text)
        forbidden = await client.post(
            "/ui/tasks/inv-1/action", data={"csrf": token, "action": "unlock"}
        )
        assert forbidden.status_code == 403
