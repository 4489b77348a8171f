"""PostgreSQL storage (asyncpg): one database shared by several receiver replicas.

Dedup is the partial unique index, so it holds across replicas. Workers claim with
``FOR UPDATE SKIP LOCKED`` and a lease, and a delivery is claimable only while no earlier
pending delivery of its task exists, so each (delivery, handler) runs once and per-task order
holds across replicas; a replica that dies mid-claim has its work taken over when the lease
expires. Every commit is durable (``synchronous_commit`` as the server sets it, on by default)
before the caller acks.

Plugins' state ops (`transact`) are written once, as synchronous functions over a DB-API-like
connection in the SQLite dialect. Here they run on one worker thread over `BridgeConnection`,
which translates each statement (`dialect`) and runs it to completion with asyncpg on that
thread's own event loop: no hop through the app's loop per statement. Those transactions are
serialized (one thread per process, then across replicas by an advisory lock) because the
ledger's rules read and write rows of other tasks (a unique_id handed over) and must see the
world as a single writer would: this is what makes a three-replica ledger equal to a
one-replica ledger.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar, cast

import asyncpg
import orjson

from receiver.errors import StorageBusy, StorageUnavailable, contain
from receiver.records import (
    DeliveryOutcome,
    DeliveryPage,
    DeliveryRecord,
    DeliveryStatus,
    HandlerRun,
    NewDelivery,
    Owner,
    StoredEvent,
    StoreResult,
)
from receiver.storage import queue
from receiver.storage.base import CommitObserver
from receiver.storage.dialect import to_postgres
from receiver.storage.postgres_schema import migrate
from receiver.storage.rows import (
    COLUMNS,
    INSERT_COLUMNS,
    INSERT_EVENTS,
    LINK_EVENTS,
    LOAD_EVENTS,
    MARK_DERIVED,
    UPSERT_RUNS,
    event_rows,
    insert_params,
    list_queries,
    page_of,
    row_to_record,
    run_rows,
    scan_query,
)

T = TypeVar("T")
PLUGIN_LOCK = 0x7461736B6C6467  # "taskldg"
# Plan each execution with its parameters and the table as it is now. asyncpg prepares and
# caches statements per connection, and PostgreSQL then settles on a generic plan made
# from the statistics of the moment: a claim prepared while `deliveries` was empty kept a
# plan that took seconds once the table held thousands of rows (measured).
SESSION = {"plan_cache_mode": "force_custom_plan"}

# What "the database is not there" looks like: connection refused or lost, the server
# shutting down or out of room. Anything else is a bug and stays loud.
UNAVAILABLE: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.InsufficientResourcesError,
    asyncpg.OperatorInterventionError,
)

_COUNT = INSERT_COLUMNS.count(",") + 1
_PLACEHOLDERS = ",".join(f"${i}" for i in range(1, _COUNT + 1))
# One statement, autocommitted: the delivery and, when it is pending, its place in the queue
# (`queue.ENQUEUE`, whose conflict arm locks the lane's head row).
_INSERT = f"""
    WITH ins AS (
        INSERT INTO deliveries ({INSERT_COLUMNS}) VALUES ({_PLACEHOLDERS})
        ON CONFLICT (source, dedup_key) WHERE duplicate_of IS NULL DO NOTHING
        RETURNING seq, source, status, next_attempt_at
    ), head AS (
        INSERT INTO dispatch_heads (source, lane, seq, next_attempt_at)
        SELECT source, ${_COUNT + 1}, seq, next_attempt_at FROM ins WHERE status = 'received'
        ON CONFLICT (source, lane) DO UPDATE SET seq = dispatch_heads.seq WHERE false
    )
    SELECT seq FROM ins
"""
_INSERT_DUPLICATE = f"INSERT INTO deliveries ({INSERT_COLUMNS}) VALUES ({_PLACEHOLDERS})"
_CLAIM = f"""
    WITH ready AS (
        SELECT h.seq FROM dispatch_heads AS h
        WHERE h.next_attempt_at <= $1
          AND (h.lease_owner IS NULL OR (h.lease_expires_at <= $1 AND h.lease_owner <> $3))
        ORDER BY h.next_attempt_at, h.seq
        LIMIT $2
        FOR UPDATE SKIP LOCKED
    ), leased AS (
        UPDATE dispatch_heads AS h SET lease_owner = $3, lease_expires_at = $4
        FROM ready WHERE h.seq = ready.seq
        RETURNING h.seq
    )
    SELECT {COLUMNS} FROM deliveries WHERE seq IN (SELECT seq FROM leased) ORDER BY seq
