"""The watchdog's table (SQLAlchemy Core) and its migrations, through the plugin API.

One row per expectation: "a callback about this task (or this unique_id) of this source
comes by `deadline`". ``subject`` (``task:<id>`` or ``unique:<id>``) is what it waits for;
at most one *open* expectation (waiting or overdue) exists per (source, subject), enforced
by a partial unique index as well as by the registration's lock, so registering again
moves the deadline of the open one instead of adding another.

States: ``waiting`` → ``overdue`` (the deadline passed; one replica wins the change and
raises ``task.late``) → ``arrived`` (a callback came: from either open state) or
``cancelled`` (an operator withdrew it). ``reconcile`` records the targeted reconcile of
an overdue task: ``pending`` (to ask), ``asking``, ``asked``, ``failed``, or
``skipped: <why>``; it is asked once per deadline. Closed rows are deleted by the sweep
once their deadline is 30 days past.
"""

from __future__ import annotations

import secrets
import time

import sqlalchemy as sa

from receiver.plugin_store import Migration, Tx, real

META = sa.MetaData()
OPEN_STATES = ("waiting", "overdue")
STATES = (*OPEN_STATES, "arrived", "cancelled")


EXPECTED = sa.Table(
    "watchdog_expected",
    META,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("source", sa.Text, nullable=False),
    sa.Column("subject", sa.Text, nullable=False),
    sa.Column("task_id", sa.Text),
    sa.Column("unique_id", sa.Text),
    sa.Column("deadline", real(), nullable=False),
    sa.Column("registered_at", real(), nullable=False),
    sa.Column("registered_by", sa.Text, nullable=False),
    sa.Column("state", sa.Text, nullable=False),
    sa.Column("overdue_at", real()),
    sa.Column("reconcile", sa.Text),
    sa.Column("reconciled_at", real()),
    sa.Column("arrived_at", real()),
    sa.Column("arrived_delivery_id", sa.Text),
    sa.Column("note", sa.Text),
)
_C = EXPECTED.c
_OPEN = sa.text("state IN ('waiting', 'overdue')")
sa.Index(
    "watchdog_expected_open",
    _C.source,
    _C.subject,
    unique=True,
    sqlite_where=_OPEN,
    postgresql_where=_OPEN,
)
# Listing (keyset on deadline, id), the sweep (waiting rows past their deadline) and pruning
# (closed rows long past it). Clearing uses `watchdog_expected_open`, above.
sa.Index("watchdog_expected_state", _C.state, _C.deadline, _C.id)
sa.Index("watchdog_expected_deadline", _C.deadline, _C.id)


async def _v1(tx: Tx) -> None:
    await tx.create(EXPECTED)


MIGRATIONS = (Migration(1, "expected callbacks", _v1),)


def expectation_id() -> str:
    """Unique, and ordered by when it was made (the API's ``id``, the tie-break of paging)."""
    return f"exp_{time.time_ns() // 1000:014x}{secrets.token_hex(6)}"


def subject_of(task_id: str | None, unique_id: str | None) -> str:
    return f"task:{task_id}" if task_id is not None else f"unique:{unique_id}"
