"""The ledger's tables (SQLAlchemy Core) and their migrations, through the plugin API.

Version 1 is the schema the ledger has had since its first release, created where it does
not exist (a database of the previous release is adopted as it is). Version 2 replaces the
global ``ledger_meta.generation`` — one row every apply updated, which serialized every
writer of every replica — with ``ledger_counts``: per-filter task counts kept as delta rows
that appliers only append (no row is ever contended) and that are folded now and then.
"""

from __future__ import annotations

from datetime import UTC, datetime

import orjson
import sqlalchemy as sa

from receiver.plugin_store import Migration, Tx, real

META = sa.MetaData()


TASKS = sa.Table(
    "ledger_tasks",
    META,
    sa.Column("task_id", sa.Text, primary_key=True),
    sa.Column("source", sa.Text, nullable=False),
    sa.Column("status", sa.Text, nullable=False),
    sa.Column("type", sa.Text),
    sa.Column("project", sa.Text),
    sa.Column("batch", sa.Text),
    sa.Column("unique_id", sa.Text),
    sa.Column("claimed_unique_id", sa.Text),
    sa.Column("customer_review_status", sa.Text),
    sa.Column("created_at", sa.Text, nullable=False),
    sa.Column("updated_at", sa.Text),
    sa.Column("task", sa.Text, nullable=False),
    sa.Column("response", sa.Text),
    sa.Column("version", sa.Text, nullable=False),
    sa.Column("audits", sa.Text, nullable=False),
    sa.Column("last_delivery_id", sa.Text),
    sa.Column("ledger_updated_at", real(), nullable=False),
    # Version 3 (a database of an earlier version has it added by `_v3`).
    sa.Column("completed_at", sa.Text),
)
_T = TASKS.c
sa.Index("ledger_tasks_created", _T.created_at, _T.task_id)
sa.Index("ledger_tasks_status", _T.status, _T.created_at, _T.task_id)
sa.Index("ledger_tasks_project", _T.project, _T.created_at, _T.task_id)
sa.Index("ledger_tasks_batch", _T.batch, _T.created_at, _T.task_id)
sa.Index("ledger_tasks_type", _T.type, _T.created_at, _T.task_id)
sa.Index("ledger_tasks_unique", _T.unique_id, _T.created_at, _T.task_id)
sa.Index("ledger_tasks_review", _T.customer_review_status, _T.created_at, _T.task_id)
sa.Index("ledger_tasks_updated", _T.updated_at)
_CLAIMED = sa.text("claimed_unique_id IS NOT NULL")
sa.Index(
    "ledger_tasks_claims",
    _T.claimed_unique_id,
    sqlite_where=_CLAIMED,
    postgresql_where=_CLAIMED,
)
# Retention keeps the delivery each task was last applied from; the pruner asks "which of
# these ids are kept?" one id at a time.
sa.Index("ledger_tasks_last_delivery", _T.last_delivery_id)

TAGS = sa.Table(
    "ledger_task_tags",
    META,
    sa.Column("tag", sa.Text, primary_key=True),
    sa.Column("created_at", sa.Text, primary_key=True),
    sa.Column("task_id", sa.Text, primary_key=True),
)
UNIQUE_IDS = sa.Table(
    "ledger_unique_ids",
    META,
    sa.Column("unique_id", sa.Text, primary_key=True),
    sa.Column("task_id", sa.Text, nullable=False),
    sa.Column("bound_at", real(), nullable=False),
)
HISTORY = sa.Table(
    "ledger_history",
    META,
    sa.Column("seq", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True),
    sa.Column("task_id", sa.Text, nullable=False),
    sa.Column("delivery_id", sa.Text),
    sa.Column("kind", sa.Text, nullable=False),
    sa.Column("name", sa.Text),
    sa.Column("event_id", sa.Text),
    sa.Column("detail", sa.Text, nullable=False),
    sa.Column("at", real(), nullable=False),
    sqlite_autoincrement=True,
)
sa.Index("ledger_history_task", HISTORY.c.task_id, HISTORY.c.seq)
# Counts of tasks per combination of the filterable columns of low cardinality, as delta
# rows: (status, project, batch, type, review) -> n. A filter on any subset of them sums
# the matching rows (hundreds, not millions).
COUNTS = sa.Table(
    "ledger_counts",
    META,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True),
    sa.Column("status", sa.Text),
    sa.Column("project", sa.Text),
    sa.Column("batch", sa.Text),
    sa.Column("type", sa.Text),
    sa.Column("customer_review_status", sa.Text),
    sa.Column("n", sa.BigInteger, nullable=False),
)
COUNTED = ("status", "project", "batch", "type", "customer_review_status")

_SEED_COUNTS = sa.text(
    "INSERT INTO ledger_counts (status, project, batch, type, customer_review_status, n) "
    "SELECT status, project, batch, type, customer_review_status, count(*) FROM ledger_tasks "
    "GROUP BY status, project, batch, type, customer_review_status"
)


async def _v1(tx: Tx) -> None:
    await tx.create(TASKS, TAGS, UNIQUE_IDS, HISTORY)


async def _v2(tx: Tx) -> None:
    await tx.execute(sa.text("DROP TABLE IF EXISTS ledger_meta"))
    await tx.create(COUNTS)
    await tx.execute(_SEED_COUNTS)


_HAS_COLUMN = {
    "sqlite": sa.text("SELECT count(*) FROM pragma_table_info('ledger_tasks') WHERE name = :c"),
    "postgresql": sa.text(
        "SELECT count(*) FROM information_schema.columns "
        "WHERE table_name = 'ledger_tasks' AND column_name = :c"
    ),
}
_WITHOUT_COMPLETED = sa.text(
    "SELECT task_id, task FROM ledger_tasks WHERE completed_at IS NULL AND task_id > :after "
    "ORDER BY task_id LIMIT 2000"
)
_SET_COMPLETED = sa.text("UPDATE ledger_tasks SET completed_at = :at WHERE task_id = :task_id")


async def _v3(tx: Tx) -> None:
    """completed_at as a column (the SDK's completed_after / completed_before filters)."""
    found = await tx.fetchone(_HAS_COLUMN[tx.dialect], {"c": "completed_at"})
    if found is None or not found[0]:
        await tx.execute(sa.text("ALTER TABLE ledger_tasks ADD COLUMN completed_at TEXT"))
    await tx.execute(sa.text(
        "CREATE INDEX IF NOT EXISTS ledger_tasks_completed ON ledger_tasks (completed_at)"
    ))  # fmt: skip
    after = ""
    while rows := await tx.fetch(_WITHOUT_COMPLETED, {"after": after}):
        # The snapshot's own value, normalized as every time column is (text order = time).
        await tx.executemany(_SET_COMPLETED, [
            {"task_id": task_id, "at": completed_at(orjson.loads(task))}
            for task_id, task in rows
        ])  # fmt: skip
        after = rows[-1][0]


def completed_at(task: dict[str, object]) -> str | None:
    value = task.get("completed_at")
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    aware = parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    return aware.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


MIGRATIONS = (
    Migration(1, "tasks, tags, unique_id bindings, history", _v1),
    Migration(2, "per-filter task counts instead of one global generation row", _v2),
    Migration(3, "completed_at of each task, indexed", _v3),
)