"""
_FINISH = to_postgres(queue.FINISH).sql
_REQUEUE = """
    UPDATE deliveries SET status = 'received', next_attempt_at = $1, attempts = 0,
           lease_owner = NULL, lease_expires_at = NULL, events_derived =
           CASE WHEN status = 'quarantined' THEN 0 ELSE events_derived END,
           updated_at = $1
    WHERE id = $2 AND status IN ('failed', 'dead', 'quarantined')
    RETURNING seq, source, COALESCE(task_id, id)
"""


class _Queue:
    """`queue`'s statements as PostgreSQL runs them."""

    retry_later = to_postgres(queue.RETRY_LATER).sql
    dequeue = to_postgres(queue.DEQUEUE).sql
    promote = to_postgres(queue.PROMOTE).sql
    requeue = to_postgres(queue.REQUEUE).sql
    beat = to_postgres(queue.BEAT).sql
    renew = to_postgres(queue.RENEW).sql
    owners = to_postgres(queue.OWNERS).sql
    release = to_postgres(queue.RELEASE).sql
    retire = to_postgres(queue.RETIRE).sql


_SQL = _Queue


class _Result:
    """What `BridgeConnection.execute` returns: the parts of a DB-API cursor plugins use."""

    def __init__(self, rows: list[Any], rowcount: int) -> None:
        self._rows = rows
        self.rowcount = rowcount

    def fetchone(self) -> Any:
        return self._rows[0] if self._rows else None

    def fetchall(self) -> list[Any]:
        return self._rows


class BridgeConnection:
    """A synchronous asyncpg connection: owned by one thread, which runs each statement to
    completion on that thread's own event loop (never the app's loop, which is busy serving
    requests)."""

    def __init__(self, url: str, timeout: float) -> None:
        self._url = url
        self._timeout = timeout
        self._loop = asyncio.new_event_loop()
        self._conn: Any = None

    def _run(self, coro: Any) -> Any:
        return self._loop.run_until_complete(coro)

    def connect(self) -> None:
        if self._conn is None or self._conn.is_closed():
            self._conn = self._run(
                asyncpg.connect(
                    self._url,
                    timeout=self._timeout,
                    command_timeout=self._timeout,
                    server_settings=SESSION,
                )
            )

    def reset(self) -> None:
        """Forget a connection that failed; the next transaction connects again."""
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.terminate()  # it failed: no goodbye over a connection that may be dead

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                self._run(asyncio.wait_for(conn.close(), 2.0))
            except (*UNAVAILABLE, asyncpg.PostgresError):
                conn.terminate()
        self._loop.close()

    def transaction(self, ops: Sequence[Callable[[sqlite3.Connection], Any]]) -> list[Any]:
        """Run `ops` in one transaction under the plugin lock; their results, in order.

        Any op's exception rolls the whole transaction back and is raised.
        """
        self.connect()
        tx = self._conn.transaction()
        self._run(tx.start())
        try:
            self._run(self._conn.execute("SELECT pg_advisory_xact_lock($1)", PLUGIN_LOCK))
            results = [op(cast(sqlite3.Connection, self)) for op in ops]
        except BaseException:
            with contextlib.suppress(*UNAVAILABLE):
                self._run(tx.rollback())
            raise
        self._run(tx.commit())
        return results

    def execute(self, sql: str, params: Sequence[Any] | Mapping[str, Any] = ()) -> _Result:
        t = to_postgres(sql)
        args = t.args(params)
        if t.returns_rows:
            rows = self._run(self._conn.fetch(t.sql, *args))
            return _Result(list(rows), len(rows))
        status: str = self._run(self._conn.execute(t.sql, *args))
        tail = status.rsplit(" ", 1)[-1]
        return _Result([], int(tail) if tail.isdigit() else -1)

    def executemany(self, sql: str, seq: Sequence[Sequence[Any] | Mapping[str, Any]]) -> None:
        if not seq:
            return
        t = to_postgres(sql)
        self._run(self._conn.executemany(t.sql, [t.args(p) for p in seq]))


