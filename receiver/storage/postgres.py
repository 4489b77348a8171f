"""PostgreSQL storage (asyncpg): one database shared by several receiver replicas.

Dedup is the partial unique index, so it holds across replicas, and a duplicate receipt is
counted on its original under the original's row lock, so the count is exact whichever
replicas race (`postgres_sql.DUPLICATE`). Workers claim with ``FOR UPDATE SKIP LOCKED`` and
a lease, and a delivery is claimable only while no earlier pending delivery of its task
exists, so each (delivery, handler) runs once and per-task order holds across replicas; a
replica that dies mid-claim has its work taken over when the lease expires. Every commit is
durable (``synchronous_commit`` as the server sets it, on by default) before the caller acks.

Plugins' state ops (`transact`) run serialized on one thread (`postgres_bridge`). Every
failure of the server or of the way to it (`postgres_sql.UNAVAILABLE`) is raised as
`StorageUnavailable`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, Literal, TypeVar

import asyncpg
from sqlalchemy.sql.expression import ClauseElement

from receiver.errors import StorageBusy, StorageUnavailable
from receiver.plugin_store import Migration, Params
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
from receiver.storage import core_schema, queue
from receiver.storage import postgres_sql as pg
from receiver.storage.base import CommitObserver
from receiver.storage.compiled import Statements, postgres_sql
from receiver.storage.migrations import Histories
from receiver.storage.postgres_finish import finish_all
from receiver.storage.postgres_schema import check_legacy
from receiver.storage.postgres_sql import SESSION, UNAVAILABLE, session_settings
from receiver.storage.postgres_tx import PgTx, record_runs, run_transaction, save_events
from receiver.storage.probe import Probe
from receiver.storage.rows import (
    LOAD_EVENTS,
    MAX_HEADER_BYTES,
    header_block,
    insert_params,
    list_queries,
    page_of,
    row_to_record,
    scan_query,
)

T = TypeVar("T")
_CLAIM = pg.CLAIM  # (the name tests read the claim's plan by)
KEY = "installation_key"


class PostgresStorage:
    """`Storage` over a PostgreSQL database (``postgresql://user@host:port/db``)."""

    ordered_stores = False  # pooled connections commit in whatever order they finish
    dialect: Literal["postgresql"] = "postgresql"

    def __init__(
        self,
        url: str,
        *,
        on_commit: CommitObserver | None = None,
        pool_size: int = 10,
        timeout: float = 10.0,
        max_queue: int = 10_000,
        max_duplicate_rows: int = 10,
        max_header_bytes: int = MAX_HEADER_BYTES,
    ) -> None:
        self.url = url
        self._max_queue = max_queue
        self._storing = 0  # deliveries waiting for a connection or their commit
        self._on_commit = on_commit
        self._pool_size = pool_size
        self._timeout = timeout
        self._max_duplicate_rows = max_duplicate_rows
        self._max_header_bytes = max_header_bytes
        self._pool: asyncpg.Pool | None = None
        self._statements = Statements("postgresql")
        #: Plugins' schema histories (`declare`), applied by `open`; what each reached.
        self.histories = Histories()
        self.histories.declare(core_schema.COMPONENT, core_schema.HISTORY)
        self.versions: dict[str, int] = {}
        self._probe = Probe(self._probe_write)
        self._key: bytes | None = None

    @contextlib.asynccontextmanager
    async def _conn(self) -> AsyncIterator[Any]:
        if self._pool is None:
            raise StorageUnavailable("storage is not open")
        try:
            async with self._pool.acquire(timeout=self._timeout) as conn:
                try:
                    yield conn
                except UNAVAILABLE:
                    # Never hand a connection that failed to the next caller: the pool opens
                    # a new one (a server that ended it may not have said so yet).
                    conn.terminate()
                    raise
        except UNAVAILABLE as exc:
            raise StorageUnavailable(f"PostgreSQL unavailable: {exc!r}") from exc

    async def open(self) -> None:
        self._probe.forget()
        if self._pool is not None:  # already open: only make sure the schema is current
            async with self._conn() as conn:
                await check_legacy(conn)
            await self._migrate_components()
            return
        try:
            self._pool = await asyncpg.create_pool(
                self.url,
                min_size=1,
                max_size=self._pool_size,
                command_timeout=self._timeout,
                timeout=self._timeout,
                server_settings=session_settings(),
                # asyncpg resets a connection on every release (a round trip); nothing here
                # leaves session state behind (locks are transaction-scoped).
                reset=_no_reset,
            )
        except UNAVAILABLE as exc:
            raise StorageUnavailable(f"cannot connect to PostgreSQL: {exc!r}") from exc
        async with self._conn() as conn:
            await check_legacy(conn)
        await self._migrate_components()

    async def _migrate_components(self) -> None:
        self.versions = await self.histories.apply(self.transaction, on_failure=self.close)

    async def close(self) -> None:
        self._probe.forget()
        if self._pool is not None:
            pool, self._pool = self._pool, None
            try:
                await asyncio.wait_for(pool.close(), self._timeout)
            except UNAVAILABLE:
                pool.terminate()  # the server is gone: drop the sockets without a goodbye

    async def ping(self) -> None:
        async with self._conn() as conn:
            await conn.fetchval("SELECT 1")

    async def probe(self) -> None:
        await self._probe()

    async def _probe_write(self) -> None:
        # Autocommitted: a read-only server refuses it, a lost connection or a full disk
        # fails it, and it returns only once the commit is durable.
        async with self._conn() as conn:
            await conn.execute(pg.PROBE, time.time())

    async def installation_key(self) -> bytes:
        if self._key is None:
            async with self._conn() as conn:
                # Every replica inserts if absent, then all read the one that won.
                value = await conn.fetchval(pg.READ_KEY, KEY)
                if value is None:
                    await conn.execute(pg.ADD_KEY, KEY, os.urandom(32))
                    value = await conn.fetchval(pg.READ_KEY, KEY)
            self._key = bytes(value)
        return self._key

    def declare(self, component: str, migrations: Sequence[Migration]) -> None:
        self.histories.declare(component, migrations)

    async def transaction(self, op: Callable[[PgTx], Awaitable[T]]) -> T:
        """Run `op` in a transaction of its own connection (`postgres_tx`): no global lock."""
        return await run_transaction(
            self._conn, op, self._statements, max_header_bytes=self._max_header_bytes
        )

    async def query(self, statement: ClauseElement, params: Params | None = None) -> list[Any]:
        c = self._statements(statement)
        async with self._conn() as conn:
            return list(await conn.fetch(c.sql, *c.args(params)))

    async def rederive(self, kinds: Sequence[str]) -> int:
        async with self._conn() as conn:
            status: str = await conn.execute(
                "UPDATE deliveries SET events_derived = 0 WHERE kind = ANY($1::text[])",
                list(kinds),
            )
        return int(status.rsplit(" ", 1)[-1])

    async def finish_batch(
        self, tx: PgTx, outcomes: Sequence[DeliveryOutcome], *, owner: str
    ) -> list[bool]:
        """`finish` of each outcome inside `tx` (the transaction that applied them)."""
        return await finish_all(tx.connection, outcomes, owner=owner)

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
        headers = header_block(delivery.headers, self._max_header_bytes)
        lane = delivery.task_id if delivery.task_id is not None else delivery.id
        # One statement, autocommitted: the ack waits for one round trip and one commit.
        async with self._conn() as conn:
            seq = await conn.fetchval(pg.INSERT, *insert_params(delivery, headers), lane)
            if seq is not None:
                result = StoreResult(
                    delivery.id, duplicate=False, status=delivery.status, error=delivery.error
                )
            else:
                # The original is committed (the unique index waited for it): count the
                # receipt on it, and keep it as a row while the bound allows.
                # (the statement puts the original's id where duplicate_of goes)
                values = list(insert_params(delivery, headers, duplicate_of="original"))
                del values[pg.DUPLICATE_OF]
                first = await conn.fetchrow(
                    pg.DUPLICATE, self._max_duplicate_rows, delivery.source, delivery.dedup_key,
                    *values,
                )  # fmt: skip
                if first is None:  # originals are never deleted: the schema is not ours
                    raise StorageUnavailable("the original of a duplicate delivery is missing")
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
            rows = await conn.fetch(pg.CLAIM, now, limit, owner, now + lease_seconds)
        return sorted((row_to_record(r) for r in rows), key=lambda d: d.seq)

    async def save_events(self, delivery_id: str, events: Sequence[StoredEvent]) -> None:
        async with self._conn() as conn, conn.transaction():
            await save_events(conn, {delivery_id: events})

    async def load_events(self, delivery_id: str) -> list[StoredEvent]:
        async with self._conn() as conn:
            rows = await conn.fetch(postgres_sql(LOAD_EVENTS).sql, delivery_id)
        return [StoredEvent(*row) for row in rows]

    async def succeeded_runs(self, event_ids: Sequence[str]) -> set[tuple[str, str]]:
        if not event_ids:
            return set()
        async with self._conn() as conn:
            rows = await conn.fetch(pg.SUCCEEDED, list(event_ids))
        return {(row[0], row[1]) for row in rows}

    async def finish(self, outcome: DeliveryOutcome, *, owner: str) -> bool:
        now = time.time()
        status = outcome.status.value
        async with self._conn() as conn, conn.transaction():
            await record_runs(conn, outcome.runs)
            row = await conn.fetchrow(
                pg.FINISH, status, outcome.attempts, outcome.next_attempt_at, outcome.error,
                outcome.traceback, status, now, now, outcome.delivery_id, owner,
            )  # fmt: skip
            if row is None:
                return False
            seq, source, task_id = row
            for sql, params in queue.lane_steps(
                seq, source, task_id, status, outcome.next_attempt_at
            ):
                await conn.execute(postgres_sql(sql).sql, *params)
        return True

    async def record_runs(self, runs: Sequence[HandlerRun]) -> None:
        async with self._conn() as conn, conn.transaction():
            await record_runs(conn, runs)

    async def release_claims(self, owner: str, ids: Sequence[str] | None = None) -> None:
        async with self._conn() as conn:
            await conn.execute(pg.RELEASE, owner, None if ids is None else list(ids))

    async def heartbeat(
        self, owner: str, *, host: str, pid: int, now: float, lease_seconds: float
    ) -> set[int]:
        async with self._conn() as conn, conn.transaction():
            await conn.execute(pg.Queue.beat, owner, host, pid, now, now)
            rows = await conn.fetch(pg.Queue.renew, now + lease_seconds, owner)
        return {row[0] for row in rows}

    async def owners(self) -> list[Owner]:
        async with self._conn() as conn:
            rows = await conn.fetch(pg.Queue.owners)
        return [Owner(*row) for row in rows]

    async def release_owners(self, owners: Sequence[Owner]) -> int:
        released = 0
        async with self._conn() as conn, conn.transaction():
            for owner in owners:  # as `queue.release_owners_in`
                if await conn.fetchval(pg.Queue.retire_if_silent, owner.owner, owner.heartbeat_at):
                    status = await conn.execute(pg.Queue.release, owner.owner)
                    released += int(status.rsplit(" ", 1)[-1])
        return released

    async def retire(self, owner: str) -> None:
        async with self._conn() as conn:
            await conn.execute(pg.Queue.retire, owner)

    async def backlog(self) -> int:
        async with self._conn() as conn:
            count = await conn.fetchval(postgres_sql(queue.BACKLOG).sql)
        return int(count)

    async def get_delivery(self, delivery_id: str) -> DeliveryRecord | None:
        async with self._conn() as conn:
            row = await conn.fetchrow(pg.GET, delivery_id)
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
            rows = await conn.fetch(pg.DEAD)
        return [row[0] for row in rows]

    async def requeue(self, delivery_id: str, *, now: float) -> bool | None:
        async with self._conn() as conn, conn.transaction():
            row = await conn.fetchrow(pg.REQUEUE, now, now, delivery_id)
            if row is not None:
                seq, source, lane = row
                await conn.execute(pg.Queue.requeue, source, lane, seq, now)
        if row is not None:
            return True
        return None if await self.get_delivery(delivery_id) is None else False

    async def known_bodies(self, source: str, dedup_keys: Sequence[str]) -> set[str]:
        async with self._conn() as conn:
            rows = await conn.fetch(pg.KNOWN, source, list(dedup_keys))
        return {row[0] for row in rows}

    async def load_cursor(self, source: str) -> str | None:
        async with self._conn() as conn:
            value = await conn.fetchval(pg.LOAD_CURSOR, source)
        return str(value) if value is not None else None

    async def save_cursor(self, source: str, cursor: str, *, now: float) -> None:
        async with self._conn() as conn:
            await conn.execute(pg.SAVE_CURSOR, source, cursor, now)


async def _no_reset(conn: Any) -> None:
    return None


__all__ = ["SESSION", "UNAVAILABLE", "PostgresStorage"]
