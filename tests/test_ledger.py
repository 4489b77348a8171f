"""The ledger end to end: deliveries over HTTP → dispatch → ledger → /v1/task(s)."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from receiver.app import TaskhookApp
from receiver.events import Event
from tests.conftest import (
    BACKENDS,
    READ_KEY,
    AppFactory,
    client_for,
    ops,
    sample,
    sample_json,
    signed,
)


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


READ = {"authorization": f"Bearer {READ_KEY}"}
LIFECYCLE_ID = "65f0c0de0000000000000001"


def ledger_app(build_app: AppFactory, seen: list[Event] | None = None) -> TaskhookApp:
    def setup(registry: Any) -> None:
        if seen is not None:
            registry.on_any(seen.append, name="collect")

    return build_app(setup=setup, handlers=["handlers.ledger"])


async def post(client: httpx.AsyncClient, body: bytes) -> str:
    response = await client.post("/callbacks/refonte", content=body, headers=signed())
    assert response.status_code == 200, response.text
    delivery_id: str = response.json()["delivery_id"]
    return delivery_id


def body(name: str, **task: Any) -> bytes:
    doc = sample_json(name)
    doc["task"].update(task)
    for key in ("status", "task_id"):
        if key in task:
            doc[key] = task[key]
    return json.dumps(doc).encode()


async def test_lifecycle_with_duplicates_and_a_late_retry(build_app: AppFactory) -> None:
    seen: list[Event] = []
    app = ledger_app(build_app, seen)
    async with app.started(), client_for(app) as client:
        ids = {}
        for name in (
            "05-completed-before-audit.json",
            "06-audit-accepted.json",
            "07-audit-fixed.json",
            "08-recall-to-pending.json",
        ):
            ids[name] = await post(client, sample(name))
            await post(client, sample(name))  # an exact duplicate: answered, never applied
            await app.dispatcher.drain()
        late = await post(client, body("06-audit-accepted.json", callback_completed=False))
        await app.dispatcher.drain()
        task = (await client.get(f"/v1/task/{LIFECYCLE_ID}", headers=READ)).json()

    assert [e.name for e in seen] == [
        "task.completed",
        "task.audited",
        "task.audited",
        "task.updated",
        "task.recalled",
    ]
    assert task["status"] == "pending"
    assert task["created_at"] == "2024-03-01T10:00:00.000Z"  # the vendor's text, not ours
    assert task["customer_review_status"] == "fixed"
    assert task["response"] is None
    kinds = [(h["kind"], h.get("event")) for h in task["history"]]
    assert kinds == [
        ("applied", None),
        ("event", "task.completed"),
        ("applied", None),
        ("event", "task.audited"),
        ("applied", None),
        ("event", "task.audited"),
        ("event", "task.updated"),
        ("applied", None),
        ("event", "task.recalled"),
        ("stale", None),
    ]
    assert task["history"][-1]["delivery_id"] == late
    assert task["history"][0]["delivery_id"] == ids["05-completed-before-audit.json"]
    fixed = task["history"][5]["detail"]
    assert fixed["prior_response"]["annotations"][0]["label"] == "vehicle"


async def test_unique_id_released_on_error_then_taken_by_the_resubmission(
    build_app: AppFactory,
) -> None:
    seen: list[Event] = []
    app = ledger_app(build_app, seen)
    async with app.started(), client_for(app) as client:
        await post(client, sample("03-error-on-creation-clear-unique-id.json"))
        await post(client, sample("04-resubmitted-same-unique-id-completed.json"))
        await app.dispatcher.drain()
        # A late callback of the errored task must not touch its successor.
        await post(client, body("03-error-on-creation-clear-unique-id.json", metadata={"x": 1}))
        await app.dispatcher.drain()
        holders = (await client.get("/v1/tasks?unique_id=kitten-001", headers=READ)).json()
        old = (await client.get("/v1/task/6500aa01e4b0c1d2e3f40001", headers=READ)).json()
    assert [d["task_id"] for d in holders["docs"]] == ["6500ab77e4b0c1d2e3f40002"]
    assert "unique_id" not in old
    assert [e.name for e in seen if e.name.startswith("unique_id.")] == ["unique_id.released"]


async def test_out_of_order_claim_is_a_conflict_until_the_holder_releases(
    build_app: AppFactory,
) -> None:
    seen: list[Event] = []
    app = ledger_app(build_app, seen)
    pending = body(
        "03-error-on-creation-clear-unique-id.json",
        status="pending",
        updated_at="2023-09-12T10:00:01.000Z",
    )
    async with app.started(), client_for(app) as client:
        await post(client, pending)  # the first task holds kitten-001
        await app.dispatcher.drain()
        await post(client, sample("04-resubmitted-same-unique-id-completed.json"))
        await app.dispatcher.drain()
        during = (await client.get("/v1/tasks?unique_id=kitten-001", headers=READ)).json()
        await post(client, sample("03-error-on-creation-clear-unique-id.json"))
        await app.dispatcher.drain()
        after = (await client.get("/v1/tasks?unique_id=kitten-001", headers=READ)).json()
    conflict = next(e for e in seen if e.name == "unique_id.conflict")
    assert conflict.payload == {
        "unique_id": "kitten-001",
        "task_id": "6500ab77e4b0c1d2e3f40002",
        "held_by": "6500aa01e4b0c1d2e3f40001",
    }
    assert [d["task_id"] for d in during["docs"]] == ["6500aa01e4b0c1d2e3f40001"]
    assert [d["task_id"] for d in after["docs"]] == ["6500ab77e4b0c1d2e3f40002"]


async def test_list_filters_and_keyset_paging(build_app: AppFactory) -> None:
    app = ledger_app(build_app)
    async with app.started(), client_for(app) as client:
        for n in range(7):
            await post(client, body(
                "05-completed-before-audit.json", task_id=f"task-{n}",
                created_at=f"2024-03-0{n + 1}T10:00:00.000Z",
                project="even" if n % 2 == 0 else "odd", tags=[f"t{n % 3}"],
            ))  # fmt: skip
        await app.dispatcher.drain()
        first = (await client.get("/v1/tasks?limit=3", headers=READ)).json()
        # A new task arriving between pages does not shift what comes next.
        await post(
            client,
            body(
                "05-completed-before-audit.json",
                task_id="task-new",
                created_at="2024-04-01T00:00:00.000Z",
            ),
        )
        await app.dispatcher.drain()
        second = (
            await client.get(f"/v1/tasks?limit=3&next_token={first['next_token']}", headers=READ)
        ).json()
        recount = (await client.get("/v1/tasks?limit=3", headers=READ)).json()
        even = (await client.get("/v1/tasks?project=even", headers=READ)).json()
        tagged = (await client.get("/v1/tasks?tag=t0&limit=1", headers=READ)).json()
        tagged2 = (
            await client.get(
                f"/v1/tasks?tag=t0&limit=1&next_token={tagged['next_token']}", headers=READ
            )
        ).json()
        window = (
            await client.get(
                "/v1/tasks?start_time=2024-03-02&end_time=2024-03-04T23:00:00Z", headers=READ
            )
        ).json()
        status = (await client.get("/v1/tasks?status=pending", headers=READ)).json()
    assert [d["task_id"] for d in first["docs"]] == ["task-6", "task-5", "task-4"]
    assert (first["total"], first["limit"], first["has_more"]) == (7, 3, True)
    assert [d["task_id"] for d in second["docs"]] == ["task-3", "task-2", "task-1"]
    assert recount["total"] == 8  # a cached total never outlives a ledger write
    assert [d["task_id"] for d in even["docs"]] == ["task-6", "task-4", "task-2", "task-0"]
    assert even["total"] == 4
    assert [d["task_id"] for d in tagged["docs"] + tagged2["docs"]] == ["task-6", "task-3"]
    assert [d["task_id"] for d in window["docs"]] == ["task-3", "task-2", "task-1"]
    assert status["total"] == 0 and status["docs"] == [] and status["next_token"] is None


@pytest.mark.parametrize(
    ("path", "headers", "status"),
    [
        ("/v1/tasks", {}, 401),
        ("/v1/tasks", {"authorization": "Bearer nope"}, 401),
        ("/v1/task/x", {}, 401),
        ("/v1/tasks?limit=0", READ, 400),
        ("/v1/tasks?next_token=zzz", READ, 400),
        ("/v1/tasks?start_time=yesterday", READ, 400),
        ("/v1/task/unknown", READ, 404),
    ],
)
async def test_task_api_errors(
    build_app: AppFactory, path: str, headers: dict[str, str], status: int
) -> None:
    app = ledger_app(build_app)
    async with app.started(), client_for(app) as client:
        response = await client.get(path, headers=headers)
    assert response.status_code == status
    assert response.json()["error"]


async def test_a_key_without_tasks_read_is_403(build_app: AppFactory) -> None:
    app = build_app(
        handlers=["handlers.ledger"],
        api={"keys": {"ops": {"key": "only-deliveries", "scopes": ["deliveries.read"]}}},
    )
    async with app.started(), client_for(app) as client:
        response = await client.get("/v1/tasks", headers=ops("only-deliveries"))
    assert response.status_code == 403
    assert "tasks.read" in response.json()["error"]


def test_tasks_cli_lists_and_shows_in_readable_tables(tmp_path: Any) -> None:
    import asyncio
    import subprocess
    import sys

    db = tmp_path / "ledger.db"
    config = tmp_path / "taskhook.toml"
    config.write_text(
        f'[database]\nurl = "sqlite:///{db}"\n'
        '[sources.refonte]\nkind = "refonte"\nverify = "none"\n'
    )

    async def fill() -> None:
        from receiver.app import create_app
        from receiver.config import load_settings

        app = create_app(load_settings(config, environ={}))
        async with app.started(), client_for(app) as client:
            for name in (
                "05-completed-before-audit.json",
                "06-audit-accepted.json",
                "09-audit-rejected.json",
            ):
                assert (await client.post("/callbacks/refonte", content=sample(name))).is_success
            await app.dispatcher.drain()

    asyncio.run(fill())

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "receiver.cli", *args, "--config", str(config)],
            capture_output=True,
            text=True,
            timeout=60,
        )

    listed = cli("tasks", "list", "--status", "completed")
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert lines[0].split()[:3] == ["TASK_ID", "STATUS", "TYPE"]
    assert [line.split()[0] for line in lines[1:3]] == [
        "65f0c0de0000000000000003",
        "65f0c0de0000000000000001",
    ]
    assert "2 of 2 task(s)" in listed.stdout
    shown = cli("tasks", "show", LIFECYCLE_ID)
    assert shown.returncode == 0, shown.stderr
    assert "customer_review_status  accepted" in shown.stdout
    assert "task.audited" in shown.stdout and "applied" in shown.stdout
    missing = cli("tasks", "show", "nope")
    assert missing.returncode == 1
    assert "no task 'nope'" in missing.stdout
    # Paging and JSON for scripts: one task a page, the token to the next, or every page.
    first = cli("tasks", "list", "--limit", "1", "--json")
    page = json.loads(first.stdout)
    assert (len(page["docs"]), page["total"], page["has_more"]) == (1, 2, True)
    second = json.loads(cli("tasks", "list", "--limit", "1", "--json", "--next-token",
                            page["next_token"]).stdout)  # fmt: skip
    assert second["offset"] == 1 and not second["has_more"]
    every = json.loads(cli("tasks", "list", "--limit", "1", "--all", "--json").stdout)
    assert [d["task_id"] for d in every["docs"]] == [page["docs"][0]["task_id"],
                                                    second["docs"][0]["task_id"]]  # fmt: skip
    hint = cli("tasks", "list", "--limit", "1")
    assert "1 of 2 task(s); next page: --next-token " in hint.stdout
    # A misspelt value is refused, not answered with no rows.
    misspelt = cli("tasks", "list", "--status", "complete")
    assert misspelt.returncode == 2 and "'complete' is not a status" in misspelt.stderr
