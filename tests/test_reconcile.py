"""Reconciliation pollers against fake vendor APIs on 127.0.0.1: each vendor's own wire
format → synthesized, reconciled deliveries → the same intake and ledger → a ledger query."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from receiver.app import TaskhookApp
from receiver.config import settings_from_mapping
from receiver.errors import ConfigError, VendorError
from receiver.reconcile.http import ClientCredentials, VendorClient, retry_after
from receiver.reconcile.refonte import RefontePoller
from tests.conftest import BACKENDS, READ_KEY, SECRET, AppFactory, client_for, signed
from tests.test_cli import TASKHOOK, clean_env
from tests.vendors import ClarifaiWire, Fake, clarifai_api, refonte_api, serving, taskmonk_api


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


READ = {"authorization": f"Bearer {READ_KEY}"}
API_KEY = "vendor-api-key"
FAST = {"backoff_base_seconds": 0.01, "backoff_max_seconds": 0.05}


def refonte_task(task_id: str, status: str, updated: str, **extra: Any) -> dict[str, Any]:
    return {
        "task_id": task_id, "status": status, "type": "imageannotation",
        "project": "kittens", "created_at": "2026-11-01T00:00:00Z", "updated_at": updated,
        "params": {"attachment": f"https://example.com/{task_id}.jpg"},
        "callback_url": "https://receiver.example/callbacks/refonte", **extra,
    }  # fmt: skip


async def task(client: httpx.AsyncClient, task_id: str) -> dict[str, Any]:
    response = await client.get(f"/v1/task/{task_id}", headers=READ)
    assert response.status_code == 200, response.text
    found: dict[str, Any] = response.json()
    return found


async def deliveries_of(app: TaskhookApp, source: str) -> list[Any]:
    page = await app.storage.list_deliveries(source=source, limit=1000)
    return list(page.items)


# --- Refonte: callbacks that stopped -------------------------------------------------------


@pytest.fixture
def refonte() -> Iterator[tuple[Fake, str]]:
    fake = Fake()
    with serving(refonte_api(fake, API_KEY)) as url:
        yield fake, url


def refonte_app(build_app: AppFactory, url: str, **reconcile: Any) -> TaskhookApp:
    return build_app(
        handlers=["handlers.ledger"],
        sources={"refonte": {
            "kind": "refonte", "verify": "header-token", "secrets": [SECRET],
            "reconcile": {"base_url": url, "api_key": API_KEY, "page_size": 2, **FAST,
                          **reconcile},
        }},
    )  # fmt: skip


async def test_refonte_tasks_whose_callbacks_stopped_reach_the_ledger(
    build_app: AppFactory, refonte: tuple[Fake, str]
) -> None:
    fake, url = refonte
    app = refonte_app(build_app, url)
    async with app.started(), client_for(app) as client:
        # A was called back while pending; its completion callback never came. B and C
        # never called back at all.
        pending = refonte_task("A", "pending", "2026-11-20T10:00:00Z")
        body = {"task_id": "A", "status": "pending", "task": pending}
        answer = await client.post("/callbacks/refonte", json=body, headers=signed())
        assert answer.status_code == 200
        fake.tasks = {
            "A": refonte_task("A", "completed", "2026-11-20T11:00:00Z",
                              completed_at="2026-11-20T11:00:00Z", response={"boxes": [1]}),
            "B": refonte_task("B", "completed", "2026-11-20T11:05:00Z",
                              completed_at="2026-11-20T11:05:00Z", response={"boxes": []}),
            "C": refonte_task("C", "error", "2026-11-20T11:06:00Z",
                              response={"error": "attachment unreachable"}),
        }  # fmt: skip
        fake.fail_next(429, **{"retry-after": "0"})
        fake.fail_next(503)

        reconciler = app.reconciler("refonte")
        try:
            summary = await reconciler.once()
            await app.dispatcher.drain()
            assert (summary.fetched, summary.fed, summary.unchanged) == (3, 3, 0)
            a, b, c = [await task(client, t) for t in "ABC"]
            assert (a["status"], b["status"], c["status"]) == ("completed", "completed", "error")
            assert a["response"] == {"boxes": [1]}
            events = [h.get("event") for h in a["history"]]
            assert "task.completed" in events
            # Two retried failures, then page 1 (A, B) and page 2 (C) via next_token.
            assert len(fake.seen) == 4
            assert "next_token" in fake.seen[-1][2] and "updated_after" not in fake.seen[-1][2]

            stored = await deliveries_of(app, "refonte")
            reconciled = [d for d in stored if d.reconciled]
            assert len(reconciled) == 3 and len(stored) == 4
            assert all(d.headers["x-taskhook-origin"] == "reconcile" for d in reconciled)

            # Next pass asks only for tasks updated after the cursor (the pass's start less
            # the overlap): C was retried by an operator since.
            now = datetime.now(UTC).isoformat().replace("+00:00", "Z")
            fake.tasks["C"] = refonte_task("C", "completed", now, completed_at=now)
            again = await reconciler.once()
            await app.dispatcher.drain()
            assert fake.seen[-1][2]["updated_after"] == summary.cursor
            assert (again.fetched, again.fed, again.unchanged) == (1, 1, 0)
            assert (await task(client, "C"))["status"] == "completed"
            # C is still inside the overlap next time: read again, skipped, no new row.
            third = await reconciler.once()
            assert (third.fetched, third.fed, third.unchanged) == (1, 0, 1)
            assert len(await deliveries_of(app, "refonte")) == 5
        finally:
            await reconciler.poller.aclose()


async def test_vendor_failures_stop_the_pass_and_keep_the_cursor(
    build_app: AppFactory, refonte: tuple[Fake, str]
) -> None:
    fake, url = refonte
    app = refonte_app(build_app, url, max_retries=2)
    fake.tasks = {"A": refonte_task("A", "completed", "2026-11-20T11:00:00Z")}
    async with app.started():
        reconciler = app.reconciler("refonte")
        try:
            fake.fail_next(502, times=3)
            with pytest.raises(VendorError, match="gave up after 3 attempts"):
                await reconciler.once()
            assert await app.storage.load_cursor("refonte") is None
            assert await deliveries_of(app, "refonte") == []
            # A wrong key is not retried: it fails at once with the vendor's answer.
            settings = app.settings.sources["refonte"].reconcile
            assert settings is not None
            wrong = settings.model_copy(update={"api_key": SecretStr("wrong")})
            bad = RefontePoller("refonte", url, wrong, sleep=asyncio.sleep)
            fake.seen.clear()
            with pytest.raises(VendorError, match="401"):
                async for _ in bad.poll(None, 0.0):
                    pass
            assert len(fake.seen) == 1
            await bad.aclose()
            summary = await reconciler.once()
            assert summary.fed == 1 and summary.cursor is not None
        finally:
            await reconciler.poller.aclose()


# --- Clarifai: status codes, never a callback ----------------------------------------------


def clarifai_task(task_id: str, code: int, modified: str) -> dict[str, Any]:
    return {
        "id": task_id, "type": "CONCEPTS_CLASSIFICATION", "name": f"Annotate {task_id}",
        "created_at": "2026-11-01T00:00:00Z", "modified_at": modified,
        "worker": {"strategy": "PARTITIONED", "user_ids": ["w1", "w2"],
                   "partitioned_strategy_info": {"type": "WEIGHTED", "workers_per_input": 1}},
        "review": {"strategy": "CONSENSUS", "user_ids": ["r1"],
                   "consensus_strategy_info": {"approval_threshold": 2}},
        "concept_ids": ["cat"], "input_source": {"type": "ALL_INPUTS"},
        "status": {"code": code, "description": f"status {code}"},
    }  # fmt: skip


async def test_clarifai_task_statuses_end_in_the_ledger(build_app: AppFactory) -> None:
    fake = Fake()
    fake.tasks = {
        "t1": clarifai_task("t1", 54001, "2026-11-20T10:00:00Z"),
        "t2": clarifai_task("t2", 54002, "2026-11-20T10:01:00Z"),
        "t3": clarifai_task("t3", 54003, "2026-11-20T10:02:00Z"),
        "t4": clarifai_task("t4", 54005, "2026-11-20T10:03:00Z"),
        "t5": clarifai_task("t5", 54006, "2026-11-20T10:04:00Z"),
    }
    with serving(clarifai_api(fake, API_KEY)) as url:
        app = build_app(
            handlers=["handlers.ledger"],
            sources={"clarifai": {"kind": "clarifai", "reconcile": {
                "base_url": url, "api_key": API_KEY, "user_id": "me", "app_id": "pets",
                "page_size": 2, **FAST}}},
        )  # fmt: skip
        async with app.started(), client_for(app) as client:
            # It never calls back: its callback path says so.
            refused = await client.post("/callbacks/clarifai", json={}, headers=signed())
            assert refused.status_code == 404 and "polled" in refused.json()["error"]

            reconciler = app.reconciler("clarifai")
            try:
                first = await reconciler.once()
                await app.dispatcher.drain()
                assert (first.fetched, first.fed) == (5, 5)
                assert all(p == "/v2/users/me/apps/pets/tasks" for p in fake.paths())
                statuses = [(await task(client, f"t{i}"))["status"] for i in range(1, 6)]
                assert statuses == ["pending", "completed", "canceled", "error", "pending"]
                t1 = await task(client, "t1")
                assert t1["project"] == "pets"
                meta = t1["metadata"]
                assert meta["worker_strategy"] == "PARTITIONED"
                assert meta["review_strategy"] == "CONSENSUS"
                assert meta["vendor_status"]["code"] == 54001
                t4 = await task(client, "t4")
                assert t4["response"] == {"error": "status 54005"}

                # t1 is done now; a later pass feeds only it.
                fake.tasks["t1"] = clarifai_task("t1", 54002, "2026-11-20T12:00:00Z")
                second = await reconciler.once()
                await app.dispatcher.drain()
                assert (second.fetched, second.fed, second.unchanged) == (5, 1, 4)
                t1 = await task(client, "t1")
                assert t1["status"] == "completed"
                names = [h.get("event") for h in t1["history"]]
                assert "task.completed" in names
            finally:
                await reconciler.poller.aclose()


# --- TaskMonk: OAuth2, batch status, output job (more in tests/test_taskmonk.py) -----------


def taskmonk_task(task_id: str, batch: str, status: str, **extra: Any) -> dict[str, Any]:
    return {"task_id": task_id, "external_id": f"ext-{task_id}", "batch": batch,
            "status": status, **extra}  # fmt: skip


def taskmonk_settings(url: str, **reconcile: Any) -> dict[str, Any]:
    return {"kind": "taskmonk", "reconcile": {
        "base_url": url, "client_id": "cid", "client_secret": "csecret", "project_id": "p9",
        "output_fields": ["label"], **FAST, **reconcile}}  # fmt: skip


@pytest.mark.parametrize("output_format", ["CSV", "JSON"])
async def test_taskmonk_batches_end_in_the_ledger_with_one_cached_token(
    build_app: AppFactory, output_format: str
) -> None:
    fake = Fake()
    fake.tasks = {
        "m1": taskmonk_task("m1", "b1", "Completed", output={"label": "cat"},
                            completed_at="2026-11-20T10:00:00Z"),
        "m2": taskmonk_task("m2", "b1", "InProgress"),
        "m3": taskmonk_task("m3", "b2", "New"),
    }  # fmt: skip
    with serving(taskmonk_api(fake, "cid", "csecret", "p9")) as url:
        app = build_app(handlers=["handlers.ledger"], sources={
            "taskmonk": taskmonk_settings(url, output_format=output_format)})  # fmt: skip
        async with app.started(), client_for(app) as client:
            reconciler = app.reconciler("taskmonk")
            try:
                first = await reconciler.once()
                await app.dispatcher.drain()
                assert (first.fetched, first.fed) == (2, 2)  # b2 has nothing to output yet
                m1, m2 = await task(client, "m1"), await task(client, "m2")
                assert (m1["status"], m1["batch"], m1["project"]) == ("completed", "b1", "p9")
                assert m1["response"] == {"label": "cat"}
                assert m1["metadata"]["external_id"] == "ext-m1"
                assert m2["status"] == "pending"
                assert len(fake.paths("/job/job-1/status")) == 2  # progress followed to 100 %
                assert fake.paths("/api/project/v2/p9/batch/b1/output")
                cursor = json.loads(first.cursor or "{}")
                assert cursor["batches"]["b2"] == {
                    "not_started": 1,
                    "in_progress": 0,
                    "completed": 0,
                    "total": 1,
                }

                # Unchanged batches ask for no output; the token is reused, not re-fetched.
                fake.seen.clear()
                idle = await reconciler.once()
                assert idle.fetched == 0
                assert not fake.paths("/output") and fake.counts["tokens"] == 1

                # m2 completes and the API revokes the token: one new token, then the output.
                fake.tasks["m2"] = taskmonk_task("m2", "b1", "Completed",
                                                 output={"label": "dog"})  # fmt: skip
                fake.fail_next(401)
                third = await reconciler.once()
                await app.dispatcher.drain()
                assert (third.fetched, third.fed, third.unchanged) == (2, 1, 1)
                assert fake.counts["tokens"] == 2
                assert (await task(client, "m2"))["response"] == {"label": "dog"}
            finally:
                await reconciler.poller.aclose()


# --- configuration, the CLI and the loop in serve -------------------------------------------


def test_reconcile_settings_are_checked() -> None:
    with pytest.raises(ConfigError, match="reconcile"):
        settings_from_mapping({"sources": {"c": {"kind": "clarifai"}}}, environ={})
    with pytest.raises(ConfigError, match="client_id"):
        settings_from_mapping(
            {"sources": {"t": {"kind": "taskmonk", "reconcile": {"project_id": "p"}}}},
            environ={},
        )
    with pytest.raises(ConfigError, match="no vendor API"):
        settings_from_mapping({"sources": {"cf": {
            "kind": "cloudfactory", "verify": "none", "reconcile": {"api_key": "k"}}}},
            environ={})  # fmt: skip
    with pytest.raises(ConfigError, match="TM_SECRET"):
        settings_from_mapping({"sources": {"t": {"kind": "taskmonk", "reconcile": {
            "client_id": "c", "client_secret_env": "TM_SECRET", "project_id": "p"}}}},
            environ={})  # fmt: skip
    settings = settings_from_mapping({"sources": {"t": {"kind": "taskmonk", "reconcile": {
        "client_id": "c", "client_secret_env": "TM_SECRET", "project_id": "p",
        "environment": "staging"}}}}, environ={"TM_SECRET": "tm-s3cret-value"})  # fmt: skip
    source = settings.sources["t"]
    assert source.api_url == "https://preprod.taskmonk.io"
    assert source.reconcile is not None and "tm-s3cret" not in repr(source.reconcile)
    production = source.model_copy(
        update={"reconcile": source.reconcile.model_copy(update={"environment": "production"})}
    )
    assert production.api_url == "https://api.taskmonk.io"


def test_reconcile_command_once(tmp_path: Path) -> None:
    fake = Fake()
    fake.tasks = {"t2": clarifai_task("t2", 54002, "2026-11-20T10:01:00Z")}
    with serving(clarifai_api(fake, API_KEY)) as url:
        config = tmp_path / "taskhook.toml"
        config.write_text(
            f'entry_points = false\nhandlers = ["handlers.ledger"]\n'
            f'[database]\nurl = "sqlite:///{tmp_path / "t.db"}"\n'
            f'[sources.clarifai]\nkind = "clarifai"\n'
            f'[sources.clarifai.reconcile]\nbase_url = "{url}"\napi_key_env = "CLARIFAI_KEY"\n'
        )

        def taskhook(*args: str, key: str = API_KEY) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [*TASKHOOK, *args, "--config", str(config)], capture_output=True, text=True,
                env=clean_env(CLARIFAI_KEY=key), timeout=60, check=False,
            )  # fmt: skip

        done = taskhook("reconcile", "clarifai", "--once")
        assert done.returncode == 0, done.stderr
        assert "1 task snapshots read, 1 new fed" in done.stdout
        shown = taskhook("tasks", "show", "t2")
        assert shown.returncode == 0 and "completed" in shown.stdout
        again = taskhook("reconcile", "clarifai", "--once")
        assert "0 new fed, 1 unchanged" in again.stdout
        unknown = taskhook("reconcile", "nope", "--once")
        assert unknown.returncode == 2 and "no [sources.nope.reconcile]" in unknown.stderr
        refused = taskhook("reconcile", "clarifai", "--once", key="wrong")
        assert refused.returncode == 1 and "401" in refused.stderr

        # Without --once it keeps polling (and dispatching) until stopped.
        fake.tasks["t3"] = clarifai_task("t3", 54003, "2026-11-20T10:02:00Z")
        config.write_text(config.read_text() + "interval_seconds = 0.2\n")
        with (tmp_path / "loop.log").open("wb") as log:
            loop = subprocess.Popen(
                [*TASKHOOK, "reconcile", "clarifai", "--config", str(config)],
                env=clean_env(CLARIFAI_KEY=API_KEY), stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
        try:
            before = len(fake.seen)
            for _ in range(100):
                shown = taskhook("tasks", "show", "t3")
                if shown.returncode == 0 and len(fake.seen) >= before + 2:
                    break
                time.sleep(0.1)
            assert "canceled" in shown.stdout and len(fake.seen) >= before + 2
        finally:
            loop.send_signal(signal.SIGINT)
            code = loop.wait(timeout=15)
        logged = (tmp_path / "loop.log").read_text()
        assert code == 130, logged  # Ctrl-C: stopped cleanly, saying what it did
        assert logged.strip().splitlines()[-1].startswith("taskhook: interrupted: clarifai: ")
        assert "Traceback" not in logged


async def test_serve_polls_sources_with_reconcile_enabled(build_app: AppFactory) -> None:
    fake = Fake()
    fake.tasks = {"t2": clarifai_task("t2", 54002, "2026-11-20T10:01:00Z")}
    with serving(clarifai_api(fake, API_KEY)) as url:
        app = build_app(
            handlers=["handlers.ledger"],
            dispatch={"enabled": True, "poll_interval_seconds": 0.05},
            sources={"clarifai": {"kind": "clarifai", "reconcile": {
                "base_url": url, "api_key": API_KEY, "enabled": True,
                "interval_seconds": 0.05, **FAST}}},
        )  # fmt: skip
        async with app.started(), client_for(app) as client:
            for _ in range(200):
                answer = await client.get("/v1/task/t2", headers=READ)
                if answer.status_code == 200:
                    break
                await asyncio.sleep(0.05)
            assert answer.status_code == 200 and answer.json()["status"] == "completed"
            passes = len(fake.seen)
            await asyncio.sleep(0.3)
            assert len(fake.seen) > passes  # it keeps polling
        settled = len(fake.seen)
        await asyncio.sleep(0.2)
        assert len(fake.seen) == settled  # and stops with the app


def test_retry_after_reads_seconds_and_dates() -> None:
    assert retry_after("7", now=0.0) == 7.0
    assert retry_after("Mon, 23 Nov 2026 10:00:30 GMT", now=1795428000.0) == 30.0
    assert retry_after("Mon, 23 Nov 2026 09:00:00 GMT", now=1795428000.0) == 0.0
    assert retry_after("soon", now=0.0) is None and retry_after(None, now=0.0) is None


async def test_the_token_is_refreshed_shortly_before_it_expires() -> None:
    fake = Fake()
    now = [1000.0]
    with serving(taskmonk_api(fake, "cid", "csecret", "p9", expires_in=600)) as url:
        settings = settings_from_mapping(
            {"sources": {"t": taskmonk_settings(url)}}, environ={}
        ).sources["t"]
        assert settings.reconcile is not None
        credentials = ClientCredentials(
            f"{url}/api/oauth2/token", "cid", "csecret", clock=lambda: now[0]
        )
        client = VendorClient("t", url, settings.reconcile, authorization=credentials)
        try:
            for at in (1000.0, 1300.0, 1539.0):  # within expires_in less the margin
                now[0] = at
                await client.json("GET", "/api/project/p9/batch")
            assert fake.counts["tokens"] == 1
            now[0] = 1541.0  # a minute before expiry: a new token first
            await client.json("GET", "/api/project/p9/batch")
            assert fake.counts["tokens"] == 2
        finally:
            await client.aclose()


# --- Clarifai: protobuf JSON variants; a pass that quarantines fails -------------------------


def clarifai_variety() -> dict[str, dict[str, Any]]:
    """Tasks using every value of the enums the poller reads, written as the docs write them."""
    t1 = clarifai_task("t1", 54001, "2026-11-20T10:00:00Z")
    t2 = clarifai_task("t2", 54002, "2026-11-20T10:01:00Z") | {
        "type": "BOUNDING_BOX_DETECTION", "review": {"strategy": "NONE"},
        "input_source": {"type": "DATASET", "id": "ds1"},
    }  # fmt: skip
    t3 = clarifai_task("t3", 54005, "2026-11-20T10:02:00Z") | {
        "type": "POLYGON_DETECTION", "worker": {"strategy": "DYNAMIC", "user_ids": ["w3"]},
        "review": {"strategy": "MANUAL", "user_ids": ["r2"],
                   "manual_strategy_info": {"sample_percentage": 0.5}},
        "input_source": {"type": "SAVED_SEARCH", "id": "s1"},
    }  # fmt: skip
    t4 = clarifai_task("t4", 54006, "2026-11-20T10:03:00Z") | {"worker": {"strategy": "FULL"}}
    return {"t1": t1, "t2": t2, "t3": t3, "t4": t4}


async def test_clarifai_protobuf_json_variants_end_in_the_ledger_alike(
    build_app: AppFactory,
) -> None:
    fake = Fake()
    fake.tasks = clarifai_variety()
    # First as `use_integers_for_enums` prints them ("type": 1), codes as text ("54002").
    wire = ClarifaiWire(integers=True, codes="text")
    with serving(clarifai_api(fake, API_KEY, wire)) as url:
        app = build_app(
            handlers=["handlers.ledger"],
            sources={"clarifai": {"kind": "clarifai", "reconcile": {
                "base_url": url, "api_key": API_KEY, "app_id": "pets", "page_size": 3,
                **FAST}}},
        )  # fmt: skip
        async with app.started(), client_for(app) as client:
            reconciler = app.reconciler("clarifai")
            try:
                first = await reconciler.once()
                await app.dispatcher.drain()
                assert (first.fetched, first.fed, dict(first.quarantined)) == (4, 4, {})
                seen = {tid: await task(client, tid) for tid in sorted(fake.tasks)}
                assert [seen[t]["type"] for t in seen] == [
                    "CONCEPTS_CLASSIFICATION", "BOUNDING_BOX_DETECTION", "POLYGON_DETECTION",
                    "CONCEPTS_CLASSIFICATION",
                ]  # fmt: skip
                assert [seen[t]["status"] for t in seen] == [
                    "pending",
                    "completed",
                    "error",
                    "pending",
                ]
                strategies = [
                    (seen[t]["metadata"]["worker_strategy"], seen[t]["metadata"]["review_strategy"])
                    for t in seen
                ]
                assert strategies == [("PARTITIONED", "CONSENSUS"), ("PARTITIONED", "NONE"),
                                      ("DYNAMIC", "MANUAL"), ("FULL", "CONSENSUS")]  # fmt: skip
                assert [seen[t]["params"]["input_source"] for t in seen] == [
                    {"type": "ALL_INPUTS"}, {"type": "DATASET", "id": "ds1"},
                    {"type": "SAVED_SEARCH", "id": "s1"}, {"type": "ALL_INPUTS"},
                ]  # fmt: skip
                assert seen["t2"]["metadata"]["vendor_status"]["code"] == 54002

                # Every other printing of the same tasks makes the same snapshots, byte for
                # byte: nothing new is fed, no row is added, the ledger is as it was.
                for integers, codes, camel in [
                    (False, "number", False),  # names, as the docs write them
                    (False, "name", False),  # "code": "TASK_DONE", "SUCCESS"
                    (True, "number", False),
                    (True, "name", True),  # and lowerCamelCase: "modifiedAt", "userIds"
                    (False, "text", True),
                ]:
                    wire.integers, wire.codes, wire.camel = integers, codes, camel
                    again = await reconciler.once()
                    assert (again.fetched, again.fed, again.unchanged) == (4, 0, 4), wire
                    assert not again.quarantined, wire
                await app.dispatcher.drain()
                assert {tid: await task(client, tid) for tid in seen} == seen
                assert len(await deliveries_of(app, "clarifai")) == 4
            finally:
                await reconciler.poller.aclose()


def test_reconcile_command_fails_a_pass_that_quarantined(tmp_path: Path) -> None:
    fake = Fake()
    fake.tasks = {
        "t2": clarifai_task("t2", 54002, "2026-11-20T10:01:00Z"),
        # The poller cannot read these: an enum that is an object, a task without an id.
        "t7": clarifai_task("t7", 54002, "2026-11-20T10:07:00Z") | {"type": {"v": 1}},
        "t9": {"name": "Annotate nothing", "status": {"code": 54001}},
        # The intake cannot parse this one's snapshot: `modified_at` is no timestamp.
        "t8": clarifai_task("t8", 54002, "yesterday"),
    }
    with serving(clarifai_api(fake, API_KEY, ClarifaiWire(integers=True))) as url:
        config = tmp_path / "taskhook.toml"
        config.write_text(
            f'entry_points = false\nhandlers = ["handlers.ledger"]\n'
            f'[database]\nurl = "sqlite:///{tmp_path / "t.db"}"\n'
            f'[sources.clarifai]\nkind = "clarifai"\n'
            f'[sources.clarifai.reconcile]\nbase_url = "{url}"\napi_key_env = "CLARIFAI_KEY"\n'
        )

        def taskhook(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [*TASKHOOK, *args, "--config", str(config)], capture_output=True, text=True,
                env=clean_env(CLARIFAI_KEY=API_KEY), timeout=60, check=False,
            )  # fmt: skip

        def quarantined() -> list[str]:
            listed = taskhook("deliveries", "list", "--status", "quarantined", "--source",
                              "clarifai")  # fmt: skip
            assert listed.returncode == 0, listed.stderr
            return re.findall(r"\bdlv_\w+", listed.stdout)

        done = taskhook("reconcile", "clarifai", "--once")
        assert done.returncode == 1, (done.stdout, done.stderr)
        assert "4 task snapshots read, 1 new fed" in done.stdout
        assert "3 of the 4 records read were quarantined" in done.stderr
        assert "task 't7': type is {'v': 1}: neither an enum name nor a number" in done.stderr
        assert "a task without an id" in done.stderr
        assert "updated_at" in done.stderr
        assert "Traceback" not in done.stderr
        # What could be read is applied; what could not is stored, quarantined, not lost.
        shown = taskhook("tasks", "show", "t2")
        assert shown.returncode == 0 and "completed" in shown.stdout
        stored = quarantined()
        assert len(stored) == 3

        # The next pass still fails (the vendor still answers so), without a row more.
        again = taskhook("reconcile", "clarifai", "--once")
        assert again.returncode == 1 and "0 new fed, 1 unchanged" in again.stdout
        assert "3 of the 4 records read were quarantined" in again.stderr
        assert sorted(quarantined()) == sorted(stored)

        # Once every task reads, the pass succeeds.
        fake.tasks["t7"]["type"] = "CONCEPTS_CLASSIFICATION"
        fake.tasks["t8"]["modified_at"] = "2026-11-20T10:08:00Z"
        del fake.tasks["t9"]
        fine = taskhook("reconcile", "clarifai", "--once")
        assert fine.returncode == 0, fine.stderr
        assert "3 task snapshots read, 2 new fed, 1 unchanged" in fine.stdout
        assert "quarantined" not in fine.stderr


def test_clarifai_enum_and_code_readings() -> None:
    from receiver.reconcile.clarifai import Unreadable, enum, snapshot, status_code

    for written in (54002, "54002", "TASK_DONE", 54002.0):
        assert status_code({"code": written}) == 54002
    assert status_code({"code": "SUCCESS"}) == 10000 and status_code({}) is None
    assert status_code({"code": "TASK_SOMETHING_NEWER"}) == "TASK_SOMETHING_NEWER"
    for bad in ({"code": True}, {"code": [1]}, "54002"):
        with pytest.raises(Unreadable):
            status_code(bad)
    names = {1: "ALL_INPUTS"}
    assert enum(1, names, "x") == enum("1", names, "x") == enum("ALL_INPUTS", names, "x")
    assert enum(9, names, "x") == "9"  # a value newer than the table stays visible
    with pytest.raises(Unreadable, match="x is True"):
        enum(True, names, "x")
    task = clarifai_task("t1", 54002, "2026-11-20T10:01:00Z")
    assert snapshot(task, project="p")["task"]["updated_at"] == "2026-11-20T10:01:00Z"
    with pytest.raises(Unreadable, match="worker is"):
        snapshot(task | {"worker": "PARTITIONED"}, project="p")
