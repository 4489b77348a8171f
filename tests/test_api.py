"""The read/admin API: bearer keys and scopes, the deliveries inbox, health and metrics."""

from __future__ import annotations

import json

import httpx
import pytest

from receiver.app import TaskhookApp
from tests.conftest import BACKENDS, OPS_KEY, READ_KEY, client_for, ops, sample, signed


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.mark.parametrize(
    ("headers", "status", "words"),
    [
        ({}, 401, "missing Authorization"),
        ({"authorization": "Basic abc"}, 401, "Bearer"),
        ({"authorization": "Bearer wrong"}, 401, "unknown API key"),
        ({"authorization": f"Bearer {READ_KEY}"}, 403, "deliveries.read"),
    ],
)
async def test_deliveries_need_a_key_with_scope(
    client: httpx.AsyncClient, headers: dict[str, str], status: int, words: str
) -> None:
    response = await client.get("/v1/deliveries", headers=headers)
    assert response.status_code == status
    assert words in response.json()["error"]


async def test_retry_needs_the_write_scope(app: TaskhookApp) -> None:
    app.keys._keys = [("ro", OPS_KEY.encode(), frozenset({"deliveries.read"}))]
    async with client_for(app) as client:
        response = await client.post("/v1/deliveries/x/retry", headers=ops())
    assert response.status_code == 403
    assert "deliveries.write" in response.json()["error"]


async def test_list_pages_newest_first_with_a_stable_token(client: httpx.AsyncClient) -> None:
    ids = []
    for n in range(5):
        body = json.loads(sample("01-completed.json"))
        body["task"]["metadata"] = {"n": n}
        answer = await client.post("/callbacks/refonte", content=json.dumps(body), headers=signed())
        ids.append(answer.json()["delivery_id"])
    page1 = (await client.get("/v1/deliveries?limit=2", headers=ops())).json()
    assert [d["delivery_id"] for d in page1["docs"]] == ids[::-1][:2]
    assert (page1["total"], page1["limit"], page1["has_more"]) == (5, 2, True)
    # New arrivals do not shift the pages already handed out.
    late = await client.post(
        "/callbacks/refonte", content=sample("02-completed-test-mode.json"), headers=signed()
    )
    assert late.status_code == 200
    page2 = (
        await client.get(f"/v1/deliveries?limit=2&next_token={page1['next_token']}", headers=ops())
    ).json()
    assert [d["delivery_id"] for d in page2["docs"]] == ids[::-1][2:4]
    page3 = (
        await client.get(f"/v1/deliveries?limit=2&next_token={page2['next_token']}", headers=ops())
    ).json()
    assert [d["delivery_id"] for d in page3["docs"]] == ids[:1]
    assert page3["has_more"] is False and page3["next_token"] is None


async def test_list_filters(client: httpx.AsyncClient) -> None:
    await client.post("/callbacks/refonte", content=sample("01-completed.json"), headers=signed())
    await client.post("/callbacks/refonte", content=sample("01-completed.json"), headers=signed())
    await client.post(
        "/callbacks/refonte", content=sample("09-audit-rejected.json"), headers=signed()
    )
    by_status = (await client.get("/v1/deliveries?status=duplicate", headers=ops())).json()
    assert by_status["total"] == 1
    by_task = (
        await client.get("/v1/deliveries?task_id=65f0c0de0000000000000003", headers=ops())
    ).json()
    assert [d["task_id"] for d in by_task["docs"]] == ["65f0c0de0000000000000003"]
    by_source = (await client.get("/v1/deliveries?source=other", headers=ops())).json()
    assert by_source["total"] == 0


@pytest.mark.parametrize(
    ("query", "words"),
    [
        ("status=weird", "status must be one of"),
        ("limit=0", "limit"),
        ("limit=101", "limit"),
        ("limit=x", "limit"),
        ("next_token=%%%", "next_token"),
    ],
)
async def test_list_rejects_bad_queries(client: httpx.AsyncClient, query: str, words: str) -> None:
    response = await client.get(f"/v1/deliveries?{query}", headers=ops())
    assert response.status_code == 400
    assert words in response.json()["error"]


async def test_show_has_redacted_headers_body_and_attempts(client: httpx.AsyncClient) -> None:
    answer = (
        await client.post(
            "/callbacks/refonte",
            content=sample("01-completed.json"),
            headers=signed() | {"authorization": "Bearer vendor-token"},
        )
    ).json()
    shown = (await client.get(f"/v1/deliveries/{answer['delivery_id']}", headers=ops())).json()
    assert shown["headers"]["refonte-callback-auth"] == "[redacted]"
    assert shown["headers"]["authorization"] == "[redacted]"
    assert shown["body"] == sample("01-completed.json").decode()
    assert shown["attempts"] == 0
    assert shown["verified_by"]["key_index"] == 0
    assert shown["received_at"].endswith("Z")
    missing = await client.get("/v1/deliveries/dlv_missing", headers=ops())
    assert missing.status_code == 404


async def test_health_and_readiness(client: httpx.AsyncClient, app: TaskhookApp) -> None:
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    assert (await client.get("/readyz")).json() == {"status": "ready"}
    await app.storage.close()
    not_ready = await client.get("/readyz")
    assert not_ready.status_code == 503
    assert (await client.get("/healthz")).status_code == 200


async def test_metrics_count_outcomes_and_commits(client: httpx.AsyncClient) -> None:
    await client.post("/callbacks/refonte", content=sample("01-completed.json"), headers=signed())
    await client.post("/callbacks/refonte", content=sample("01-completed.json"), headers=signed())
    await client.post("/callbacks/refonte", content=b"{}", headers={"refonte-callback-auth": "x"})
    text = (await client.get("/metrics")).text
    assert 'taskhook_deliveries_total{outcome="accepted",source="refonte"} 1.0' in text
    assert 'taskhook_deliveries_total{outcome="duplicate",source="refonte"} 1.0' in text
    assert 'taskhook_verification_failures_total{source="refonte"} 1.0' in text
    assert "taskhook_backlog_depth 1.0" in text
    assert "taskhook_commit_seconds_count" in text
