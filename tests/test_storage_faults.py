"""Storage faults: a full disk (SQLite) and a database that goes away (PostgreSQL) are
answered 503, never 200, and the receiver recovers by itself when storage returns."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx

from tests.conftest import AppFactory, client_for, sample_json


def body(n: int, pad: int = 0) -> bytes:
    snapshot = sample_json("01-completed.json")
    snapshot["task_id"] = snapshot["task"]["task_id"] = f"fault-{n:03d}"
    snapshot["task"]["metadata"] = {"padding": "x" * pad}
    return json.dumps(snapshot).encode()


async def post(client: httpx.AsyncClient, payload: bytes) -> httpx.Response:
    return await client.post(
        "/callbacks/refonte", content=payload, headers={"content-type": "application/json"}
    )


OPEN = {"refonte": {"kind": "refonte", "verify": "none"}}


async def test_a_full_disk_is_503_and_writes_resume_when_space_returns(
    build_app: AppFactory,
) -> None:
    app = build_app(handlers=["handlers.ledger"], sources=OPEN)
    async with app.started(), client_for(app) as client:
        assert (await post(client, body(0))).status_code == 200
        # SQLite's own "database or disk is full": no page may be added to the file.
        conn = app.storage._writer._conn  # type: ignore[attr-defined]
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        conn.execute(f"PRAGMA max_page_count = {pages}")
        full = [await post(client, body(n, pad=50_000)) for n in range(1, 11)]
        assert {r.status_code for r in full} == {503}
        assert full[0].headers["retry-after"] == "5"
        assert "storage unavailable" in full[0].json()["error"]

        conn.execute("PRAGMA max_page_count = 1073741823")  # space again, no restart
        retried = [await post(client, body(n, pad=50_000)) for n in range(1, 11)]
        assert [r.json()["status"] for r in retried] == ["accepted"] * 10
        await app.dispatcher.drain()
        page = await app.storage.list_deliveries(limit=100)
    assert page.total == 11  # nothing refused was stored, nothing acked was lost
    assert {d.status.value for d in page.items} == {"processed"}


class Proxy:
    """A TCP proxy to PostgreSQL that the test can cut (the database "goes down": open
    connections drop and new ones are refused) and restore. Runs its own loop in a thread."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.down = False
        self.writers: set[asyncio.StreamWriter] = set()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server = self._call(asyncio.start_server(self._handle, "127.0.0.1", 0))
        self.port: int = self.server.sockets[0].getsockname()[1]

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(10)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.down:
            writer.transport.abort()
            return
        up_reader, up_writer = await asyncio.open_connection(*self.target)
        self.writers |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError, OSError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.transport.abort()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    async def _cut(self) -> None:
        self.down = True
        for writer in list(self.writers):
            writer.transport.abort()
        self.writers.clear()

    def cut(self) -> None:
        self._call(self._cut())

    def restore(self) -> None:
        self.down = False

    async def _close(self) -> None:
        await self._cut()
        self.server.close()
        await self.server.wait_closed()
        others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)

    def close(self) -> None:
        self._call(self._close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@contextmanager
def proxied(url: str) -> Iterator[tuple[str, Proxy]]:
    parts = urlsplit(url)
    proxy = Proxy(parts.hostname or "127.0.0.1", parts.port or 5432)
    user = f"{parts.username}@" if parts.username else ""
    try:
        yield urlunsplit(parts._replace(netloc=f"{user}127.0.0.1:{proxy.port}")), proxy
    finally:
        proxy.close()


async def test_postgres_going_away_is_503_and_the_receiver_recovers_by_itself(
    build_app: AppFactory, pg_url: str
) -> None:
    with proxied(pg_url) as (url, proxy):
        app = build_app(
            database={"url": url}, handlers=["handlers.ledger"], sources=OPEN,
            # A delivery caught mid-dispatch by the outage is attempted again as soon as
            # storage answers, not when its (long) lease expires.
            dispatch={"enabled": True, "poll_interval_seconds": 0.05, "lease_seconds": 600},
        )  # fmt: skip
        async with app.started(), client_for(app) as client:
            assert (await post(client, body(0))).status_code == 200
            proxy.cut()
            await asyncio.sleep(0.1)
            down = [await post(client, body(n)) for n in range(1, 6)]
            ready = await client.get("/readyz")
            assert {r.status_code for r in down} == {503}
            assert ready.status_code == 503

            proxy.restore()
            up: list[Any] = []
            for n in range(1, 6):  # the sender retries: the pool reconnects on its own
                for _ in range(50):
                    answer = await post(client, body(n))
                    if answer.status_code == 200:
                        break
                    await asyncio.sleep(0.1)
                up.append(answer.json()["status"])
            assert up == ["accepted"] * 5
            assert (await client.get("/readyz")).status_code == 200
            for _ in range(100):  # and the dispatcher carries on without a restart
                page = await app.storage.list_deliveries(limit=100)
                if {d.status.value for d in page.items} == {"processed"}:
                    break
                await asyncio.sleep(0.1)
    assert page.total == 6
    assert {d.status.value for d in page.items} == {"processed"}
