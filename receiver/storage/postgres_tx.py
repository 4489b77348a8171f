"""Transactions of plugins and of the dispatcher's batches on PostgreSQL, natively async.

A transaction runs on a pooled asyncpg connection of its own, so transactions of different
tasks run at the same time, in one replica and across replicas. What must not interleave is
said with keys (`PgTx.lock`): transaction-level advisory locks taken in one fixed order (of
their hash), held to the commit. There is no global lock. A deadlock the server breaks (two
transactions that took more keys later, in different orders) or a serialization failure
runs the transaction again, a few times, after a short random pause.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any, Literal, TypeVar

import asyncpg
from sqlalchemy.sql.expression import ClauseElement

from receiver.events import Event, persisted
from receiver.plugin_store import Params, Row
from receiver.records import DeliveryRecord, HandlerRun, NewDelivery, StoredEvent
from receiver.storage import postgres_sql as pg
from receiver.storage.compiled import Statements, create_statements, many, postgres_sql
from receiver.storage.rows import (
    COLUMNS,
    INSERT_EVENTS,
    LINK_EVENTS,
    MARK_DERIVED,
    UNAPPLIED,
    UPSERT_RUNS,
    batch_event_rows,
    header_block,
    insert_params,
    row_to_record,
    run_rows,
)

T = TypeVar("T")
RETRIES = 8
# Seed of the hash plugins' keys are locked by: a key never shares a lock with the intake's
# per-lane lock (seed 0) however it is spelled.
_KEY_SEED = 7
_LOCK_KEYS = (
    "SELECT count(pg_advisory_xact_lock(h)) FROM ("
    " SELECT DISTINCT hashtextextended(k, $2) AS h FROM unnest($1::text[]) AS k ORDER BY h"
    ") AS ordered"
)
_DERIVED = (
    "SELECT id, events_derived FROM deliveries WHERE id = ANY($1::text[]) ORDER BY id FOR UPDATE"
)
_LOAD_EVENTS_MANY = (
    "SELECT de.delivery_id, e.event_id, e.name, e.task_id, e.delivery_id, e.payload "
    "FROM delivery_events AS de JOIN events AS e ON e.event_id = de.event_id "
    "WHERE de.delivery_id = ANY($1::text[]) ORDER BY de.delivery_id, de.position"
)
_RETRYABLE = (asyncpg.DeadlockDetectedError, asyncpg.SerializationError)


class PgTx:
    """`receiver.plugin_store.Tx` on one asyncpg connection inside a transaction."""

    def __init__(self, conn: Any, statements: Statements, *, max_header_bytes: int) -> None:
        self._conn = conn
        self._compiled = statements
        self._max_header_bytes = max_header_bytes

    @property
    def dialect(self) -> Literal["postgresql"]:
        return "postgresql"

    @property
    def connection(self) -> Any:
        """The core's own hand-written statements (finish) in the same transaction."""
        return self._conn

    async def execute(self, statement: ClauseElement, params: Params | None = None) -> int:
        c = self._compiled(statement)
        status: str = await self._conn.execute(c.sql, *c.args(params))
        tail = status.rsplit(" ", 1)[-1]
        return int(tail) if tail.isdigit() else -1

    async def executemany(self, statement: ClauseElement, rows: Sequence[Params]) -> None:
        if rows:
            c = self._compiled(statement)
            await self._conn.executemany(c.sql, many(c, rows))

    async def fetch(self, statement: ClauseElement, params: Params | None = None) -> list[Row]:
        c = self._compiled(statement)
        return list(await self._conn.fetch(c.sql, *c.args(params)))

    async def fetchone(self, statement: ClauseElement, params: Params | None = None) -> Row | None:
        c = self._compiled(statement)
        row: Row | None = await self._conn.fetchrow(c.sql, *c.args(params))
        return row

    async def lock(self, keys: Iterable[str]) -> None:
        wanted = sorted(set(keys))
        if wanted:
            await self._conn.fetchval(_LOCK_KEYS, wanted, _KEY_SEED)

    async def create(self, *elements: Any) -> None:
        for sql in create_statements(elements, "postgresql"):
            await self._conn.execute(sql)

    async def derived(self, delivery_ids: Sequence[str]) -> dict[str, list[Event]]:
        if not delivery_ids:
            return {}
        # Row locks, in id order: two processes on one delivery (a stalled owner and the one
        # that took over) apply it one after the other, and the second finds it applied.
        rows = await self._conn.fetch(_DERIVED, list(delivery_ids))
        done = [r[0] for r in rows if r[1]]
        if not done:
            return {}
        rows = await self._conn.fetch(_LOAD_EVENTS_MANY, done)
        found: dict[str, list[Event]] = {i: [] for i in done}
        for row in rows:
            found[row[0]].append(Event.model_validate_json(row[5]))
        return found

    async def save_events(self, delivery_id: str, events: Sequence[Event]) -> None:
        await save_events(self._conn, {delivery_id: [persisted(e) for e in events]})

    async def save_many(self, batch: Mapping[str, Sequence[StoredEvent]]) -> None:
        await save_events(self._conn, batch)

    async def store_delivery(self, delivery: NewDelivery) -> DeliveryRecord:
        headers = header_block(delivery.headers, self._max_header_bytes)
        lane = delivery.task_id if delivery.task_id is not None else delivery.id
        await self._conn.fetchval(pg.INSERT, *insert_params(delivery, headers), lane)
        row = await self._conn.fetchrow(pg.GET, delivery.id)
        return row_to_record(row)

    async def pending(self, kind: str, task_id: str) -> list[DeliveryRecord]:
        c = postgres_sql(UNAPPLIED)
        rows = await self._conn.fetch(c.sql, *c.args({"task_id": task_id, "kind": kind}))
        return [row_to_record(r) for r in rows]


async def run_transaction(
    acquire: Callable[[], Any],
    op: Callable[[PgTx], Awaitable[T]],
    statements: Statements,
    *,
    max_header_bytes: int,
) -> T:
    """`op` in a transaction on a connection of `acquire()`; run again on a deadlock."""
    for attempt in range(RETRIES + 1):
        async with acquire() as conn:
            try:
                async with conn.transaction():
                    return await op(PgTx(conn, statements, max_header_bytes=max_header_bytes))
            except _RETRYABLE:
                # Caught here, before the pool's guard makes it `StorageUnavailable`: the
                # server chose this transaction to end a deadlock; the next try succeeds.
                if attempt == RETRIES:
                    raise
        await asyncio.sleep(random.uniform(0.001, 0.01 * (attempt + 1)))
    raise AssertionError("unreachable")


async def save_events(conn: Any, batch: Mapping[str, Sequence[StoredEvent]]) -> None:
    """Persist deliveries' events and mark them derived: three statements for the batch."""
    inserted, linked = batch_event_rows(batch)
    if inserted:
        c = postgres_sql(INSERT_EVENTS)
        await conn.executemany(c.sql, many(c, inserted))
        c = postgres_sql(LINK_EVENTS)
        await conn.executemany(c.sql, many(c, linked))
    if batch:
        await conn.executemany(postgres_sql(MARK_DERIVED).sql, [[i] for i in batch])


async def record_runs(conn: Any, runs: Sequence[HandlerRun]) -> None:
    if runs:
        c = postgres_sql(UPSERT_RUNS)
        await conn.executemany(c.sql, many(c, run_rows(runs, time.time())))


__all__ = ["COLUMNS", "PgTx", "record_runs", "run_transaction", "save_events"]
