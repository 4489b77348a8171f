"""Expectations in the database: register, list, cancel, clear, and the periodic sweep.

Every change of state is one conditional statement (``... WHERE state IN (...)``), so it
happens once whoever tries it: the dispatcher retrying the clearing handler, or several
replicas sweeping the same database. Registration and the sweep also take a named lock
(`Tx.lock`) so that replicas doing the same thing at once take turns instead of racing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from functools import cache
from typing import Any

import sqlalchemy as sa

from handlers.watchdog import arrivals
from handlers.watchdog.tables import EXPECTED, expectation_id, subject_of
from receiver import times
from receiver.plugin_store import PluginStorage, Row, Tx

_C = EXPECTED.c
_OPEN = "state IN ('waiting', 'overdue')"
_ALL = sa.select(*EXPECTED.c)
_BY_ID = _ALL.where(_C.id == sa.bindparam("id"))
_OPEN_ONE = sa.text(f"SELECT id FROM watchdog_expected WHERE source = :source AND subject = "
                    f":subject AND {_OPEN}")  # fmt: skip
_INSERT = sa.insert(EXPECTED)
_REARM = (
    sa.update(EXPECTED)
    .where(_C.id == sa.bindparam("row_id"))
    .values(deadline=sa.bindparam("deadline"), state="waiting", overdue_at=None, reconcile=None,
            reconciled_at=None)
)  # fmt: skip
_RENOTE = (
    sa.update(EXPECTED).where(_C.id == sa.bindparam("row_id")).values(note=sa.bindparam("note"))
)
_CANCEL = sa.text(f"UPDATE watchdog_expected SET state = 'cancelled' WHERE id = :id AND {_OPEN}")
_ARRIVE = sa.text(
    "UPDATE watchdog_expected SET state = 'arrived', arrived_at = :now, "
    f"arrived_delivery_id = :delivery WHERE id = :id AND {_OPEN}"
)
# Clearing looks expectations up by (source, subject) among the open ones: the partial
# unique index `watchdog_expected_open`, whatever the closed rows of a task or unique_id.
_ARRIVE_SUBJECT = sa.text(
    "UPDATE watchdog_expected SET state = 'arrived', arrived_at = :now, "
    "arrived_delivery_id = :delivery, task_id = COALESCE(task_id, :task) "
    f"WHERE source = :source AND subject = :subject AND {_OPEN}"
).bindparams(sa.bindparam("task", type_=sa.Text))  # typed: it may be None
_EXPECTING = sa.text(
    f"SELECT 1 FROM watchdog_expected WHERE source = :source AND subject = :subject AND {_OPEN}"
)
# ';' follows ':' in ASCII: every subject "unique:..." of the source, a range of that index.
_EXPECTING_UNIQUE = sa.text(
    "SELECT 1 FROM watchdog_expected WHERE source = :source AND subject >= 'unique:' "
    f"AND subject < 'unique;' AND {_OPEN} LIMIT 1"
)
# The sources with open expectations (the state index serves it; a handful of rows).
_WATCHED = sa.text(f"SELECT DISTINCT source FROM watchdog_expected WHERE {_OPEN}")
KEEP_CLOSED = 30 * 86400.0
_PRUNE = sa.text(
    "DELETE FROM watchdog_expected WHERE state IN ('arrived', 'cancelled') AND deadline < :before"
)
_DUE = (
    _ALL.where(_C.state == "waiting", _C.deadline <= sa.bindparam("now"))
    .order_by(_C.deadline, _C.id)
    .limit(sa.bindparam("limit"))
)
_OVERDUE = sa.text(
    "UPDATE watchdog_expected SET state = 'overdue', overdue_at = :now, reconcile = :reconcile "
    "WHERE id = :id AND state = 'waiting' AND deadline <= :now"
)
_TO_ASK = (
    _ALL.where(_C.state == "overdue", _C.reconcile == "pending")
    .order_by(_C.overdue_at, _C.id)
    .limit(sa.bindparam("limit"))
)
_ASKING = sa.text(
    "UPDATE watchdog_expected SET reconcile = 'asking', reconciled_at = :now "
    "WHERE id = :id AND reconcile = 'pending' AND state = 'overdue'"
)
_ASKED = sa.text("UPDATE watchdog_expected SET reconcile = :result WHERE id = :id")


def iso(at: float | None) -> str | None:
    return None if at is None else times.iso(at)


@dataclass(frozen=True, slots=True)
class Want:
    """One task (or unique_id) a registration names."""

    task_id: str | None = None
    unique_id: str | None = None


@dataclass(frozen=True, slots=True)
class Expectation:
    id: str
    source: str
    subject: str
    task_id: str | None
    unique_id: str | None
    deadline: float
    registered_at: float
    registered_by: str
    state: str
    overdue_at: float | None
    reconcile: str | None
    reconciled_at: float | None
    arrived_at: float | None
    arrived_delivery_id: str | None
    note: str | None

    @classmethod
    def of(cls, row: Row) -> Expectation:
        return cls(*row)

    @property
    def key(self) -> str:
        """The `Signal` key of its ``task.late``: ``SOURCE/TASK`` or ``SOURCE/unique:ID``."""
        if self.subject.startswith("task:"):
            return f"{self.source}/{self.task_id}"
        return f"{self.source}/unique:{self.unique_id}"

    def view(self) -> dict[str, Any]:
        """As the API and ``taskhook expect --json`` show it."""
        return {
            "id": self.id, "source": self.source, "task_id": self.task_id,
            "unique_id": self.unique_id, "state": self.state, "deadline": iso(self.deadline),
            "registered_at": iso(self.registered_at), "registered_by": self.registered_by,
            "overdue_at": iso(self.overdue_at), "reconcile": self.reconcile,
            "reconciled_at": iso(self.reconciled_at), "arrived_at": iso(self.arrived_at),
            "arrived_delivery_id": self.arrived_delivery_id, "note": self.note,
        }  # fmt: skip


@cache
def page_statement(state: bool, source: bool, after: bool) -> sa.Select[Any]:
    """Keyset page by (deadline, id), optionally one state and one source (built once)."""
    query = _ALL
    if state:
        query = query.where(_C.state == sa.bindparam("state"))
    if source:
        query = query.where(_C.source == sa.bindparam("source"))
    if after:
        d = sa.bindparam("after_deadline", type_=EXPECTED.c.deadline.type)
        i = sa.bindparam("after_id", type_=sa.Text)
        query = query.where(sa.or_(_C.deadline > d, sa.and_(_C.deadline == d, _C.id > i)))
    return query.order_by(_C.deadline, _C.id).limit(sa.bindparam("limit"))


@cache
def count_statement(state: bool, source: bool) -> sa.Select[Any]:
    query = sa.select(sa.func.count()).select_from(EXPECTED)
    if state:
        query = query.where(_C.state == sa.bindparam("state"))
    if source:
        query = query.where(_C.source == sa.bindparam("source"))
    return query


class Expectations:
    def __init__(self, storage: PluginStorage) -> None:
        self._storage = storage
        #: Sources with open expectations, as this process last read them (`refresh_watched`)
        #: or registered them: the clearing handler skips events of the other sources.
        self.watched: frozenset[str] = frozenset()

    async def refresh_watched(self) -> None:
        self.watched = frozenset(str(r[0]) for r in await self._storage.query(_WATCHED))

    async def register(
        self, source: str, wants: Sequence[Want], *, deadline: float, who: str,
        note: str | None, now: float,
    ) -> list[Expectation]:  # fmt: skip
        """Expect each of `wants`: a new row, or the open one's deadline moved (and it
        waits again). A task whose callback already came is registered as arrived."""

        async def op(tx: Tx) -> list[Expectation]:
            await tx.lock([f"watchdog:{source}"])
            done = []
            for want in wants:
                row_id = await self._one(tx, source, want, deadline, who, note, now)
                row = await tx.fetchone(_BY_ID, {"id": row_id})
                assert row is not None  # written just now, in this transaction
                done.append(Expectation.of(row))
            return done

        registered = await self._storage.transaction(op)
        if any(e.state in ("waiting", "overdue") for e in registered):
            self.watched = self.watched | {source}
        return registered

    async def _one(
        self, tx: Tx, source: str, want: Want, deadline: float, who: str, note: str | None,
        now: float,
    ) -> str:  # fmt: skip
        subject = subject_of(want.task_id, want.unique_id)
        existing = await tx.fetchone(_OPEN_ONE, {"source": source, "subject": subject})
        if existing is not None:
            row_id = str(existing[0])
            await tx.execute(_REARM, {"row_id": row_id, "deadline": deadline})
            if note is not None:
                await tx.execute(_RENOTE, {"row_id": row_id, "note": note})
            return row_id
        came = await arrivals.latest(tx, source, want.task_id) if want.task_id else None
        row_id = expectation_id()
        await tx.execute(_INSERT, {
            "id": row_id, "source": source, "subject": subject, "task_id": want.task_id,
            "unique_id": want.unique_id, "deadline": deadline, "registered_at": now,
            "registered_by": who, "state": "arrived" if came else "waiting",
            "overdue_at": None, "reconcile": None, "reconciled_at": None,
            "arrived_at": now if came else None, "arrived_delivery_id": came, "note": note,
        })  # fmt: skip
        return row_id

    async def get(self, expectation_id: str) -> Expectation | None:
        rows = await self._storage.query(_BY_ID, {"id": expectation_id})
        return Expectation.of(rows[0]) if rows else None

    async def page(
        self, *, state: str | None, source: str | None, limit: int,
        after: tuple[float, str] | None = None,
    ) -> tuple[list[Expectation], bool, int]:  # fmt: skip
        """Up to `limit` expectations by deadline after the keyset `after`; whether more
        follow, and how many match in all."""
        params: dict[str, Any] = {"state": state, "source": source, "limit": limit + 1}
        if after is not None:
            params |= {"after_deadline": after[0], "after_id": after[1]}
        statement = page_statement(state is not None, source is not None, after is not None)
        rows = [Expectation.of(r) for r in await self._storage.query(statement, params)]
        counted = await self._storage.query(
            count_statement(state is not None, source is not None), params
        )
        return rows[:limit], len(rows) > limit, int(counted[0][0])

    async def cancel(self, expectation_id: str) -> Expectation | None:
        async def op(tx: Tx) -> None:
            await tx.execute(_CANCEL, {"id": expectation_id})

        await self._storage.transaction(op)
        return await self.get(expectation_id)

    async def expecting_task(self, source: str, task_id: str) -> bool:
        params = {"source": source, "subject": subject_of(task_id, None)}
        return bool(await self._storage.query(_EXPECTING, params))

    async def expecting_unique(self, source: str) -> bool:
        return bool(await self._storage.query(_EXPECTING_UNIQUE, {"source": source}))

    async def arrive_task(self, source: str, task_id: str, delivery_id: str, now: float) -> int:
        return await self._arrive(source, subject_of(task_id, None), None, delivery_id, now)

    async def arrive_unique(
        self, source: str, unique_id: str, task_id: str | None, delivery_id: str, now: float
    ) -> int:
        """Clear the open expectation of `unique_id`, noting the task that named it."""
        return await self._arrive(source, subject_of(None, unique_id), task_id, delivery_id, now)

    async def _arrive(
        self, source: str, subject: str, task_id: str | None, delivery_id: str, now: float
    ) -> int:
        async def op(tx: Tx) -> int:
            return await tx.execute(_ARRIVE_SUBJECT, {
                "source": source, "subject": subject, "task": task_id, "delivery": delivery_id,
                "now": now,
            })  # fmt: skip

        return await self._storage.transaction(op)

    async def prune(self, now: float) -> int:
        """Forget expectations closed (arrived, cancelled) whose deadline is a month past."""

        async def op(tx: Tx) -> int:
            return await tx.execute(_PRUNE, {"before": now - KEEP_CLOSED})

        return await self._storage.transaction(op)

    async def sweep(
        self, now: float, plan: Callable[[Expectation], str], *, limit: int = 500
    ) -> list[Expectation]:
        """Waiting expectations past their deadline: arrived, when a callback that meant
        something is stored already; else overdue, with the reconcile `plan` gives. The
        newly overdue ones (each is returned by one sweep only, whichever replica runs it)."""

        async def op(tx: Tx) -> list[Expectation]:
            await tx.lock(["watchdog:sweep"])
            late = []
            for row in await tx.fetch(_DUE, {"now": now, "limit": limit}):
                e = Expectation.of(row)
                came = await arrivals.latest(tx, e.source, e.task_id) if e.task_id else None
                if came is not None:
                    await tx.execute(_ARRIVE, {"id": e.id, "delivery": came, "now": now})
                    continue
                reconcile = plan(e)
                params = {"id": e.id, "now": now, "reconcile": reconcile}
                if await tx.execute(_OVERDUE, params):
                    late.append(replace(e, state="overdue", overdue_at=now, reconcile=reconcile))
            return late

        return await self._storage.transaction(op)

    async def to_reconcile(self, now: float, *, limit: int = 50) -> list[Expectation]:
        """Overdue expectations whose vendor is to be asked, claimed: each is asked once."""

        async def op(tx: Tx) -> list[Expectation]:
            await tx.lock(["watchdog:reconcile"])
            claimed = []
            for row in await tx.fetch(_TO_ASK, {"limit": limit}):
                e = Expectation.of(row)
                if await tx.execute(_ASKING, {"id": e.id, "now": now}):
                    claimed.append(replace(e, reconcile="asking", reconciled_at=now))
            return claimed

        return await self._storage.transaction(op)

    async def reconciled(self, expectation_id: str, result: str) -> None:
        async def op(tx: Tx) -> None:
            await tx.execute(_ASKED, {"id": expectation_id, "result": result})

        await self._storage.transaction(op)
