"""Storage faults on both backends (SQLite: read-only, full, locked; PostgreSQL: read-only,
refusing connections, going away, losing connections mid-transaction) are answered 503 with
Retry-After on every route that needs the write, never 500 and never 200; /readyz says so with
a real write (at most one a second); and the receiver recovers by itself when storage does."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import threading
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx
import pytest
import structlog
from sqlalchemy import text

from receiver.app import TaskhookApp
from receiver.errors import StorageUnavailable
from receiver.storage import open_storage
from receiver.storage.postgres import PostgresStorage
from receiver.storage.probe import Probe
from tests.conftest import BACKENDS, AppFactory, client_for, ops, sample_json
from tests.pg import SERVER


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
LEDGER = ["handlers.ledger"]


async def assert_not_ready(client: httpx.AsyncClient, reason: str) -> None:
    """/readyz answers 503 (within the second its last answer is kept) for the fault named by
    `reason`: in the log, for the operator; never in the answer, for whoever asked."""
    with structlog.testing.capture_logs() as logs:
        for _ in range(30):  # within 3 s
            ready = await client.get("/readyz")
            seen = [e for e in logs if e["event"].startswith("not ready")]
            if ready.status_code == 503 and any(reason in e["error"] for e in seen):
                break
            await asyncio.sleep(0.1)
    assert ready.status_code == 503, ready.text
    assert ready.json() == {"status": "not ready", "reason": "storage cannot take a write"}
    assert any(reason in e["error"] for e in seen), seen
    assert ready.headers["retry-after"] == "5"


async def assert_ready(client: httpx.AsyncClient) -> None:
    for _ in range(30):  # within 3 s
        ready = await client.get("/readyz")
        if ready.status_code == 200:
            break
        await asyncio.sleep(0.1)
    assert (ready.status_code, ready.json()) == (200, {"status": "ready"})


async def assert_reads_answer(client: httpx.AsyncClient, *, available: bool) -> None:
    """The deliveries inbox and the ledger's task route answer as reads can (200; the task
    may not be in the ledger yet: 404), or 503 with Retry-After: never 500."""
    inbox = await client.get("/v1/deliveries", headers=ops())
    task = await client.get("/v1/task/fault-000", headers=ops())
    if available:
        assert (inbox.status_code, task.status_code in (200, 404)) == (200, True), task.text
        return
    assert (inbox.status_code, task.status_code) == (503, 503), (inbox.text, task.text)
    assert inbox.headers["retry-after"] == task.headers["retry-after"] == "5"
    assert inbox.json()["error"] == task.json()["error"] == "storage unavailable"


async def accepted_again(client: httpx.AsyncClient, payload: bytes) -> httpx.Response:
    """POST until the receiver takes it (as a sender retrying), within 5 s."""
    for _ in range(50):
        answer = await post(client, payload)
        if answer.status_code == 200:
            break
        assert answer.status_code == 503
        await asyncio.sleep(0.1)
    return answer


async def test_a_full_disk_is_503_and_writes_resume_when_space_returns(
    build_app: AppFactory,
) -> None:
    app = build_app(handlers=LEDGER, sources=OPEN)
    async with app.started(), client_for(app) as client:
        assert (await post(client, body(0))).status_code == 200
        await assert_ready(client)
        # SQLite's own "database or disk is full": no page may be added to the file.
        conn = app.storage._writer._conn  # type: ignore[attr-defined]
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        conn.execute(f"PRAGMA max_page_count = {pages}")
        full = [await post(client, body(n, pad=50_000)) for n in range(1, 11)]
        assert {r.status_code for r in full} == {503}
        assert full[0].headers["retry-after"] == "5"
        assert "storage unavailable" in full[0].json()["error"]
        await assert_not_ready(client, "database or disk is full")
        await assert_reads_answer(client, available=True)  # reads need no room

        conn.execute("PRAGMA max_page_count = 1073741823")  # space again, no restart
        retried = [await post(client, body(n, pad=50_000)) for n in range(1, 11)]
        assert [r.json()["status"] for r in retried] == ["accepted"] * 10
        await assert_ready(client)
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

    async def _refuse(self) -> None:
        await self._cut()
        self.server.close()
        await self.server.wait_closed()

    def refuse(self) -> None:
        """Stop listening: connections are refused (ECONNREFUSED), open ones dropped."""
        self._call(self._refuse())

    def listen(self) -> None:
        """Listen again, on the same port."""
        self.down = False
        self.server = self._call(asyncio.start_server(self._handle, "127.0.0.1", self.port))

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
            await assert_ready(client)  # (its last answer, "not ready", is kept a second)
            for _ in range(100):  # and the dispatcher carries on without a restart
                page = await app.storage.list_deliveries(limit=100)
                if {d.status.value for d in page.items} == {"processed"}:
                    break
                await asyncio.sleep(0.1)
    assert page.total == 6
    assert {d.status.value for d in page.items} == {"processed"}


# --- readiness ---------------------------------------------------------------------------


class Ticks:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def test_the_probe_writes_at_most_once_a_second_and_shares_its_answer() -> None:
    clock = Ticks()
    writes: list[float] = []
    failing = False

    async def write() -> None:
        writes.append(clock.now)
        await asyncio.sleep(0.01)  # callers arriving meanwhile wait for this one
        if failing:
            raise StorageUnavailable("database write failed: attempt to write a readonly database")

    probe = Probe(write, clock=clock)
    await asyncio.gather(*(probe() for _ in range(50)))
    clock.now = 0.99
    await probe()
    assert writes == [0.0]  # 51 answers, one write
    clock.now = 1.0
    failing = True
    with pytest.raises(StorageUnavailable, match="readonly"):
        await probe()
    failing = False
    clock.now = 1.5
    with pytest.raises(StorageUnavailable, match="readonly"):  # the failure is kept too
        await probe()
    clock.now = 2.0
    await probe()  # and storage that recovered is ready again, without a restart
    assert writes == [0.0, 1.0, 2.0]
    probe.forget()
    await probe()
    assert writes == [0.0, 1.0, 2.0, 2.0]


async def test_a_probe_that_does_not_commit_in_time_is_not_ready() -> None:
    stuck = asyncio.Event()

    async def write() -> None:
        await stuck.wait()  # a lock held elsewhere, no connection free: never set here

    with pytest.raises(StorageUnavailable, match=r"probe write took over 0\.05 s"):
        await Probe(write, deadline=0.05)()


@pytest.mark.parametrize("backend", BACKENDS)
async def test_readyz_is_a_real_write(build_app: AppFactory) -> None:
    app = build_app(sources=OPEN)
    async with app.started(), client_for(app) as client:
        before = await app.storage.query(text("SELECT probed_at FROM taskhook_probe"))
        ready = await client.get("/readyz")
        after = await app.storage.query(text("SELECT probed_at FROM taskhook_probe"))
    assert (ready.status_code, ready.json()) == (200, {"status": "ready"})
    assert [tuple(r) for r in before] == [(0.0,)]
    assert after[0][0] > 0  # the probe's row was written and committed


@pytest.mark.parametrize("backend", BACKENDS)
async def test_the_installation_key_is_one_per_database(db_url: str, tmp_path: Path) -> None:
    """Replicas starting at once all end with the same random key; another database has
    its own."""
    storages = [open_storage(db_url) for _ in range(3)]
    for storage in storages:
        await storage.open()
    try:
        keys = await asyncio.gather(*(s.installation_key() for s in storages))
        again = await storages[0].installation_key()
    finally:
        for storage in storages:
            await storage.close()
    reopened = open_storage(db_url)
    await reopened.open()
    try:
        later = await reopened.installation_key()
    finally:
        await reopened.close()
    other = open_storage(f"sqlite:///{tmp_path / 'other.db'}")
    await other.open()
    try:
        elsewhere = await other.installation_key()
    finally:
        await other.close()
    assert len(keys[0]) == 32 and set(keys) == {keys[0]} == {again, later}
    assert elsewhere != keys[0] and len(elsewhere) == 32


# --- SQLite ----------------------------------------------------------------------------------


def writer_of(app: TaskhookApp) -> sqlite3.Connection:
    conn: sqlite3.Connection = app.storage._writer._conn  # type: ignore[attr-defined]
    return conn


async def test_a_read_only_sqlite_database_is_503_until_it_is_writable(
    build_app: AppFactory,
) -> None:
    app = build_app(handlers=LEDGER, sources=OPEN)
    async with app.started(), client_for(app) as client:
        assert (await post(client, body(0))).status_code == 200
        # What SQLite says of a read-only file or a read-only mount: SQLITE_READONLY.
        writer_of(app).execute("PRAGMA query_only = ON")
        refused = [await post(client, body(n)) for n in range(1, 4)]
        assert {(r.status_code, r.headers["retry-after"]) for r in refused} == {(503, "5")}
        await assert_not_ready(client, "readonly database")
        await assert_reads_answer(client, available=True)

        writer_of(app).execute("PRAGMA query_only = OFF")
        assert [(await post(client, body(n))).json()["status"] for n in range(1, 4)] == [
            "accepted"
        ] * 3
        await assert_ready(client)
        page = await app.storage.list_deliveries(limit=100)
    assert page.total == 4  # nothing refused was stored, nothing acked was lost


def rewrite(n: int) -> Callable[[Any], Awaitable[None]]:
    async def op(tx: Any) -> None:
        await tx.execute(text("UPDATE taskhook_probe SET probed_at = :n"), {"n": n})

    return op


async def test_a_failing_probe_sinks_no_neighbour(build_app: AppFactory) -> None:
    """The probe asks for more room than a small write needs; on a full file it fails alone,
    never taking down the writes group-committed beside it."""
    app = build_app(sources=OPEN)
    async with app.started():
        conn = writer_of(app)
        conn.execute(f"PRAGMA max_page_count = {conn.execute('PRAGMA page_count').fetchone()[0]}")
        try:
            # Rewriting a row in place needs no new page: these fit in a full file.
            small = [app.storage.transaction(rewrite(n)) for n in range(5)]
            outcomes = await asyncio.gather(app.storage.probe(), *small, return_exceptions=True)
        finally:
            conn.execute("PRAGMA max_page_count = 1073741823")
    assert isinstance(outcomes[0], StorageUnavailable) and "full" in str(outcomes[0])
    assert not any(isinstance(o, BaseException) for o in outcomes[1:]), outcomes


async def test_a_database_locked_beyond_the_timeout_is_not_ready(
    build_app: AppFactory, db_path: Path
) -> None:
    app = build_app(sources=OPEN)
    async with app.started(), client_for(app) as client:
        app.storage._writer.lock_timeout = 0.2  # type: ignore[attr-defined]
        blocker = sqlite3.connect(db_path, timeout=0)
        blocker.execute("BEGIN EXCLUSIVE")  # another process holds the write lock
        try:
            await assert_not_ready(client, "database is locked")
            refused = await post(client, body(1))
        finally:
            blocker.rollback()
            blocker.close()
        assert (refused.status_code, refused.headers["retry-after"]) == (503, "5")
        await assert_ready(client)
        assert (await post(client, body(1))).json()["status"] == "accepted"


# --- PostgreSQL --------------------------------------------------------------------------------


async def admin(sql: str, *args: Any) -> None:
    """On the maintenance database: a read-only setting of the test's own cannot stop it."""
    conn = await asyncpg.connect(f"{SERVER}/postgres")
    try:
        await conn.execute(sql, *args)
    finally:
        await conn.close()


