"""Crafted query parameters on every /v1 route answer 400 with a message, never a 5xx."""

from __future__ import annotations

import base64
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from receiver.app import TaskhookApp
from tests.conftest import AppFactory, client_for, sample, signed

AUTH = {"authorization": "Bearer all-scopes"}
ROUTES: dict[str, tuple[str, ...]] = {
    "/v1/deliveries": ("status", "source", "task_id", "limit", "next_token"),
    "/v1/tasks": (
        "status", "type", "project", "batch", "unique_id", "customer_review_status", "tag",
        "start_time", "end_time", "updated_after", "limit", "next_token",
    ),
    "/v1/throughput": ("worker_id", "use_case_id", "since", "until"),
}  # fmt: skip
CRAFTED = [
    "", " ", "0", "-1", "101", "1e9", "99999999999999999999999", "nan", "inf", "\x00", "%00",
    "'; DROP TABLE deliveries; --", "ñ", "\ud7ff", "9999-12-31T23:59:59Z", "0001-01-01",
    "2024-02-30", "2024-13-01T00:00:00Z", "+999999-01-01", "T", "1" * 5000,
    base64.urlsafe_b64encode(b"[1,2,3]").decode(), base64.urlsafe_b64encode(b"{}").decode(),
    base64.urlsafe_b64encode(b'["a", 1]').decode(), base64.urlsafe_b64encode(b"-1").decode(),
    base64.urlsafe_b64encode(b"1e400").decode(), "====", "eyJ", "null",
]  # fmt: skip


@pytest.fixture
async def app(build_app: AppFactory) -> Any:
    instance = build_app(
        handlers=["handlers.ledger", "handlers.throughput"],
        api={"keys": {"all": {"key": "all-scopes", "scopes": [
            "tasks.read", "deliveries.read", "deliveries.write", "task.read", "task.edit"]}}},
    )  # fmt: skip
    async with instance.started(), client_for(instance) as client:
        await client.post("/callbacks/refonte", content=sample("01-completed.json"),
                          headers=signed())  # fmt: skip
        await instance.dispatcher.drain()
        yield instance


async def answer(app: TaskhookApp, route: str, params: list[tuple[str, str]]) -> httpx.Response:
    async with client_for(app) as client:
        return await client.get(route, params=params, headers=AUTH)


@pytest.mark.parametrize("route", sorted(ROUTES))
async def test_every_crafted_value_of_every_parameter_is_a_clear_400_or_a_page(
    app: TaskhookApp, route: str
) -> None:
    for name in ROUTES[route]:
        for value in CRAFTED:
            response = await answer(app, route, [(name, value)])
            assert response.status_code in (200, 400), (route, name, value, response.text)
            if response.status_code == 400:
                error = response.json()["error"]
                assert name in error or "next_token" in error, (route, name, value, error)


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
async def test_property_no_query_gets_a_5xx(app: TaskhookApp, data: st.DataObject) -> None:
    route = data.draw(st.sampled_from(sorted(ROUTES)))
    names = st.sampled_from([*ROUTES[route], "x", "limit", "next_token"])
    values = st.one_of(st.text(max_size=40), st.sampled_from(CRAFTED))
    params = data.draw(st.lists(st.tuples(names, values), max_size=5))
    response = await answer(app, route, params)
    assert response.status_code < 500, (route, params, response.text)
