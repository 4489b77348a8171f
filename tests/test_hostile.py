"""Hostile input: fuzzed requests never get a 5xx, bad signatures store nothing and keep
memory flat, injection attempts fail cleanly."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import tracemalloc
from pathlib import Path

import httpx
import structlog
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from receiver.app import TaskhookApp
from tests.conftest import SECRET, AppFactory, client_for, sample

HEADER_NAMES = st.sampled_from(["content-type", "refonte-callback-auth", "content-length",
                                "x-anything", "webhook-id", "authorization"])  # fmt: skip
HEADER_VALUES = st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=60)


def count(db: Path) -> int:
    with sqlite3.connect(db) as conn:
        return int(conn.execute("SELECT count(*) FROM deliveries").fetchone()[0])


@settings(max_examples=200, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])  # fmt: skip
@given(
    body=st.one_of(st.binary(max_size=2048), st.just(sample("01-completed.json"))),
    headers=st.dictionaries(HEADER_NAMES, HEADER_VALUES, max_size=4),
    signed=st.booleans(),
    path=st.sampled_from(["/callbacks/refonte", "/callbacks/nope", "/callbacks/",
                          "/callbacks/refonte/extra", "/v1/workstreams/x/task_completed"]),
)  # fmt: skip
def test_fuzzed_requests_never_get_a_5xx(
    build_app: AppFactory, body: bytes, headers: dict[str, str], signed: bool, path: str
) -> None:
    headers.pop("content-length", None)  # httpx sets the true one
    if signed:
        headers["refonte-callback-auth"] = SECRET

    async def run() -> int:
        app = build_app()
        async with app.started(), client_for(app) as client:
            return (await client.post(path, content=body, headers=headers)).status_code

    status = asyncio.run(run())
    assert status < 500, status


async def test_ten_thousand_bad_signatures_store_nothing_and_keep_memory_flat(
    app: TaskhookApp, db_path: Path
) -> None:
    # Log lines captured by pytest would count as growth: keep only warnings for this test.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    body = sample("01-completed.json")
    async with client_for(app) as client:

        async def burst(n: int) -> None:
            for i in range(n):
                headers = {"refonte-callback-auth": f"forged-{i}"}
                response = await client.post("/callbacks/refonte", content=body, headers=headers)
                assert response.status_code == 401

        await burst(1000)  # warm caches and lazily built structures
        tracemalloc.start()
        await burst(2000)
        before = tracemalloc.take_snapshot()
        await burst(10_000)
        after = tracemalloc.take_snapshot()
        tracemalloc.stop()
    # Count live blocks, not bytes: a one-off resize (an interning table, say) is not a leak,
    # while anything kept per request would add at least 10,000 blocks.
    kept = sum(stat.count_diff for stat in after.compare_to(before, "lineno"))
    assert count(db_path) == 0
    assert kept < 5_000, f"{kept} more live allocations after 10,000 rejected requests"


async def test_path_and_header_injection_fail_cleanly(client: httpx.AsyncClient) -> None:
    body = sample("01-completed.json")
    for path in (
        "/callbacks/..%2fv1%2fdeliveries",
        "/callbacks/refonte%0d%0aX-Evil:1",
        "/callbacks/%00",
        "/v1/deliveries/%27--",
    ):
        response = await client.post(path, content=body, headers={"refonte-callback-auth": SECRET})
        assert response.status_code in (401, 404, 405), (path, response.status_code)
    weird = {"refonte-callback-auth": SECRET + "\t", "content-type": "application/json;;;"}
    response = await client.post("/callbacks/refonte", content=body, headers=weird)
    assert response.status_code == 401