def name_of(url: str) -> str:
    return urlsplit(url).path.lstrip("/")


async def drop_sessions(url: str) -> None:
    """End every session on the database (its new sessions read its settings again)."""
    await admin(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        "WHERE datname = $1 AND pid <> pg_backend_pid()",
        name_of(url),
    )


async def test_a_read_only_postgres_is_503_until_it_takes_writes_again(
    build_app: AppFactory, pg_url: str
) -> None:
    app = build_app(database={"url": pg_url}, handlers=LEDGER, sources=OPEN)
    async with app.started(), client_for(app) as client:
        assert (await post(client, body(0))).status_code == 200
        # As a replica, or a primary set read-only: every new session refuses writes.
        await admin(f'ALTER DATABASE "{name_of(pg_url)}" SET default_transaction_read_only = on')
        await drop_sessions(pg_url)
        refused = [await post(client, body(n)) for n in range(1, 6)]
        assert {(r.status_code, r.headers["retry-after"]) for r in refused} == {(503, "5")}
        await assert_not_ready(client, "ReadOnlySQLTransactionError")
        await assert_reads_answer(client, available=True)  # a read-only server still reads

        await admin(f'ALTER DATABASE "{name_of(pg_url)}" RESET default_transaction_read_only')
        await drop_sessions(pg_url)
        answers = [(await accepted_again(client, body(n))).json()["status"] for n in range(1, 6)]
        assert answers == ["accepted"] * 5
        await assert_ready(client)
        page = await app.storage.list_deliveries(limit=100)
    assert page.total == 6


