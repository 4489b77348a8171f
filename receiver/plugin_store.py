"""The storage API of plugins: tables, migrations, transactions and queries (public).

A stateful plugin (the built-in ledgers, or yours) keeps its state in the app's database,
on SQLite or PostgreSQL alike, through `registry.storage`, a `PluginStorage`:

- it **declares** its tables as SQLAlchemy Core `Table`s and a numbered history of
  `Migration`s under a component name (``storage.declare("mine", [Migration(1, ...)])``);
  the app applies what a database lacks at start-up and in ``taskhook migrate``, once, even
  when several replicas start together;
- it **writes** in transactions: ``await storage.transaction(op)`` runs ``async def op(tx)``
  and commits everything `op` did at once; on SQLite inside the app's group commit, on
  PostgreSQL on a pooled connection of its own;
- it **reads** with ``await storage.query(statement, params)``.

Statements are SQLAlchemy Core constructs (``select``, ``insert``, ``text(...)`` with
``:name`` parameters); each is compiled once per dialect by SQLAlchemy and run on the raw
driver connection, so a hot statement costs what hand-written SQL costs. Define statements
once (at module level or at registration) rather than per call: compiled forms are cached
by statement object.

A plugin never writes core tables. What it needs from the core is a call on the transaction:
`Tx.save_events`, `Tx.derived`, `Tx.store_delivery`, `Tx.pending`. An interpreter (see
`HandlerRegistry.interpret`) receives the core's transaction for a batch of deliveries: its
writes, the batch's events and the deliveries' new state commit together.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeVar

if TYPE_CHECKING:
    from sqlalchemy.sql.expression import ClauseElement
    from sqlalchemy.types import TypeEngine

    from receiver.events import Event
    from receiver.records import DeliveryRecord, NewDelivery

T = TypeVar("T")
Dialect = Literal["sqlite", "postgresql"]
Params = Mapping[str, Any]
Row = Sequence[Any]
"""A result row: a tuple (SQLite) or an asyncpg Record; index it by position."""


def real() -> TypeEngine[float]:
    """The column type for floats (epoch seconds): ``REAL`` on SQLite, ``DOUBLE PRECISION``
    on PostgreSQL, whose ``REAL`` keeps 24 bits and would round times to minutes."""
    import sqlalchemy as sa

    return sa.Double().with_variant(sa.REAL(), "sqlite")


@dataclass(frozen=True, slots=True)
class Migration:
    """Step `version` of a component's schema: `up` brings version - 1 to `version`.

    Versions start at 1 and follow each other. `up` runs in a transaction of its own and is
    recorded in that transaction, so a step is applied entirely or not at all.
    """

    version: int
    description: str
    up: Callable[[Tx], Awaitable[None]]


class Tx(Protocol):
    """One transaction. Every method runs a statement in it; nothing is visible to others
    before the transaction commits."""

    @property
    def dialect(self) -> Dialect: ...

    async def execute(self, statement: ClauseElement, params: Params | None = None) -> int:
        """Run a statement; the number of rows it changed."""

    async def executemany(self, statement: ClauseElement, rows: Sequence[Params]) -> None:
        """Run a statement once per parameter set (one round trip where the driver can)."""

    async def fetch(self, statement: ClauseElement, params: Params | None = None) -> list[Row]:
        """Rows of a query (or of a statement with RETURNING)."""

    async def fetchone(self, statement: ClauseElement, params: Params | None = None) -> Row | None:
        """The first row, or None."""

    async def lock(self, keys: Iterable[str]) -> None:
        """Hold a write lock on each key until this transaction ends.

        Two transactions naming a common key run one after the other; others run at once.
        Keys are the plugin's own names (``"task:<id>"``); take them before reading what
        they guard, and all at once: they are taken in one fixed order, so two transactions
        never wait on each other in a cycle. (PostgreSQL: transaction advisory locks;
        SQLite has one writer, so every transaction holds them all.)
        """

    async def create(self, *elements: Any) -> None:
        """Create `Table`s and `Index`es that do not exist yet (in migrations)."""

    # The core's half: what plugins need of core tables, as calls.

    async def derived(self, delivery_ids: Sequence[str]) -> dict[str, list[Event]]:
        """The events of those of `delivery_ids` that were already interpreted."""

    async def save_events(self, delivery_id: str, events: Sequence[Event]) -> None:
        """Persist a delivery's events and mark it interpreted, with this transaction."""

    async def store_delivery(self, delivery: NewDelivery) -> DeliveryRecord:
        """Store a new delivery (an operator's action) in this transaction; the dispatcher
        gives its events to handlers after the commit."""

    async def pending(self, kind: str, task_id: str) -> list[DeliveryRecord]:
        """Deliveries of `kind` about `task_id` not yet interpreted, in receipt order."""


class PluginStorage(Protocol):
    """The app's database, as plugins see it (`registry.storage`)."""

    @property
    def dialect(self) -> Dialect: ...

    def declare(self, component: str, migrations: Sequence[Migration]) -> None:
        """Own `component`'s schema history; applied when the app opens its storage.
        Call it from ``register(registry)``."""

    async def transaction(self, op: Callable[[Tx], Awaitable[T]]) -> T:
        """Run `op` in a write transaction and commit; `op`'s exception rolls it back.

        `op` may be run again when the database asks for it (a deadlock between replicas
        on PostgreSQL): keep what it does inside the transaction. On SQLite `op` runs inside
        the app's group commit and may await only `tx`'s methods.
        """

    async def query(self, statement: ClauseElement, params: Params | None = None) -> list[Row]:
        """Rows of a read-only query, outside any transaction."""

    async def rederive(self, kinds: Sequence[str]) -> int:
        """Mark every stored delivery of `kinds` as not yet interpreted (a plugin that
        emptied its state for ``taskhook rebuild``); how many were marked."""


__all__ = ["Dialect", "Migration", "Params", "PluginStorage", "Row", "Tx"]
