"""SQLite storage: WAL, ``synchronous=FULL``, every write group-committed by one `Writer`.

Reads (dispatcher polling, operator API) go through an aiosqlite connection, which WAL lets
run beside the writer. The write operations themselves are in `receiver.storage.sqlite_ops`.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Literal, TypeVar

import aiosqlite
from sqlalchemy.sql.expression import ClauseElement

from receiver.errors import StorageUnavailable
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
    new_id,
)
from receiver.storage import core_schema, queue, sqlite_ops
from receiver.storage.base import CommitObserver
from receiver.storage.compiled import Statements, sqlite_sql
from receiver.storage.migrations import Histories
from receiver.storage.probe import Probe
from receiver.storage.rows import (
    COLUMNS,
    LOAD_EVENTS,
    MAX_HEADER_BYTES,
    list_queries,
    page_of,
    row_to_record,
    save_events_in,
    scan_query,
)
from receiver.storage.sqlite_ops import store_in
from receiver.storage.sqlite_schema import upgrade_legacy
from receiver.storage.sqlite_tx import SQLiteTx, drive
from receiver.storage.writer import Writer, connect

T = TypeVar("T")


def sqlite_path(url: str) -> str:
    """``sqlite:///relative.db``, ``sqlite:////abs/path.db`` or ``sqlite://:memory:``."""
    if not url.startswith("sqlite:"):
        raise ValueError(f"not a sqlite url: {url}")
    rest = url[len("sqlite:") :]
    if rest.startswith("///"):
        return rest[3:]
    if rest.startswith("//"):
        return rest[2:]
    return rest


