"""One SQLite write connection with group commit, driven from the event loop.

Every write of the process goes through one connection. Callers submit a small function
(`Op`) and await its future. A flusher task takes everything queued, runs each op in its own
SAVEPOINT inside one transaction *on the event-loop thread*, then hands only the COMMIT (the
fsync, under ``synchronous=FULL``) to a helper thread, and wakes every caller of the batch when
it returns. Requests arriving during the fsync queue up and form the next batch.

Why this shape: each awaited aiosqlite call is a thread hop (~100 µs here), and a writer
*thread* running the statements fights the event loop for the GIL on every SQLite call. Here
the statements are a few microseconds of work on the thread that already holds the GIL, and
the one thread hop per batch is the fsync, during which the GIL is released. The write lock is
taken with ``busy_timeout=0`` and retried with async sleeps, so another process holding the
database never blocks the event loop (see shared/PERF-NOTES.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from receiver.errors import StorageBusy, StorageUnavailable, contain

T = TypeVar("T")
Op = Callable[[sqlite3.Connection], Any]
_Item = tuple[Op, "asyncio.Future[Any]", bool, bool]  # op, future, isolated, alone


def connect(path: str, *, timeout: float = 2.0) -> sqlite3.Connection:
    """A connection in autocommit mode with the pragmas durability needs."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=timeout)
    conn.execute("PRAGMA journal_mode=WAL")
    # FULL: a commit survives power loss, not only a killed process. Group commit makes it cheap.
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA foreign_keys=ON")
    # Statement and savepoint journals in memory, not in temp files (measured: half the
    # per-insert cost); a larger page cache keeps index pages of a big table resident.
    conn.execute("PRAGMA temp_store=MEMORY")
    conn.execute("PRAGMA cache_size=-65536")
    conn.execute(f"PRAGMA busy_timeout={int(timeout * 1000)}")
    return conn


class Writer:
    """Owns the write connection; see the module docstring."""

    def __init__(
        self,
        path: str,
        *,
        max_batch: int = 1024,
        max_queue: int = 10_000,
        lock_timeout: float = 2.0,
        on_commit: Callable[[int, float], None] | None = None,
    ) -> None:
        self._path = path
        self._max_batch = max_batch
        self._max_queue = max_queue
        self.lock_timeout = lock_timeout
        self._on_commit = on_commit
        self._pending: list[_Item] = []
        self._alone = 0  # ops queued that commit in a transaction of their own
        self._conn: sqlite3.Connection | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        try:
            conn = connect(self._path)
            conn.execute("PRAGMA busy_timeout=0")  # never block the event loop on a lock
        except sqlite3.Error as exc:
            raise StorageUnavailable(f"cannot open {self._path}: {exc}") from exc
        self._conn = conn
        self._loop = loop
        self._stopping = False
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="taskhook-sqlite-commit")
        self._wake = asyncio.Event()
        self._task = loop.create_task(self._flusher(), name="taskhook-sqlite-writer")

    async def stop(self) -> None:
        """Commit what is queued, then close."""
        if self._task is None or self._wake is None:
            return
        self._stopping = True
        self._wake.set()
        await self._task
        self._task = None
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def submit(
        self, op: Op, *, isolated: bool = True, bounded: bool = False, alone: bool = False
    ) -> asyncio.Future[Any]:
        """Queue `op`; the future resolves after the transaction holding it has committed.

        `isolated` ops run in their own SAVEPOINT so their failure cannot sink the batch;
        an op that cannot fail halfway (the intake's insert) may skip it on the hot path.
        `bounded` ops (new deliveries) are refused with `StorageBusy` while `max_queue` ops
        wait: a sender is told to come back rather than the queue growing without end. The
        dispatcher's own ops are bounded by its concurrency and always queue. An op `alone`
        (the readiness probe) commits in a transaction of its own: the database's failure on
        it (a full disk) is its answer only, never its neighbours'.
        """
        if self._loop is None or self._wake is None or self._stopping:
            raise StorageUnavailable("storage is not open")
        if bounded and len(self._pending) >= self._max_queue:
            raise StorageBusy(f"{len(self._pending)} writes queued; retry shortly")
        fut = self._loop.create_future()
        self._pending.append((op, fut, isolated, alone))
        self._alone += alone
        self._wake.set()
        return fut

    async def run(self, op: Callable[[sqlite3.Connection], T]) -> T:
        result: T = await self.submit(op)
        return result

    async def _flusher(self) -> None:
        assert self._wake is not None
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                await self._execute(self._next_batch())
            if self._stopping:
                return

    def _next_batch(self) -> list[_Item]:
        pending = self._pending
        end = min(len(pending), self._max_batch)
        if self._alone:  # rare (at most one probe a second): only then look at each item
            # An op alone heads its own batch; a batch ends before the next one.
            end = 1 if pending[0][3] else next((i for i in range(end) if pending[i][3]), end)
            self._alone -= sum(item[3] for item in pending[:end])
        batch = pending[:end]
        del pending[:end]
        return batch

    async def _begin(self, conn: sqlite3.Connection) -> None:
        deadline = time.monotonic() + self.lock_timeout
        delay = 0.001
        while True:
            try:
                conn.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) and "busy" not in str(exc):
                    raise
                if time.monotonic() >= deadline:
                    raise
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.05)

    async def _execute(self, batch: list[_Item]) -> None:
        conn = self._conn
        loop = self._loop
        assert conn is not None and loop is not None
        started = time.perf_counter()
        settled: list[tuple[asyncio.Future[Any], Any, BaseException | None]] = []
        committed = False
        try:
            await self._begin(conn)
            try:
                for op, fut, isolated, _ in batch:
                    if not isolated:
                        settled.append((fut, op(conn), None))
                        continue
                    conn.execute("SAVEPOINT op")
                    try:
                        result = op(conn)
                    except sqlite3.OperationalError:
                        raise  # the database itself failed (disk full, I/O): fail the batch
                    except BaseException as exc:
                        # One op's own error (a bug, a constraint, a plugin's SystemExit)
                        # must not sink its neighbours, nor end the writer.
                        conn.execute("ROLLBACK TO op")
                        conn.execute("RELEASE op")
                        settled.append((fut, None, contain(exc)))
                    else:
                        conn.execute("RELEASE op")
                        settled.append((fut, result, None))
                # The fsync happens here, off the event loop; the GIL is released meanwhile.
                await loop.run_in_executor(self._executor, conn.execute, "COMMIT")
                committed = True
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                raise
        except Exception as exc:
            # The whole batch rolled back: every caller learns it; the flusher lives on.
            error: BaseException = (
                StorageUnavailable(f"database write failed: {exc}")
                if isinstance(exc, sqlite3.Error)
                else exc
            )
            settled = [(fut, None, error) for _, fut, _, _ in batch]
        if committed and self._on_commit is not None:
            self._on_commit(len(batch), time.perf_counter() - started)
        for fut, result, failure in settled:
            if fut.done():
                continue
            if failure is not None:
                fut.set_exception(failure)
            else:
                fut.set_result(result)