class PostgresStorage:
    """`Storage` over a PostgreSQL database (``postgresql://user@host:port/db``)."""

    ordered_stores = False  # pooled connections commit in whatever order they finish

    def __init__(
        self,
        url: str,
        *,
        on_commit: CommitObserver | None = None,
        pool_size: int = 10,
        timeout: float = 10.0,
        max_queue: int = 10_000,
    ) -> None:
        self.url = url
        self._max_queue = max_queue
        self._storing = 0  # deliveries waiting for a connection or their commit
        self._on_commit = on_commit
        self._pool_size = pool_size
        self._timeout = timeout
        self._pool: asyncpg.Pool | None = None
        # Plugins' transactions: one thread, one connection, group-committed (module docstring).
        self._plugin_thread = ThreadPoolExecutor(1, thread_name_prefix="taskhook-pg-plugins")
        self._bridge: BridgeConnection | None = None
        self._queued: list[tuple[Callable[[sqlite3.Connection], Any], asyncio.Future[Any]]] = []
        self._queue_lock = threading.Lock()
        self._flushing = False

    @contextlib.asynccontextmanager
    async def _conn(self) -> AsyncIterator[Any]:
        if self._pool is None:
            raise StorageUnavailable("storage is not open")
        try:
            async with self._pool.acquire(timeout=self._timeout) as conn:
                yield conn
        except UNAVAILABLE as exc:
            raise StorageUnavailable(f"PostgreSQL unavailable: {exc!r}") from exc

    async def open(self) -> None:
        if self._pool is not None:  # already open: only make sure the schema is current
            async with self._conn() as conn:
                await migrate(conn)
            return
        try:
            self._pool = await asyncpg.create_pool(
                self.url,
                min_size=1,
                max_size=self._pool_size,
                command_timeout=self._timeout,
                timeout=self._timeout,
                server_settings=SESSION,
                # asyncpg resets a connection on every release (a round trip); nothing here
                # leaves session state behind (locks are transaction-scoped).
                reset=_no_reset,
            )
        except UNAVAILABLE as exc:
            raise StorageUnavailable(f"cannot connect to PostgreSQL: {exc!r}") from exc
        async with self._conn() as conn:
            await migrate(conn)

    async def close(self) -> None:
        if self._bridge is not None:
            bridge, self._bridge = self._bridge, None
            await asyncio.get_running_loop().run_in_executor(self._plugin_thread, bridge.close)
        if self._pool is not None:
            pool, self._pool = self._pool, None
            try:
                await asyncio.wait_for(pool.close(), self._timeout)
            except UNAVAILABLE:
                pool.terminate()  # the server is gone: drop the sockets without a goodbye

    async def ping(self) -> None:
        async with self._conn() as conn:
            await conn.fetchval("SELECT 1")

    async def query(self, sql: str, params: Sequence[Any] | Mapping[str, Any] = ()) -> list[Any]:
        t = to_postgres(sql)
        async with self._conn() as conn:
            return list(await conn.fetch(t.sql, *t.args(params)))

    async def transact(self, op: Callable[[sqlite3.Connection], T]) -> T:
        """Run a plugin's synchronous op in a serialized transaction (module docstring).

        Ops queued while a transaction runs share the next one: one lock hand-over and one
        commit for the batch. If any op of a batch raises, the batch rolls back and its ops
        run again one transaction each, so one op's failure is only its own.
        """
        if self._pool is None:
            raise StorageUnavailable("storage is not open")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        with self._queue_lock:
            self._queued.append((op, future))
            start = not self._flushing
            self._flushing = True
        if start:
            loop.run_in_executor(self._plugin_thread, self._flush, loop)
        return await future

    def _flush(self, loop: asyncio.AbstractEventLoop) -> None:
        while True:
            with self._queue_lock:
                batch, self._queued = self._queued[:64], self._queued[64:]
                if not batch:
                    self._flushing = False
                    return
            try:
                outcomes = self._run_batch(batch)
            except BaseException as exc:  # never leave a caller waiting on a dead batch
                outcomes = [StorageUnavailable(f"plugin transaction failed: {exc!r}")] * len(batch)
            for (_, future), outcome in zip(batch, outcomes, strict=True):
                loop.call_soon_threadsafe(_settle, future, outcome)

    def _run_batch(self, batch: Sequence[tuple[Callable[..., Any], Any]]) -> list[Any]:
        """Each op's result, or the exception it ends with."""
        if self._bridge is None:
            self._bridge = BridgeConnection(self.url, self._timeout)
        ops = [op for op, _ in batch]
        try:
            return self._bridge.transaction(ops)
        except UNAVAILABLE as exc:
            self._bridge.reset()
            failure = StorageUnavailable(f"PostgreSQL unavailable: {exc!r}")
            failure.__cause__ = exc
            return [failure] * len(ops)
        except BaseException as exc:  # a plugin op's own error, SystemExit & co. included
            if len(ops) == 1:
                return [contain(exc)]
        return [self._run_batch([item])[0] for item in batch]

    async def store_delivery(self, delivery: NewDelivery) -> StoreResult:
        if self._storing >= self._max_queue:
            raise StorageBusy(f"{self._storing} deliveries waiting to be stored; retry shortly")
        self._storing += 1
        try:
            return await self._store(delivery)
        finally:
            self._storing -= 1

    async def _store(self, delivery: NewDelivery) -> StoreResult:
        started = time.perf_counter()
        headers = orjson.dumps(delivery.headers).decode()
        lane = delivery.task_id if delivery.task_id is not None else delivery.id
        # One statement, autocommitted: the ack waits for one round trip and one commit.
        async with self._conn() as conn:
            seq = await conn.fetchval(_INSERT, *insert_params(delivery, headers), lane)
            if seq is not None:
                result = StoreResult(
                    delivery.id, duplicate=False, status=delivery.status, error=delivery.error
                )
            else:
                # The original is committed (the unique index waited for it); the duplicate
                # receipt is recorded beside it.
                first = await conn.fetchrow(
                    "SELECT id, status, last_error FROM deliveries "
                    "WHERE source = $1 AND dedup_key = $2 AND duplicate_of IS NULL",
                    delivery.source,
                    delivery.dedup_key,
                )
                await conn.execute(
                    _INSERT_DUPLICATE, *insert_params(delivery, headers, duplicate_of=first[0])
                )
                result = StoreResult(
                    first[0], duplicate=True, status=DeliveryStatus(first[1]), error=first[2]
                )
        if self._on_commit is not None:
            self._on_commit(1, time.perf_counter() - started)
        return result

    async def claim_ready(
        self, *, owner: str, limit: int, now: float, lease_seconds: float
    ) -> list[DeliveryRecord]:
        async with self._conn() as conn:
            rows = await conn.fetch(_CLAIM, now, limit, owner, now + lease_seconds)
        return sorted((row_to_record(r) for r in rows), key=lambda d: d.seq)

    async def save_events(self, delivery_id: str, events: Sequence[StoredEvent]) -> None:
        async with self._conn() as conn, conn.transaction():
            await _save_events(conn, delivery_id, events)

    async def load_events(self, delivery_id: str) -> list[StoredEvent]:
        async with self._conn() as conn:
            rows = await conn.fetch(to_postgres(LOAD_EVENTS).sql, delivery_id)
        return [StoredEvent(*row) for row in rows]

    async def succeeded_runs(self, event_ids: Sequence[str]) -> set[tuple[str, str]]:
        if not event_ids:
            return set()
        async with self._conn() as conn:
            rows = await conn.fetch(
                "SELECT event_id, handler FROM handler_runs "
                "WHERE status = 'ok' AND event_id = ANY($1::text[])",
                list(event_ids),
            )
        return {(row[0], row[1]) for row in rows}

    async def finish(self, outcome: DeliveryOutcome, *, owner: str) -> bool:
        now = time.time()
        status = outcome.status.value
        async with self._conn() as conn, conn.transaction():
            await _record_runs(conn, outcome.runs)
            row = await conn.fetchrow(
                _FINISH, status, outcome.attempts, outcome.next_attempt_at, outcome.error,
                outcome.traceback, status, now, now, outcome.delivery_id, owner,
            )  # fmt: skip
            if row is None:
                return False
            seq, source, task_id = row
            # The lane moves on as in `queue.finish_in` (SQLite's, over the same statements).
            if task_id is None and status in ("received", "failed"):
                await conn.execute(_SQL.retry_later, outcome.next_attempt_at, seq)
            else:
                await conn.execute(_SQL.dequeue, seq)
                if task_id is not None:
                    await conn.execute(_SQL.promote, source, task_id)
        return True

    async def record_runs(self, runs: Sequence[HandlerRun]) -> None:
        async with self._conn() as conn, conn.transaction():
            await _record_runs(conn, runs)

    async def release_claims(self, owner: str, ids: Sequence[str] | None = None) -> None:
        async with self._conn() as conn:
            await conn.execute(
                "UPDATE dispatch_heads SET lease_owner = NULL, lease_expires_at = NULL "
                "WHERE lease_owner = $1 AND ($2::text[] IS NULL OR seq IN "
                "(SELECT seq FROM deliveries WHERE id = ANY($2::text[])))",
                owner,
                None if ids is None else list(ids),
            )

    async def heartbeat(
        self, owner: str, *, host: str, pid: int, now: float, lease_seconds: float
    ) -> set[int]:
        async with self._conn() as conn, conn.transaction():
            await conn.execute(_SQL.beat, owner, host, pid, now, now)
            rows = await conn.fetch(_SQL.renew, now + lease_seconds, owner)
        return {row[0] for row in rows}

    async def owners(self) -> list[Owner]:
        async with self._conn() as conn:
            rows = await conn.fetch(_SQL.owners)
        return [Owner(*row) for row in rows]

    async def release_owners(self, owners: Sequence[str]) -> int:
        released = 0
        async with self._conn() as conn, conn.transaction():
            for owner in owners:
                status = await conn.execute(_SQL.release, owner)
                released += int(status.rsplit(" ", 1)[-1])
                await conn.execute(_SQL.retire, owner)
        return released

    async def retire(self, owner: str) -> None:
        async with self._conn() as conn:
            await conn.execute(_SQL.retire, owner)

    async def backlog(self) -> int:
        async with self._conn() as conn:
            count = await conn.fetchval(queue.BACKLOG)
        return int(count)

    async def get_delivery(self, delivery_id: str) -> DeliveryRecord | None:
        async with self._conn() as conn:
            row = await conn.fetchrow(
                f"SELECT {COLUMNS} FROM deliveries WHERE id = $1", delivery_id
            )
        return row_to_record(row) if row else None

    async def list_deliveries(
        self,
        *,
        status: DeliveryStatus | None = None,
        source: str | None = None,
        task_id: str | None = None,
        limit: int = 100,
        before_seq: int | None = None,
    ) -> DeliveryPage:
        count, page = list_queries(
            status=status, source=source, task_id=task_id, limit=limit, before_seq=before_seq
        )
        total = (await self.query(*count))[0][0]
        return page_of(await self.query(*page), total=total, limit=limit)

    async def scan_deliveries(
        self,
        *,
        after_seq: int = 0,
        limit: int = 1000,
        status: DeliveryStatus | None = None,
        source: str | None = None,
        since: float | None = None,
        until: float | None = None,
    ) -> list[DeliveryRecord]:
        rows = await self.query(*scan_query(
            after_seq=after_seq, limit=limit, status=status, source=source, since=since,
            until=until,
        ))  # fmt: skip
        return [row_to_record(row) for row in rows]

    async def dead_ids(self) -> list[str]:
        async with self._conn() as conn:
            rows = await conn.fetch("SELECT id FROM deliveries WHERE status = 'dead' ORDER BY seq")
        return [row[0] for row in rows]

    async def requeue(self, delivery_id: str, *, now: float) -> bool | None:
        async with self._conn() as conn, conn.transaction():
            row = await conn.fetchrow(_REQUEUE, now, delivery_id)
            if row is not None:
                seq, source, lane = row
                await conn.execute(_SQL.requeue, source, lane, seq, now)
        if row is not None:
            return True
        return None if await self.get_delivery(delivery_id) is None else False

    async def known_bodies(self, source: str, dedup_keys: Sequence[str]) -> set[str]:
        async with self._conn() as conn:
            rows = await conn.fetch(
                "SELECT dedup_key FROM deliveries WHERE source = $1 AND duplicate_of IS NULL "
                "AND dedup_key = ANY($2::text[])",
                source,
                list(dedup_keys),
            )
        return {row[0] for row in rows}

    async def load_cursor(self, source: str) -> str | None:
        async with self._conn() as conn:
            value = await conn.fetchval(
                "SELECT cursor FROM reconcile_cursors WHERE source = $1", source
            )
        return str(value) if value is not None else None

    async def save_cursor(self, source: str, cursor: str, *, now: float) -> None:
        async with self._conn() as conn:
            await conn.execute(
                "INSERT INTO reconcile_cursors (source, cursor, updated_at) VALUES ($1,$2,$3) "
                "ON CONFLICT (source) DO UPDATE SET cursor = excluded.cursor, "
                "updated_at = excluded.updated_at",
                source,
                cursor,
                now,
            )


async def _no_reset(conn: Any) -> None:
    return None


def _settle(future: asyncio.Future[Any], outcome: Any) -> None:
    if future.done():
        return  # the caller went away (cancelled)
    if isinstance(outcome, BaseException):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)


async def _save_events(conn: Any, delivery_id: str, events: Sequence[StoredEvent]) -> None:
    inserted, linked = event_rows(delivery_id, events)
    await conn.executemany(to_postgres(INSERT_EVENTS).sql, inserted)
    await conn.executemany(to_postgres(LINK_EVENTS).sql, linked)
    await conn.execute(to_postgres(MARK_DERIVED).sql, delivery_id)


async def _record_runs(conn: Any, runs: Sequence[HandlerRun]) -> None:
    if runs:
        await conn.executemany(to_postgres(UPSERT_RUNS).sql, run_rows(runs, time.time()))


__all__ = ["BridgeConnection", "PostgresStorage"]