async def test_postgres_refusing_connections_is_503_on_every_route(
    build_app: AppFactory, pg_url: str
) -> None:
    with proxied(pg_url) as (url, proxy):
        app = build_app(database={"url": url}, handlers=LEDGER, sources=OPEN)
        async with app.started(), client_for(app) as client:
            assert (await post(client, body(0))).status_code == 200
            proxy.refuse()  # nothing listens where the database was
            refused = [await post(client, body(n)) for n in range(1, 4)]
            assert {(r.status_code, r.headers["retry-after"]) for r in refused} == {(503, "5")}
            await assert_reads_answer(client, available=False)
            await assert_not_ready(client, "unavailable")

            proxy.listen()
            answers = [(await accepted_again(client, body(n))).json()["status"] for n in (1, 2)]
            assert answers == ["accepted"] * 2
            await assert_reads_answer(client, available=True)
            await assert_ready(client)


async def test_connections_lost_mid_transaction_are_503_then_work_resumes(
    build_app: AppFactory, pg_url: str
) -> None:
    app = build_app(database={"url": pg_url}, handlers=LEDGER, sources=OPEN)
    async with app.started(), client_for(app) as client:
        assert (await post(client, body(0))).status_code == 200
        locker = await asyncpg.connect(pg_url)
        # pg_stat_activity is read once per transaction: watch from outside the locker's.
        watcher = await asyncpg.connect(pg_url)
        try:
            held = locker.transaction()
            await held.start()
            # Every request below waits inside its statement (a retry, inside its
            # transaction) for these locks, until its session is terminated.
            await locker.execute("LOCK TABLE deliveries, ledger_tasks IN ACCESS EXCLUSIVE MODE")
            caught = [
                asyncio.create_task(post(client, body(1))),
                asyncio.create_task(client.get("/v1/deliveries", headers=ops())),
                asyncio.create_task(client.get("/v1/task/fault-000", headers=ops())),
                asyncio.create_task(client.post("/v1/deliveries/dlv_x/retry", headers=ops())),
            ]
            waiting = (
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE datname = $1 AND wait_event_type = 'Lock'"
            )
            for _ in range(100):  # within 5 s
                if await watcher.fetchval(waiting, name_of(pg_url)) >= len(caught):
                    break
                await asyncio.sleep(0.05)
            await admin(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = $1 AND wait_event_type = 'Lock'",
                name_of(pg_url),
            )
            answers = await asyncio.gather(*caught)
            await held.rollback()
        finally:
            await locker.close()
            await watcher.close()
        assert [(r.status_code, r.headers.get("retry-after")) for r in answers] == [
            (503, "5")
        ] * len(caught)
        assert (await accepted_again(client, body(1))).json()["status"] == "accepted"
        await assert_reads_answer(client, available=True)
        await assert_ready(client)


