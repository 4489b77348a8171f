"""The storage interface. The intake and the dispatcher know only this Protocol.

SQLite fills it (`receiver.storage.sqlite`); a PostgreSQL backend fills the same methods.
Every method raises `StorageUnavailable` when the database cannot answer (read-only, full,
refusing or losing connections): never a driver's own exception.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, Protocol, TypeVar

from sqlalchemy.sql.expression import ClauseElement

from receiver.plugin_store import Dialect, Migration, Params
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

T = TypeVar("T")
CommitObserver = Callable[[int, float], None]
"""Called after each durable commit with (rows in the batch, seconds the commit took)."""


class Storage(Protocol):
    #: Do concurrent `store_delivery` calls commit in the order they were made? (SQLite's one
    #: writer: yes; PostgreSQL's pool: no.) A replay keeps file order only where they do.
    ordered_stores: bool

    async def open(self) -> None:
        """Connect and apply schema migrations."""

    async def close(self) -> None: ...

    async def ping(self) -> None:
        """Raise `StorageUnavailable` unless the database answers a query."""

    async def probe(self) -> None:
        """Raise `StorageUnavailable` unless the database takes a durable write now: a
        real one, made at most once a second (`receiver.storage.probe`)."""

    async def installation_key(self) -> bytes:
        """A random 32-byte key of this database, made once, the same for every replica."""

    # The plugin storage API (`receiver.plugin_store.PluginStorage`): plugins see the
    # storage through these.
    @property
    def dialect(self) -> Dialect: ...

    def declare(self, component: str, migrations: Sequence[Migration]) -> None:
        """A component's schema history, applied by `open` (`migrations`)."""

    async def transaction(self, op: Callable[[Any], Awaitable[T]]) -> T:
        """Run `op(tx)` in a write transaction (`sqlite_tx`, `postgres_tx`)."""

    async def query(self, statement: ClauseElement, params: Params | None = None) -> list[Any]:
        """Rows of a read-only query (plugins, the pruner)."""

    async def rederive(self, kinds: Sequence[str]) -> int:
        """Mark every delivery of `kinds` as not yet interpreted."""

    async def finish_batch(
        self, tx: Any, outcomes: Sequence[DeliveryOutcome], *, owner: str
    ) -> list[bool]:
        """`finish` of each outcome inside `tx`, the transaction that derived their events;
        whether each counted (see `finish`)."""

    async def store_delivery(self, delivery: NewDelivery) -> StoreResult:
        """Durably commit `delivery`, or report the first stored delivery it duplicates.

        Returns only after the commit is on disk: the caller acks the sender on return.
        """

    async def claim_ready(
        self, *, owner: str, limit: int, now: float, lease_seconds: float
    ) -> list[DeliveryRecord]:
        """Lease up to `limit` deliveries that are due and head their task's queue.

        A delivery is claimable when it heads its lane (no earlier pending delivery of the
        same (source, task_id): this keeps per-task receipt order), is due, and is leased by
        nobody, or by another owner whose lease expired. A claim never returns what `owner`
        itself holds. Its cost is O(limit + deliveries in flight), whatever waits behind
        heads in backoff (`receiver.storage.queue`).
        """

    async def save_events(self, delivery_id: str, events: Sequence[StoredEvent]) -> None:
        """Persist the events derived from a delivery and mark it derived (idempotent)."""

    async def load_events(self, delivery_id: str) -> list[StoredEvent]: ...

    async def succeeded_runs(self, event_ids: Sequence[str]) -> set[tuple[str, str]]:
        """The (event_id, handler) pairs that already ran successfully."""

    async def finish(self, outcome: DeliveryOutcome, *, owner: str) -> bool:
        """Record handler runs and the delivery's new state, release its lease and move its
        lane on. False (runs recorded, state untouched) when another owner leases it now."""

    async def record_runs(self, runs: Sequence[HandlerRun]) -> None:
        """Record handler runs outside a dispatch attempt (backfilling one handler)."""

    async def release_claims(self, owner: str, ids: Sequence[str] | None = None) -> None:
        """Give up `owner`'s leases (only those of `ids`, when given)."""

    async def heartbeat(
        self, owner: str, *, host: str, pid: int, now: float, lease_seconds: float
    ) -> set[int]:
        """Say `owner` is alive at `now` and extend each of its leases to `now` +
        `lease_seconds`; the seqs of the leases it still holds."""

    async def owners(self) -> list[Owner]:
        """Every dispatching process that has beaten and not retired."""

    async def release_owners(self, owners: Sequence[Owner]) -> int:
        """Free every lease of `owners` (found dead) and forget them, each only if it has not
        beaten since it was read (a compare-and-swap on its heartbeat); how many were freed."""

    async def retire(self, owner: str) -> None:
        """`owner` stops dispatching (its leases are released separately)."""

    async def backlog(self) -> int:
        """How many deliveries wait to be processed (received or failed)."""

    async def get_delivery(self, delivery_id: str) -> DeliveryRecord | None: ...

    async def list_deliveries(
        self,
        *,
        status: DeliveryStatus | None = None,
        source: str | None = None,
        task_id: str | None = None,
        limit: int = 100,
        before_seq: int | None = None,
    ) -> DeliveryPage: ...

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
        """Deliveries in receipt order after `after_seq`: callers stream by keyset, so a
        scan of millions holds one batch in memory at a time."""

    async def dead_ids(self) -> list[str]:
        """Ids of every dead delivery, oldest first."""

    async def requeue(self, delivery_id: str, *, now: float) -> bool | None:
        """Make a failed, dead or quarantined delivery due again.

        True when requeued, False when its status does not allow it, None when unknown.
        """

    async def known_bodies(self, source: str, dedup_keys: Sequence[str]) -> set[str]:
        """Which of `dedup_keys` an original delivery of `source` already carries: a poller
        skips what it has already fed, instead of storing a duplicate row per pass."""

    async def load_cursor(self, source: str) -> str | None:
        """Where `source`'s reconciliation poller got to (its own opaque text)."""

    async def save_cursor(self, source: str, cursor: str, *, now: float) -> None: ...


async def stream_deliveries(
    storage: Storage,
    *,
    status: DeliveryStatus | None = None,
    source: str | None = None,
    since: float | None = None,
    until: float | None = None,
    batch: int = 1000,
) -> AsyncIterator[DeliveryRecord]:
    """Every matching delivery in receipt order, one batch in memory at a time."""
    after = 0
    while True:
        page = await storage.scan_deliveries(
            after_seq=after, limit=batch, status=status, source=source, since=since, until=until
        )
        for record in page:
            yield record
        if len(page) < batch:
            return
        after = page[-1].seq
