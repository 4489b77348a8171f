"""Plugins' state ops on PostgreSQL: synchronous SQL in the SQLite dialect, on one thread.

Plugins' ops (`transact`) are written once, as synchronous functions over a DB-API-like
connection in the SQLite dialect. Here they run on one worker thread over `BridgeConnection`,
which translates each statement (`dialect`) and runs it to completion with asyncpg on that
thread's own event loop: no hop through the app's loop per statement. Those transactions are
serialized (one thread per process, then across replicas by an advisory lock) because the
ledger's rules read and write rows of other tasks (a unique_id handed over) and must see the
world as a single writer would: this is what makes a three-replica ledger equal to a
one-replica ledger. The pruner's batches go the same way, so a ledger transaction and a
pruning batch never interleave.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar, cast

import asyncpg

from receiver.errors import StorageUnavailable, contain
from receiver.storage.dialect import to_postgres
from receiver.storage.postgres_sql import SESSION, UNAVAILABLE

T = TypeVar("T")
PLUGIN_LOCK = 0x7461736B6C6467  # "taskldg"


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
            # The socket closes on this loop's next turn; run it now, not at some later
            # transaction (or never, if the loop is closed first and the socket leaks).
            self._run(asyncio.sleep(0))

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


class PluginTransactions:
    """Plugins' ops, group-committed on one thread over one `BridgeConnection`."""

    def __init__(self, url: str, timeout: float) -> None:
        self._url = url
        self._timeout = timeout
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="taskhook-pg-plugins")
        self._bridge: BridgeConnection | None = None
        self._queued: list[tuple[Callable[[sqlite3.Connection], Any], asyncio.Future[Any]]] = []
        self._lock = threading.Lock()
        self._flushing = False

    async def close(self) -> None:
        if self._bridge is not None:
            bridge, self._bridge = self._bridge, None
            await asyncio.get_running_loop().run_in_executor(self._thread, bridge.close)

    async def run(self, op: Callable[[sqlite3.Connection], T]) -> T:
        """Run `op` in a serialized transaction.

        Ops queued while a transaction runs share the next one: one lock hand-over and one
        commit for the batch. If any op of a batch raises, the batch rolls back and its ops
        run again one transaction each, so one op's failure is only its own.
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        with self._lock:
            self._queued.append((op, future))
            start = not self._flushing
            self._flushing = True
        if start:
            loop.run_in_executor(self._thread, self._flush, loop)
        return await future

    def _flush(self, loop: asyncio.AbstractEventLoop) -> None:
        while True:
            with self._lock:
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
            self._bridge = BridgeConnection(self._url, self._timeout)
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


def _settle(future: asyncio.Future[Any], outcome: Any) -> None:
    if future.done():
        return  # the caller went away (cancelled)
    if isinstance(outcome, BaseException):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)


__all__ = ["PLUGIN_LOCK", "BridgeConnection", "PluginTransactions"]
