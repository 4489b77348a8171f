"""The core schema, defined once as SQLAlchemy Core metadata and compiled per dialect.

SQLite's DDL used to be the one definition, with PostgreSQL's derived from it by regular
expressions (``dialect.to_postgres``). Here the tables, constraints and (partial) indexes are
declared once and the library compiles each dialect's DDL, so the type spellings (``REAL`` /
``DOUBLE PRECISION``, ``BLOB`` / ``BYTEA``, ``AUTOINCREMENT`` / ``BIGSERIAL``) come from the
dialect rather than from text substitution. The metadata describes the final schema reached
by ``sqlite_schema.MIGRATIONS`` 1..4: the same columns in the same order (those added by
``ALTER TABLE`` last), nullability, server defaults, keys and indexes.

Two details mirror the SQLite declarations exactly:

* ``deliveries.seq`` is ``INTEGER PRIMARY KEY AUTOINCREMENT`` on SQLite (a rowid alias that
  is never reused) and ``BIGSERIAL`` on PostgreSQL.
* A single-column primary key declared without ``NOT NULL`` in the migrations is declared
  ``nullable=True`` here, so SQLite reports the same ``notnull`` flag. PostgreSQL makes every
  primary key column NOT NULL regardless, and on SQLite an ``INTEGER PRIMARY KEY`` is the
  rowid, which cannot be NULL either.

Nothing is built at import: `core_metadata()` builds the metadata on first call and caches it.
Treat the returned objects as read-only; they are shared.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Dialect
from sqlalchemy.schema import CreateIndex, CreateTable

from receiver.plugin_store import real

__all__ = ["DIALECTS", "CoreTables", "core_metadata", "core_tables", "ddl"]

DIALECTS: Final = ("sqlite", "postgresql")

# Wait-to-be-dispatched deliveries, as the partial indexes name them.
_PENDING: Final = "status IN ('received', 'failed')"


def _zero() -> sa.TextClause:
    return sa.text("0")


def _where(clause: str) -> dict[str, Any]:
    """The same partial-index predicate for both dialects."""
    return {"sqlite_where": sa.text(clause), "postgresql_where": sa.text(clause)}


def _deliveries(meta: sa.MetaData) -> sa.Table:
    t = sa.Table(
        "deliveries",
        meta,
        sa.Column(
            "seq",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            primary_key=True,
            autoincrement=True,
            nullable=True,  # as declared on SQLite; the rowid / BIGSERIAL is never NULL
        ),
        sa.Column("id", sa.Text, nullable=False, unique=True),
        sa.Column("source", sa.Text, nullable=False),
        sa.Column("kind", sa.Text, nullable=False),
        sa.Column("received_at", real(), nullable=False),
        sa.Column("headers", sa.Text, nullable=False),
        sa.Column("body", sa.LargeBinary),
        sa.Column("content_type", sa.Text, nullable=False, server_default=sa.text("''")),
        sa.Column("dedup_key", sa.Text, nullable=False),
        sa.Column("sender_delivery_id", sa.Text),
        sa.Column("task_id", sa.Text),
        sa.Column("key_index", sa.Integer),
        sa.Column("key_fingerprint", sa.Text),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("duplicate_of", sa.Text),
        sa.Column("replayed", sa.Integer, nullable=False, server_default=_zero()),
        sa.Column("attempts", sa.Integer, nullable=False, server_default=_zero()),
        sa.Column("next_attempt_at", real(), nullable=False, server_default=_zero()),
        sa.Column("lease_owner", sa.Text),
        sa.Column("lease_expires_at", real()),
        sa.Column("last_error", sa.Text),
        sa.Column("last_traceback", sa.Text),
        sa.Column("events_derived", sa.Integer, nullable=False, server_default=_zero()),
        sa.Column("processed_at", real()),
        sa.Column("updated_at", real()),
        # migration 2
        sa.Column("reconciled", sa.Integer, nullable=False, server_default=_zero()),
        # migration 3
        sa.Column("operator", sa.Text),
        # migration 4
        sa.Column("duplicate_count", sa.Integer, nullable=False, server_default=_zero()),
        sa.Column("last_duplicate_at", real()),
        sa.Column("duplicate_rows", sa.Integer, nullable=False, server_default=_zero()),
        sqlite_autoincrement=True,
    )
    c = t.c
    # One original per (source, dedup_key); duplicates are rows of their own pointing at it.
    sa.Index(
        "deliveries_dedup", c.source, c.dedup_key, unique=True, **_where("duplicate_of IS NULL")
    )
    sa.Index("deliveries_pending", c.seq, **_where(_PENDING))
    sa.Index("deliveries_task", c.source, c.task_id, c.seq, **_where(_PENDING))
    sa.Index("deliveries_status", c.status, c.seq)
    sa.Index("deliveries_by_task", c.task_id, c.seq)
    prunable = "body IS NOT NULL AND status IN ('processed', 'dead', 'quarantined')"
    sa.Index("deliveries_prunable", c.status, c.updated_at, c.seq, **_where(prunable))
    sa.Index(
        "deliveries_duplicates", c.status, c.received_at, c.seq, **_where("status = 'duplicate'")
    )
    return t


def _build(meta: sa.MetaData) -> None:
    _deliveries(meta)
    sa.Table(
        "events",
        meta,
        sa.Column("event_id", sa.Text, primary_key=True, nullable=True),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("task_id", sa.Text),
        sa.Column("delivery_id", sa.Text, nullable=False),
        sa.Column("payload", sa.Text, nullable=False),
    )
    # An event id can come from several deliveries (an audit repeated by later snapshots).
    sa.Table(
        "delivery_events",
        meta,
        sa.Column("delivery_id", sa.Text, primary_key=True, nullable=False),
        sa.Column("position", sa.Integer, primary_key=True, nullable=False, autoincrement=False),
        sa.Column("event_id", sa.Text, sa.ForeignKey("events.event_id"), nullable=False),
    )
    sa.Table(
        "handler_runs",
        meta,
        sa.Column("event_id", sa.Text, primary_key=True, nullable=False),
        sa.Column("handler", sa.Text, primary_key=True, nullable=False),
        sa.Column("delivery_id", sa.Text, nullable=False),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False, server_default=sa.text("1")),
        sa.Column("last_error", sa.Text),
        sa.Column("traceback", sa.Text),
        sa.Column("updated_at", real(), nullable=False),
    )
    sa.Table(
        "reconcile_cursors",
        meta,
        sa.Column("source", sa.Text, primary_key=True, nullable=True),
        sa.Column("cursor", sa.Text, nullable=False),
        sa.Column("updated_at", real(), nullable=False),
    )
    heads = sa.Table(
        "dispatch_heads",
        meta,
        sa.Column("source", sa.Text, primary_key=True, nullable=False),
        sa.Column("lane", sa.Text, primary_key=True, nullable=False),
        sa.Column("seq", sa.BigInteger, nullable=False),
        sa.Column("next_attempt_at", real(), nullable=False),
        sa.Column("lease_owner", sa.Text),
        sa.Column("lease_expires_at", real()),
    )
    sa.Index("dispatch_heads_seq", heads.c.seq, unique=True)
    sa.Index("dispatch_heads_due", heads.c.next_attempt_at, heads.c.seq)
    sa.Index("dispatch_heads_owner", heads.c.lease_owner, **_where("lease_owner IS NOT NULL"))
    sa.Table(
        "dispatch_owners",
        meta,
        sa.Column("owner", sa.Text, primary_key=True, nullable=True),
        sa.Column("host", sa.Text, nullable=False),
        sa.Column("pid", sa.Integer, nullable=False),
        sa.Column("started_at", real(), nullable=False),
        sa.Column("heartbeat_at", real(), nullable=False),
    )
    sa.Table(
        "taskhook_probe",  # one row, written by /readyz
        meta,
        sa.Column("id", sa.Integer, primary_key=True, nullable=True, autoincrement=False),
        sa.Column("probed_at", real(), nullable=False),
        sa.Column("room", sa.LargeBinary),
    )
    sa.Table(
        "taskhook_meta",  # the installation's own values (its random key)
        meta,
        sa.Column("name", sa.Text, primary_key=True, nullable=True),
        sa.Column("value", sa.LargeBinary, nullable=False),
    )


@functools.cache
def core_metadata() -> sa.MetaData:
    """The core tables, built on first call and shared afterwards (do not mutate)."""
    meta = sa.MetaData()
    _build(meta)
    return meta


@dataclass(frozen=True, slots=True)
class CoreTables:
    """The core `Table` objects, for building statements against."""

    deliveries: sa.Table
    events: sa.Table
    delivery_events: sa.Table
    handler_runs: sa.Table
    reconcile_cursors: sa.Table
    dispatch_heads: sa.Table
    dispatch_owners: sa.Table
    taskhook_probe: sa.Table
    taskhook_meta: sa.Table


@functools.cache
def core_tables() -> CoreTables:
    tables = core_metadata().tables
    return CoreTables(**{name: tables[name] for name in CoreTables.__slots__})


def _dialect(name: str) -> Dialect:
    if name == "sqlite":
        return sqlite.dialect()
    if name == "postgresql":
        return postgresql.dialect()  # type: ignore[no-untyped-call]
    raise ValueError(f"unknown dialect {name!r}; expected one of {DIALECTS}")


def _seed(name: str) -> sa.Insert:
    """The probe table's one row, inserted only if absent."""
    probe = core_tables().taskhook_probe
    insert = sqlite.insert if name == "sqlite" else postgresql.insert
    return insert(probe).values(id=1, probed_at=0).on_conflict_do_nothing()


def ddl(dialect_name: str, *, if_not_exists: bool = True) -> list[str]:
    """The statements that create the core schema on `dialect_name` ("sqlite" or
    "postgresql"): each table (in foreign-key order) followed by its indexes, then the probe
    row's idempotent insert. With `if_not_exists` (the default) running them again changes
    nothing. Statements carry no trailing semicolon; execute them one by one."""
    dialect = _dialect(dialect_name)
    out: list[str] = []
    for table in core_metadata().sorted_tables:
        out.append(str(CreateTable(table, if_not_exists=if_not_exists).compile(dialect=dialect)))
        for index in sorted(table.indexes, key=lambda i: str(i.name)):
            create = CreateIndex(index, if_not_exists=if_not_exists)
            out.append(str(create.compile(dialect=dialect)))
    seed = _seed(dialect_name).compile(dialect=dialect, compile_kwargs={"literal_binds": True})
    out.append(str(seed))
    return [statement.strip() for statement in out]
