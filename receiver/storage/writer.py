"""One SQLite writer thread with group commit.

Every write of the process goes through one connection owned by one thread. Callers on the
event loop submit a small function (`Op`); the thread takes everything queued, runs each op in
its own SAVEPOINT inside one transaction, commits once (one fsync for the whole batch under
``synchronous=FULL``), then wakes all the callers with a single ``call_soon_threadsafe``.

Why not aiosqlite for writes: each awaited aiosqlite call is a thread hop (~100 µs here),
paid per request. Here the hop is paid per batch, which is what lets a durable commit per
delivery cost little more than no database at all (see shared/PERF-NOTES.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from receiver.errors import StorageUnavailable

T = TypeVar("T")
Op = Callable[[sqlite3.Connection], Any]
_Settled = list[tuple["asyncio.Future[Any]", Any, BaseException | None]]

_STOP = object()


def connect(path: str, *, timeout: float = 2.0) -> sqlite3.Connection:
    """A connection in autocommit mode with the pragmas durability needs."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=timeout)
    conn.execute("PRAGMA journal_mode=WAL")
    # FULL: a commit survives power loss, not only a killed process. Group commit makes it cheap.
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute(f"PRAGMA busy_timeout={int(timeout * 1000)}")
    return conn


class Writer:
    """Owns the write connection; see the module docstring."""

    def __init__(
        self,
        path: str,
        *,
        max_batch: int = 512,
        on_commit: Callable[[int, float], None] | None = None,
    ) -> None:
        self._path = path
        self._max_batch = max_batch
        self._on_commit = on_commit
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._open_error: BaseException | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._thread = threading.Thread(
            target=self._run, name="taskhook-sqlite-writer", daemon=True
        )
        self._thread.start()
        self._ready.wait()
        if self._open_error is not None:
            raise StorageUnavailable(f"cannot open {self._path}: {self._open_error}")

    async def stop(self) -> None:
        if self._thread is None:
            return
        self._queue.put(_STOP)
        await asyncio.to_thread(self._thread.join)
        self._thread = None

    def submit(self, op: Op) -> asyncio.Future[Any]:
        """Queue `op`; the future resolves after the transaction holding it has committed."""
        if self._loop is None or self._thread is None:
            raise StorageUnavailable("storage is not open")
        fut = self._loop.create_future()
        self._queue.put((op, fut))
        return fut

    async def run(self, op: Callable[[sqlite3.Connection], T]) -> T:
        result: T = await self.submit(op)
        return result

    def _run(self) -> None:
        try:
            conn = connect(self._path)
        except BaseException as exc:
            self._open_error = exc
            self._ready.set()
            return
        self._ready.set()
        try:
            while True:
                first = self._queue.get()
                batch: list[Any] = [first]
                while len(batch) < self._max_batch:
                    try:
                        batch.append(self._queue.get_nowait())
                    except queue.Empty:
                        break
                stop = any(item is _STOP for item in batch)
                work = [item for item in batch if item is not _STOP]
                if work:
                    self._settle(self._execute(conn, work))
                if stop:
                    return
        finally:
            conn.close()

    def _execute(self, conn: sqlite3.Connection, work: list[Any]) -> _Settled:
        started = time.perf_counter()
        settled: _Settled = []
        try:
            conn.execute("BEGIN IMMEDIATE")
            for op, fut in work:
                conn.execute("SAVEPOINT op")
                try:
                    result = op(conn)
                except sqlite3.OperationalError:
                    # The database itself failed (disk full, I/O error): fail the whole batch.
                    raise
                except Exception as exc:
                    # One op's own error (a bug, a constraint) must not sink its neighbours.
                    conn.execute("ROLLBACK TO op")
                    conn.execute("RELEASE op")
                    settled.append((fut, None, exc))
                else:
                    conn.execute("RELEASE op")
                    settled.append((fut, result, None))
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            error = StorageUnavailable(f"database write failed: {exc}")
            return [(fut, None, error) for _, fut in work]
        if self._on_commit is not None:
            self._on_commit(len(work), time.perf_counter() - started)
        return settled

    def _settle(self, settled: _Settled) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):  # the loop closed under us: nobody is waiting
            loop.call_soon_threadsafe(_resolve, settled)


def _resolve(settled: _Settled) -> None:
    for fut, result, exc in settled:
        if fut.done():
            continue
        if exc is not None:
            fut.set_exception(exc)
        else:
            fut.set_result(result)