class SQLiteStorage:
    """`Storage` over one SQLite file."""

    ordered_stores = True  # one writer, its queue in submission order
    dialect: Literal["sqlite"] = "sqlite"

    def __init__(
        self,
        url: str,
        *,
        on_commit: CommitObserver | None = None,
        max_queue: int = 10_000,
        max_duplicate_rows: int = 10,
        max_header_bytes: int = MAX_HEADER_BYTES,
    ) -> None:
        self.path = sqlite_path(url)
        self._writer = Writer(self.path, on_commit=on_commit, max_queue=max_queue)
        self._reader: aiosqlite.Connection | None = None
        self._max_duplicate_rows = max_duplicate_rows
        self._max_header_bytes = max_header_bytes
        self._probe = Probe(self._probe_write)
        self._key: bytes | None = None
        self._statements = Statements("sqlite")
        #: Plugins' schema histories (`declare`), applied by `open`; what each reached.
        self.histories = Histories()
        self.histories.declare(core_schema.COMPONENT, core_schema.HISTORY)
        self.versions: dict[str, int] = {}

    async def open(self) -> None:
        try:
            await asyncio.to_thread(self._migrate)
            self._writer.start(asyncio.get_running_loop())
            self._reader = await aiosqlite.connect(self.path)
            await self._reader.execute("PRAGMA busy_timeout=5000")
        except (sqlite3.Error, OSError) as exc:
            raise StorageUnavailable(f"cannot open SQLite database {self.path}: {exc}") from exc
        await self._migrate_components()

    def _migrate(self) -> None:
        conn = connect(self.path)
        try:
            upgrade_legacy(conn)
        finally:
            conn.close()

    async def _migrate_components(self) -> None:
        self.versions = await self.histories.apply(self.transaction, on_failure=self.close)

    async def close(self) -> None:
        self._probe.forget()
        await self._writer.stop()
        if self._reader is not None:
            await self._reader.close()
            self._reader = None

    async def _read(self, sql: str, params: Sequence[Any] | Mapping[str, Any] = ()) -> list[Any]:
        if self._reader is None:
            raise StorageUnavailable("storage is not open")
        try:
            async with self._reader.execute(sql, params) as cur:
                return list(await cur.fetchall())
        except sqlite3.Error as exc:
            raise StorageUnavailable(f"database read failed: {exc}") from exc

    def declare(self, component: str, migrations: Sequence[Migration]) -> None:
        self.histories.declare(component, migrations)

    async def transaction(self, op: Callable[[Any], Awaitable[T]]) -> T:
        """Run `op` inside a group-committed write transaction (`sqlite_tx`)."""
        statements, cap = self._statements, self._max_header_bytes

        def run(conn: sqlite3.Connection) -> T:
            return drive(op(SQLiteTx(conn, statements, max_header_bytes=cap)))

        return await self._writer.run(run)

    async def query(self, statement: ClauseElement, params: Params | None = None) -> list[Any]:
        """Rows of a read-only query on the reader connection."""
        c = self._statements(statement)
        return await self._read(c.sql, c.args(params))

    async def rederive(self, kinds: Sequence[str]) -> int:
        marks = ",".join("?" * len(kinds))
        sql = f"UPDATE deliveries SET events_derived = 0 WHERE kind IN ({marks})"
        count: int = await self._writer.run(lambda conn: conn.execute(sql, tuple(kinds)).rowcount)
        return count

    async def finish_batch(
        self, tx: SQLiteTx, outcomes: Sequence[DeliveryOutcome], *, owner: str
    ) -> list[bool]:
        """`finish` of each outcome inside `tx` (the transaction that applied them)."""
        return sqlite_ops.finish_many(outcomes, owner, tx.connection)

    async def ping(self) -> None:
        await self._read("SELECT 1")

    async def probe(self) -> None:
        await self._probe()

    async def _probe_write(self) -> None:
        if self._reader is None:
            raise StorageUnavailable("storage is not open")
        await self._writer.submit(sqlite_ops.probe, alone=True)

    async def installation_key(self) -> bytes:
        if self._key is None:
            rows = await self._read(sqlite_ops.READ_KEY, (sqlite_ops.KEY,))
            self._key = (
                bytes(rows[0][0]) if rows else await self._writer.run(sqlite_ops.installation_key)
            )
        return self._key

    async def store_delivery(self, delivery: NewDelivery) -> StoreResult:
        rows, cap = self._max_duplicate_rows, self._max_header_bytes
        # Not isolated: store_in only fails as the database fails, which fails the batch anyway.
        result: StoreResult = await self._writer.submit(
            lambda conn: store_in(conn, delivery, max_duplicate_rows=rows, max_header_bytes=cap),
            isolated=False,
            bounded=True,
        )
        return result

    async def claim_ready(
        self, *, owner: str, limit: int, now: float, lease_seconds: float
    ) -> list[DeliveryRecord]:
        return await self._writer.run(
            lambda conn: sqlite_ops.claim(
                conn, owner=owner, limit=limit, now=now, lease_seconds=lease_seconds
            )
        )

    async def save_events(self, delivery_id: str, events: Sequence[StoredEvent]) -> None:
        await self._writer.run(lambda conn: save_events_in(conn, delivery_id, events))

    async def load_events(self, delivery_id: str) -> list[StoredEvent]:
        rows = await self._read(sqlite_sql(LOAD_EVENTS).sql, (delivery_id,))
        return [StoredEvent(*row) for row in rows]

    async def succeeded_runs(self, event_ids: Sequence[str]) -> set[tuple[str, str]]:
        if not event_ids:
            return set()
        marks = ",".join("?" * len(event_ids))
        rows = await self._read(
            f"SELECT event_id, handler FROM handler_runs "
            f"WHERE status = 'ok' AND event_id IN ({marks})",
            list(event_ids),
        )
        return {(row[0], row[1]) for row in rows}

    async def finish(self, outcome: DeliveryOutcome, *, owner: str) -> bool:
        done: bool = await self._writer.run(lambda conn: sqlite_ops.finish(outcome, owner, conn))
        return done

    async def record_runs(self, runs: Sequence[HandlerRun]) -> None:
        await self._writer.run(lambda conn: sqlite_ops.record_runs(conn, runs))

    async def release_claims(self, owner: str, ids: Sequence[str] | None = None) -> None:
        if ids is None:
            await self._writer.run(
                lambda conn: conn.execute(sqlite_sql(queue.RELEASE).sql, (owner,))
            )
        else:
            await self._writer.run(lambda conn: conn.executemany(
                sqlite_sql(queue.RELEASE_ONE).sql, [(owner, i) for i in ids]
            ))  # fmt: skip

    async def heartbeat(
        self, owner: str, *, host: str, pid: int, now: float, lease_seconds: float
    ) -> set[int]:
        beat = (owner, host, pid, now)
        renewed: set[int] = await self._writer.run(
            lambda conn: sqlite_ops.beat(conn, beat, now + lease_seconds)
        )
        return renewed

    async def owners(self) -> list[Owner]:
        return [Owner(*row) for row in await self._read(sqlite_sql(queue.OWNERS).sql)]

    async def release_owners(self, owners: Sequence[Owner]) -> int:
        released: int = await self._writer.run(
            lambda conn: queue.release_owners_in(conn, list(owners))
        )
        return released

    async def retire(self, owner: str) -> None:
        await self._writer.run(lambda conn: conn.execute(sqlite_sql(queue.RETIRE).sql, (owner,)))

    async def backlog(self) -> int:
        rows = await self._read(sqlite_sql(queue.BACKLOG).sql)
        return int(rows[0][0])

    async def get_delivery(self, delivery_id: str) -> DeliveryRecord | None:
        rows = await self._read(f"SELECT {COLUMNS} FROM deliveries WHERE id = ?", (delivery_id,))
        return row_to_record(rows[0]) if rows else None

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
        rows = await self._read("SELECT id FROM deliveries WHERE status = 'dead' ORDER BY seq")
        return [row[0] for row in rows]

    async def requeue(self, delivery_id: str, *, now: float) -> bool | None:
        changed = await self._writer.run(lambda conn: sqlite_ops.requeue(delivery_id, now, conn))
        if changed:
            return True
        return None if await self.get_delivery(delivery_id) is None else False

    async def known_bodies(self, source: str, dedup_keys: Sequence[str]) -> set[str]:
        found: set[str] = set()
        for start in range(0, len(dedup_keys), 500):  # under SQLite's bound-parameter limit
            chunk = list(dedup_keys[start : start + 500])
            marks = ",".join("?" * len(chunk))
            rows = await self._read(
                "SELECT dedup_key FROM deliveries WHERE source = ? AND duplicate_of IS NULL "
                f"AND dedup_key IN ({marks})",
                [source, *chunk],
            )
            found.update(row[0] for row in rows)
        return found

    async def load_cursor(self, source: str) -> str | None:
        rows = await self._read("SELECT cursor FROM reconcile_cursors WHERE source = ?", [source])
        return str(rows[0][0]) if rows else None

    async def save_cursor(self, source: str, cursor: str, *, now: float) -> None:
        await self._writer.run(lambda conn: conn.execute(
            "INSERT INTO reconcile_cursors (source, cursor, updated_at) VALUES (?,?,?) "
            "ON CONFLICT (source) DO UPDATE SET cursor = excluded.cursor, "
            "updated_at = excluded.updated_at",
            (source, cursor, now),
        ))  # fmt: skip


__all__ = ["SQLiteStorage", "new_id", "sqlite_path", "store_in"]
