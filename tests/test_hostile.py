"""Hostile input: fuzzed requests never get a 5xx, bad signatures store nothing and keep
memory flat, injection attempts fail cleanly."""

from __future__ import annotations

import asyncio
import logging
import socket
import sqlite3
import time
import tracemalloc
from pathlib import Path
from typing import Any

import httpx
import structlog
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from receiver.app import TaskhookApp
from tests.conftest import SECRET, AppFactory, client_for, sample
from tests.test_cli import clean_env, serving

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
                # In process nothing here waits on a socket, so without this the whole burst
                # would run in one step of the event loop, which never gets to prune its
                # cancelled timers (each request's body deadline) as a served loop does.
                await asyncio.sleep(0)

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


async def test_a_stalled_body_times_out_with_408_and_stores_nothing(
    build_app: AppFactory,
) -> None:
    app = build_app(http={"body_timeout_seconds": 0.2})
    sent: list[dict[str, Any]] = []
    stall = asyncio.Event()
    chunks = [{"type": "http.request", "body": b'{"task_id": "sl', "more_body": True}]

    async def receive() -> dict[str, Any]:
        if chunks:
            return chunks.pop(0)
        await stall.wait()  # the client never sends the rest
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http", "method": "POST", "path": "/callbacks/refonte", "query_string": b"",
        "headers": [(b"content-type", b"application/json"), (b"content-length", b"900"),
                    (b"refonte-callback-auth", SECRET.encode())],
    }  # fmt: skip
    async with app.started():
        await asyncio.wait_for(app(scope, receive, send), timeout=5)
        page = await app.storage.list_deliveries()
    assert sent[0]["status"] == 408
    assert (b"connection", b"close") in sent[0]["headers"]
    assert b"not received within 0.2 s" in sent[1]["body"]
    assert page.total == 0


def test_a_slowloris_client_is_cut_off_by_the_real_server(tmp_path: Path) -> None:
    config = tmp_path / "taskhook.toml"
    config.write_text(
        f'entry_points = false\n[database]\nurl = "sqlite:///{tmp_path / "t.db"}"\n'
        '[sources.refonte]\nkind = "refonte"\nverify = "none"\n'
        "[http]\nbody_timeout_seconds = 0.5\n"
    )
    with serving(tmp_path, "--config", str(config), env=clean_env()) as (base, _):
        port = int(base.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(
                b"POST /callbacks/refonte HTTP/1.1\r\nhost: x\r\n"
                b'content-type: application/json\r\ncontent-length: 500\r\n\r\n{"task'
            )
            started = time.monotonic()
            answer = b""
            while chunk := sock.recv(4096):  # the server answers, then closes
                answer += chunk
            waited = time.monotonic() - started
        # Healthy senders are served meanwhile and after.
        ok = httpx.post(f"{base}/callbacks/refonte", content=b"{}", timeout=5)
    assert answer.startswith(b"HTTP/1.1 408")
    assert 0.4 < waited < 5
    assert ok.status_code == 400  # reached the intake (an empty body is not a callback)
