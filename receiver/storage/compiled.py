"""SQLAlchemy statements compiled once per dialect, run on the raw driver connection.

Every statement of the data layer (core and plugins) is a SQLAlchemy Core construct or a
``text()`` with ``:name`` parameters. SQLAlchemy compiles it for the dialect — parameter
style, casts, ``ON CONFLICT``, DDL types — and the compiled SQL is then executed on the
driver's own connection (`sqlite3` inside the group commit, asyncpg on the pool). That keeps
the library's dialect knowledge and the drivers' speed: executing through SQLAlchemy's
``Connection`` costs ~11 µs per statement more than the driver (shared/PERF-NOTES.md);
compiling once and executing the string costs nothing per call.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

from sqlalchemy import Index, Table
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine.interfaces import Dialect as SADialect
from sqlalchemy.schema import CreateIndex, CreateTable
from sqlalchemy.sql.expression import ClauseElement

from receiver.errors import StorageError

_MAX_CACHED = 4096


@dataclass(frozen=True, slots=True)
class Compiled:
    """One statement in one dialect: its SQL and how to lay out its parameters."""

    sql: str
    names: tuple[str, ...]  # the parameter of each positional placeholder, in order
    defaults: Mapping[str, Any]  # values bound in the statement itself (literals)

    def args(self, params: Mapping[str, Any] | None) -> list[Any]:
        given = params or {}
        try:
            return [given[n] if n in given else self.defaults[n] for n in self.names]
        except KeyError as exc:
            raise StorageError(f"statement parameter {exc} not given: {self.sql[:200]}") from None


@cache
def _dialect(name: str) -> SADialect:
    if name == "sqlite":
        return sqlite.dialect(paramstyle="qmark")
    if name == "postgresql":
        return postgresql.asyncpg.dialect()  # type: ignore[no-untyped-call]
    raise StorageError(f"no such dialect: {name}")


class Statements:
    """Compiled forms of statements for one dialect, cached by statement object."""

    def __init__(self, dialect: str) -> None:
        self.dialect = dialect
        self._sa = _dialect(dialect)
        self._cache: dict[int, tuple[ClauseElement, Compiled]] = {}

    def __call__(self, statement: ClauseElement) -> Compiled:
        hit = self._cache.get(id(statement))
        if hit is not None and hit[0] is statement:
            return hit[1]
        compiled = compile_for(statement, self._sa)
        if len(self._cache) >= _MAX_CACHED:  # statements built per call: bounded, not leaked
            self._cache.pop(next(iter(self._cache)))
        self._cache[id(statement)] = (statement, compiled)
        return compiled


def compile_for(statement: ClauseElement, dialect: SADialect) -> Compiled:
    c = statement.compile(dialect=dialect)
    names = tuple(getattr(c, "positiontup", None) or ())
    return Compiled(str(c), names, dict(c.params))


@cache
def sqlite_sql(statement: ClauseElement) -> Compiled:
    """A module-level statement as SQLite runs it (hot paths call this once and keep it)."""
    return compile_for(statement, _dialect("sqlite"))


@cache
def postgres_sql(statement: ClauseElement) -> Compiled:
    return compile_for(statement, _dialect("postgresql"))


def for_dialect(dialect: str, statement: ClauseElement) -> Compiled:
    return sqlite_sql(statement) if dialect == "sqlite" else postgres_sql(statement)


def create_statements(elements: Sequence[Any], dialect: str) -> list[str]:
    """CREATE ... IF NOT EXISTS of each `Table` (with its indexes) and `Index`."""
    sa = _dialect(dialect)
    out: list[str] = []
    for element in elements:
        if isinstance(element, Table):
            out.append(str(CreateTable(element, if_not_exists=True).compile(dialect=sa)))
            indexes = sorted(element.indexes, key=lambda i: i.name or "")
            out += [str(CreateIndex(i, if_not_exists=True).compile(dialect=sa)) for i in indexes]
        elif isinstance(element, Index):
            out.append(str(CreateIndex(element, if_not_exists=True).compile(dialect=sa)))
        else:
            raise StorageError(f"cannot create {element!r}: a Table or an Index is expected")
    return out


def many(compiled: Compiled, rows: Sequence[Mapping[str, Any]]) -> list[list[Any]]:
    return [compiled.args(r) for r in rows]


__all__ = [
    "Compiled",
    "Statements",
    "compile_for",
    "create_statements",
    "for_dialect",
    "many",
    "postgres_sql",
]