@pytest.mark.parametrize(
    "error",
    [
        asyncpg.ReadOnlySQLTransactionError, asyncpg.DiskFullError,
        asyncpg.TooManyConnectionsError, asyncpg.CannotConnectNowError,
        asyncpg.AdminShutdownError, asyncpg.ConnectionDoesNotExistError,
        asyncpg.DeadlockDetectedError, asyncpg.SerializationError, asyncpg.PostgresSystemError,
        ConnectionRefusedError,
    ],
)  # fmt: skip
async def test_each_kind_of_postgres_outage_is_storage_unavailable(
    pg_url: str, error: type[Exception]
) -> None:
    """What a full disk, a failover or an overloaded server raise, on the pool and in
    plugins' transactions, is `StorageUnavailable` (503), not the driver's own (500)."""
    storage = PostgresStorage(pg_url)
    await storage.open()

    async def plugin_op(tx: Any) -> None:
        raise error("what the server said")

    try:
        with pytest.raises(StorageUnavailable):
            async with storage._conn():
                raise error("what the server said")
        with pytest.raises(StorageUnavailable):
            await storage.transaction(plugin_op)
        with pytest.raises(asyncpg.PostgresSyntaxError):  # a bug stays a bug
            await storage.query(text("SELEC 1"))
    finally:
        await storage.close()


async def test_a_postgres_that_refuses_at_start_is_storage_unavailable() -> None:
    with socket_closed() as port:
        storage = open_storage(f"postgresql://postgres@127.0.0.1:{port}/none")
        with pytest.raises(StorageUnavailable, match="cannot connect"):
            await storage.open()
        with pytest.raises(StorageUnavailable):
            await storage.probe()


@contextmanager
def socket_closed() -> Iterator[int]:
    """A port on 127.0.0.1 that nothing listens on."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    yield port
