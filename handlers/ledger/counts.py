"""List totals: exact, without counting millions of rows, and without a row every writer
updates.

Filters on the columns of `tables.COUNTED` (status, project, batch, type, review status) are
answered from ``ledger_counts``: appliers append one delta row per combination their batch
changed (never updating a shared row, so writers of different replicas never wait on each
other), and now and then a batch folds the rows into one per combination. A total is the sum
of the matching rows. Other filters (tag, unique_id, times) count the matching tasks through
their index, cached until the ledger's history moves on (on PostgreSQL also for at most a
couple of seconds, since transactions commit in any order).
"""

from __future__ import annotations

import random
import time
from collections.abc import Mapping, Sequence
from typing import Any

import sqlalchemy as sa

from handlers.ledger.tables import COUNTED
from receiver.plugin_store import PluginStorage, Tx

FOLD_EVERY = 50  # batches, on average
_DIMS = ", ".join(COUNTED)
_FOLD_PG = sa.text(
    f"WITH gone AS (DELETE FROM ledger_counts RETURNING {_DIMS}, n) "
    f"INSERT INTO ledger_counts ({_DIMS}, n) SELECT {_DIMS}, sum(n) FROM gone "
    f"GROUP BY {_DIMS} HAVING sum(n) <> 0"
)
_SUMS = sa.text(f"SELECT {_DIMS}, sum(n) FROM ledger_counts GROUP BY {_DIMS} HAVING sum(n) <> 0")
_CLEAR = sa.text("DELETE FROM ledger_counts")
_ADD = sa.text(
    f"INSERT INTO ledger_counts ({_DIMS}, n) VALUES ({', '.join(':' + c for c in COUNTED)}, :n)"
)
_MARK = sa.text("SELECT max(seq) FROM ledger_history")
_STALE_SECONDS = 2.0


async def fold(tx: Tx) -> None:
    """One row per combination instead of one per batch that changed it."""
    if tx.dialect == "postgresql":
        # One statement: rows appended meanwhile are not in its snapshot, so not deleted.
        await tx.execute(_FOLD_PG)
        return
    rows = await tx.fetch(_SUMS)  # SQLite: one writer, nothing appends meanwhile
    await tx.execute(_CLEAR)
    await tx.executemany(_ADD, [dict(zip((*COUNTED, "n"), r, strict=True)) for r in rows])


async def maybe_fold(tx: Tx) -> None:
    if random.random() < 1 / FOLD_EVERY:
        await fold(tx)


async def reset_counts(tx: Tx) -> None:
    await tx.execute(_CLEAR)


class Totals:
    """Exact list totals for a filter set (see the module docstring)."""

    def __init__(self, storage: PluginStorage, size: int = 256) -> None:
        self._storage = storage
        self._size = size
        self._cubes: dict[tuple[str, ...], sa.TextClause] = {}
        self._counted: dict[tuple[Any, ...], tuple[Any, float, int]] = {}

    async def total(
        self,
        filters: Mapping[str, Sequence[str]],
        count: sa.TextClause,
        args: Mapping[str, Any],
    ) -> int:
        """`filters`: the listing's filters and their values; `count`/`args`: its exact
        COUNT query."""
        if set(filters) <= set(COUNTED) and all(len(v) == 1 for v in filters.values()):
            names = tuple(sorted(filters))
            rows = await self._storage.query(self._cube(names), {n: filters[n][0] for n in names})
            return int(rows[0][0] or 0)
        mark = (await self._storage.query(_MARK))[0][0]
        key = (count.text, tuple(sorted(args.items())))
        cached = self._counted.get(key)
        fresh = self._storage.dialect == "sqlite" or (
            cached is not None and time.monotonic() - cached[1] < _STALE_SECONDS
        )
        if cached is not None and cached[0] == mark and fresh:
            return cached[2]
        n = int((await self._storage.query(count, args))[0][0])
        if len(self._counted) >= self._size:
            self._counted.pop(next(iter(self._counted)))
        self._counted[key] = (mark, time.monotonic(), n)
        return n

    def _cube(self, names: tuple[str, ...]) -> sa.TextClause:
        statement = self._cubes.get(names)
        if statement is None:
            where = " AND ".join(f"{n} = :{n}" for n in names) or "1 = 1"
            statement = sa.text(f"SELECT sum(n) FROM ledger_counts WHERE {where}")
            self._cubes[names] = statement
        return statement
