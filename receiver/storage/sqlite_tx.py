"""Transactions of plugins and of the dispatcher's batches on SQLite.

A transaction is an op of the group-committing `Writer`, which runs ops on the event-loop
thread inside its one write transaction. A plugin's op is a coroutine (`plugin_store`), and
every `SQLiteTx` method completes without suspending, so the writer drives the coroutine to
its end in one step (`drive`): no thread hop and no await on the loop per statement.
An op awaiting anything else would stall the writer and is refused.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Awaitable, Coroutine, Iterable, Mapping, Sequence
from typing import Any, Literal, TypeVar

import orjson
from sqlalchemy.sql.expression import ClauseElement

from receiver.errors import StorageError
from receiver.events import Event, persisted
from receiver.plugin_store import Params, Row
from receiver.records import DeliveryRecord, NewDelivery, StoredEvent
from receiver.storage.compiled import Statements, create_statements, many, sqlite_sql
from receiver.storage.queue import enqueue_in
from receiver.storage.rows import (
    COLUMNS,
    INSERT_COLUMNS,
    UNAPPLIED,
    header_block,
    insert_params,
    row_to_record,
    save_events_in,
    save_many_in,
)

T = TypeVar("T")
_MARKS = ",".join("?" * (INSERT_COLUMNS.count(",") + 1))
_INSERT = f"INSERT INTO deliveries ({INSERT_COLUMNS}) VALUES ({_MARKS}) RETURNING {COLUMNS}"
_DERIVED = (
    "SELECT id FROM deliveries WHERE events_derived = 1 AND id IN (SELECT value FROM json_each(?))"
)
_LOAD_EVENTS_MANY = (
    "SELECT de.delivery_id, e.payload FROM delivery_events AS de "
    "JOIN events AS e ON e.event_id = de.event_id "
    "WHERE de.delivery_id IN (SELECT value FROM json_each(?)) "
    "ORDER BY de.delivery_id, de.position"
)


def drive(coro: Awaitable[T]) -> T:
    """Run a transaction's coroutine to its end now; it may await only `SQLiteTx` calls."""
    if not isinstance(coro, Coroutine):
        raise StorageError("a transaction's op must be an `async def` function")
    try:
        coro.send(None)
    except StopIteration as done:
        result: T = done.value
        return result
    coro.close()
    raise StorageError(
        "a SQLite transaction awaited something other than its own statements "
        "(it runs inside the group commit: do other I/O before or after it)"
    )


def _json_list(values: Sequence[str]) -> str:
    return orjson.dumps(list(values)).decode()


class SQLiteTx:
    """`receiver.plugin_store.Tx` over the writer's connection, inside its transaction."""

    def __init__(
        self, conn: sqlite3.Connection, statements: Statements, *, max_header_bytes: int
    ) -> None:
        self._conn = conn
        self._compiled = statements
        self._max_header_bytes = max_header_bytes

    @property
    def dialect(self) -> Literal["sqlite"]:
        return "sqlite"

    @property
    def connection(self) -> sqlite3.Connection:
        """The core's own hand-written statements (finish) in the same transaction."""
        return self._conn

    async def execute(self, statement: ClauseElement, params: Params | None = None) -> int:
        c = self._compiled(statement)
        return self._conn.execute(c.sql, c.args(params)).rowcount

    async def executemany(self, statement: ClauseElement, rows: Sequence[Params]) -> None:
        if rows:
            c = self._compiled(statement)
            self._conn.executemany(c.sql, many(c, rows))

    async def fetch(self, statement: ClauseElement, params: Params | None = None) -> list[Row]:
        c = self._compiled(statement)
        return self._conn.execute(c.sql, c.args(params)).fetchall()

    async def fetchone(self, statement: ClauseElement, params: Params | None = None) -> Row | None:
        c = self._compiled(statement)
        row: Row | None = self._conn.execute(c.sql, c.args(params)).fetchone()
        return row

    async def lock(self, keys: Iterable[str]) -> None:
        return None  # one writer: every transaction already excludes every other

    async def create(self, *elements: Any) -> None:
        for sql in create_statements(elements, "sqlite"):
            self._conn.execute(sql)

    async def derived(self, delivery_ids: Sequence[str]) -> dict[str, list[Event]]:
        if not delivery_ids:
            return {}
        done = [r[0] for r in self._conn.execute(_DERIVED, (_json_list(delivery_ids),))]
        if not done:
            return {}
        found: dict[str, list[Event]] = {i: [] for i in done}
        for delivery_id, payload in self._conn.execute(_LOAD_EVENTS_MANY, (_json_list(done),)):
            found[delivery_id].append(Event.model_validate_json(payload))
        return found

    async def save_events(self, delivery_id: str, events: Sequence[Event]) -> None:
        save_events_in(self._conn, delivery_id, [persisted(e) for e in events])

    async def save_many(self, batch: Mapping[str, Sequence[StoredEvent]]) -> None:
        save_many_in(self._conn, batch)

    async def store_delivery(self, delivery: NewDelivery) -> DeliveryRecord:
        headers = header_block(delivery.headers, self._max_header_bytes)
        row = self._conn.execute(_INSERT, insert_params(delivery, headers)).fetchone()
        record = row_to_record(row)
        enqueue_in(self._conn, record.source, record.lane, record.seq, record.received_at)
        return record

    async def pending(self, kind: str, task_id: str) -> list[DeliveryRecord]:
        c = sqlite_sql(UNAPPLIED)
        rows = self._conn.execute(c.sql, c.args({"task_id": task_id, "kind": kind}))
        return [row_to_record(r) for r in rows]


__all__ = ["SQLiteTx", "drive"]
