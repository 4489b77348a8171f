"""The ledger's rows of one transaction, held in memory and written once at its end.

A batch of deliveries (distinct tasks, in receipt order) is applied against a `Batch`: the
tasks and unique_id holders it names are loaded with one query each, every delivery reads
and changes the rows in memory as if it were applied alone, in order, and `flush` writes
what changed with one multi-row statement per table. Rows outside the batch (the task a
released unique_id goes to) are loaded, locked, when a delivery needs them.

On PostgreSQL the batch first locks its tasks and unique_ids (`Tx.lock`), so replicas apply
different tasks at the same time and the same task or unique_id one after the other.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from typing import Any

import sqlalchemy as sa

from handlers.ledger.counts import maybe_fold
from handlers.ledger.tables import COUNTED, COUNTS, HISTORY, TASKS, UNIQUE_IDS
from receiver.plugin_store import Tx

Row = dict[str, Any]
COLUMNS = tuple(c.name for c in TASKS.columns)
# Keys big enough for a batch of ids in one statement (padded with a repeat of the last):
# a handful of shapes, each compiled once per dialect.
_SIZES = (1, 8, 32, 128, 256, 512)


def _in_list(column: sa.ColumnElement[Any], n: int) -> sa.ColumnElement[bool]:
    return column.in_([sa.bindparam(f"k{i}") for i in range(n)])


class _Shapes:
    """Statements over a list of keys, one per size of `_SIZES`, built once."""

    def __init__(self, build: Any) -> None:
        self._built = {n: build(n) for n in _SIZES}

    def chunks(self, keys: Sequence[str]) -> Iterable[tuple[Any, dict[str, str]]]:
        for start in range(0, len(keys), _SIZES[-1]):
            part = keys[start : start + _SIZES[-1]]
            size = next(n for n in _SIZES if n >= len(part))
            params = {f"k{i}": part[min(i, len(part) - 1)] for i in range(size)}
            yield self._built[size], params


_LOAD_TASKS = _Shapes(lambda n: sa.select(*TASKS.columns).where(_in_list(TASKS.c.task_id, n)))
_LOAD_HOLDERS = _Shapes(
    lambda n: sa.select(UNIQUE_IDS.c.unique_id, UNIQUE_IDS.c.task_id).where(
        _in_list(UNIQUE_IDS.c.unique_id, n)
    )
)
_UPSERT = sa.text(
    f"INSERT INTO ledger_tasks ({', '.join(COLUMNS)}) "
    f"VALUES ({', '.join(':' + c for c in COLUMNS)}) "
    "ON CONFLICT (task_id) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in COLUMNS if c not in ("task_id", "created_at"))
)
# By the whole key (the table is keyed for listing by tag, not by task).
_DROP_TAG = sa.text(
    "DELETE FROM ledger_task_tags WHERE tag = :tag AND created_at = :created_at "
    "AND task_id = :task_id"
)
_ADD_TAG = sa.text(
    "INSERT INTO ledger_task_tags (tag, created_at, task_id) VALUES (:tag, :created_at, :task_id) "
    "ON CONFLICT DO NOTHING"
)
_UNBIND = sa.text("DELETE FROM ledger_unique_ids WHERE unique_id = :unique_id")
_BIND = sa.text(
    "INSERT INTO ledger_unique_ids (unique_id, task_id, bound_at) "
    "VALUES (:unique_id, :task_id, :bound_at) "
    "ON CONFLICT (unique_id) DO UPDATE SET task_id = excluded.task_id, bound_at = excluded.bound_at"
)
_HISTORY = sa.insert(HISTORY).values(
    task_id=sa.bindparam("task_id"),
    delivery_id=sa.bindparam("delivery_id"),
    kind=sa.bindparam("kind"),
    name=sa.bindparam("name"),
    event_id=sa.bindparam("event_id"),
    detail=sa.bindparam("detail"),
    at=sa.bindparam("at"),
)
_COUNT = sa.insert(COUNTS).values({c: sa.bindparam(c) for c in (*COUNTED, "n")})
_CLAIMANTS = sa.text(
    "SELECT task_id FROM ledger_tasks WHERE claimed_unique_id = :unique_id AND task_id != :task_id"
)


def task_key(task_id: str) -> str:
    return f"ledger:task:{task_id}"


def unique_key(unique_id: str) -> str:
    return f"ledger:uid:{unique_id}"


class Batch:
    """Ledger rows of one transaction; see the module docstring."""

    def __init__(self, tx: Tx) -> None:
        self.tx = tx
        self._rows: dict[str, Row | None] = {}
        self._loaded: dict[str, tuple[Any, ...] | None] = {}  # counted columns as loaded
        self._tags_loaded: dict[str, list[str]] = {}
        self._tags: dict[str, list[str]] = {}
        self._dirty: set[str] = set()
        self._holders: dict[str, str | None] = {}
        self._holders_loaded: dict[str, str | None] = {}
        self._history: list[Row] = []
        self._locked: set[str] = set()

    async def lock(self, keys: Iterable[str]) -> None:
        wanted = [k for k in keys if k not in self._locked]
        if wanted:
            await self.tx.lock(wanted)
            self._locked.update(wanted)

    async def load(self, task_ids: Iterable[str]) -> None:
        """Lock and load the tasks not yet held (missing ones are None)."""
        wanted = sorted({t for t in task_ids if t not in self._rows})
        if not wanted:
            return
        await self.lock(task_key(t) for t in wanted)
        for t in wanted:
            self._rows[t] = None
            self._loaded[t] = None
        for statement, params in _LOAD_TASKS.chunks(wanted):
            for found in await self.tx.fetch(statement, params):
                row = dict(zip(COLUMNS, found, strict=True))
                self._rows[row["task_id"]] = row
                self._loaded[row["task_id"]] = tuple(row[c] for c in COUNTED)

    async def load_holders(self, unique_ids: Iterable[str]) -> None:
        wanted = sorted({u for u in unique_ids if u not in self._holders})
        if not wanted:
            return
        await self.lock(unique_key(u) for u in wanted)
        for u in wanted:
            self._holders[u] = self._holders_loaded[u] = None
        for statement, params in _LOAD_HOLDERS.chunks(wanted):
            for unique_id, task_id in await self.tx.fetch(statement, params):
                self._holders[unique_id] = self._holders_loaded[unique_id] = task_id

    def row(self, task_id: str) -> Row | None:
        """The task's row as the batch has it now (it must have been loaded)."""
        return self._rows[task_id]

    def put(self, row: Row, *, tags: list[str], prior_tags: list[str]) -> None:
        """Replace the task's row; `tags` its tags now, `prior_tags` those of the row it
        replaces (the caller has both parsed already)."""
        task_id = row["task_id"]
        self._tags_loaded.setdefault(task_id, prior_tags)
        self._tags[task_id] = tags
        self._rows[task_id] = row
        self._dirty.add(task_id)

    def holder(self, unique_id: str) -> str | None:
        return self._holders[unique_id]

    def bind(self, unique_id: str, task_id: str | None) -> None:
        self._holders[unique_id] = task_id

    def history(
        self,
        task_id: str,
        delivery_id: str | None,
        kind: str,
        detail: str,
        *,
        name: str | None = None,
        event: str | None = None,
    ) -> None:
        self._history.append({
            "task_id": task_id, "delivery_id": delivery_id, "kind": kind, "name": name,
            "event_id": event, "detail": detail, "at": time.time(),
        })  # fmt: skip

    async def claimant(self, unique_id: str, released_by: str) -> str | None:
        """The newest task (by created_at, then id) that claimed `unique_id` while another
        held it, loaded and locked; None if none did."""
        while True:
            found: set[str] = {
                str(r[0])
                for r in await self.tx.fetch(
                    _CLAIMANTS, {"unique_id": unique_id, "task_id": released_by}
                )
            }
            # What this batch changed wins over what the database still says.
            found = {t for t in found if t not in self._rows or self._claims(t, unique_id)}
            found |= {t for t in self._rows if t != released_by and self._claims(t, unique_id)}
            if not found:
                return None
            await self.load(found)
            still = [t for t in found if self._claims(t, unique_id)]
            if len(still) == len(found):
                return max(still, key=self._age)

    def _age(self, task_id: str) -> tuple[str, str]:
        row = self._rows[task_id]
        assert row is not None
        return (str(row["created_at"]), task_id)

    def _claims(self, task_id: str, unique_id: str) -> bool:
        row = self._rows.get(task_id)
        return row is not None and row["claimed_unique_id"] == unique_id

    async def flush(self) -> None:
        """Write everything the batch changed."""
        tx = self.tx
        dirty = sorted(self._dirty)
        rows = [self._rows[t] for t in dirty]
        await tx.executemany(_UPSERT, [r for r in rows if r is not None])
        drop: list[Row] = []
        add: list[Row] = []
        for row in rows:
            assert row is not None
            tags = self._tags[row["task_id"]]
            before = self._tags_loaded.get(row["task_id"], [])
            if tags != before:
                key = {"created_at": row["created_at"], "task_id": row["task_id"]}
                drop += [key | {"tag": t} for t in dict.fromkeys(before) if t not in tags]
                add += [key | {"tag": t} for t in dict.fromkeys(tags) if t not in before]
        await tx.executemany(_DROP_TAG, drop)
        await tx.executemany(_ADD_TAG, add)
        unbind = [u for u, t in self._holders.items() if t is None and self._holders_loaded[u]]
        bind = [(u, t) for u, t in self._holders.items()
                if t is not None and t != self._holders_loaded[u]]  # fmt: skip
        await tx.executemany(_UNBIND, [{"unique_id": u} for u in unbind])
        now = time.time()
        await tx.executemany(
            _BIND, [{"unique_id": u, "task_id": t, "bound_at": now} for u, t in bind]
        )
        await tx.executemany(_HISTORY, self._history)
        await tx.executemany(_COUNT, self._count_deltas(dirty))
        await maybe_fold(tx)
        self._history = []
        self._dirty.clear()
        self._holders_loaded = dict(self._holders)
        for t in dirty:
            row = self._rows[t]
            self._loaded[t] = tuple(row[c] for c in COUNTED) if row else None
            self._tags_loaded[t] = self._tags.get(t, [])

    def _count_deltas(self, dirty: Sequence[str]) -> list[Row]:
        delta: dict[tuple[Any, ...], int] = {}
        for t in dirty:
            before = self._loaded.get(t)
            row = self._rows[t]
            after = tuple(row[c] for c in COUNTED) if row else None
            if before == after:
                continue
            if before is not None:
                delta[before] = delta.get(before, 0) - 1
            if after is not None:
                delta[after] = delta.get(after, 0) + 1
        return [dict(zip(COUNTED, k, strict=True)) | {"n": n} for k, n in delta.items() if n]
