"""Numbered schema histories per component, in a ``(component, version)`` table.

The core and every plugin that keeps tables own a history of `Migration`s (versions 1, 2, …).
At start-up (and in ``taskhook migrate``) each step a database lacks runs in a transaction of
its own that first takes the migrations lock, reads the component's version again, applies
the step and records it: replicas starting together wait for one another, and the later ones
find nothing left to do. A database whose version of a component is newer than this code's
history is refused: an older release must not write a schema it does not know.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from sqlalchemy import Column, Float, Integer, MetaData, Table, Text, bindparam, select, text

from receiver.errors import RegistryError, StorageError
from receiver.plugin_store import Migration, Tx

T = TypeVar("T")
Transaction = Callable[[Callable[[Any], Awaitable[Any]]], Awaitable[Any]]

COMPONENTS = Table(
    "taskhook_components",
    MetaData(),
    Column("component", Text, primary_key=True),
    Column("version", Integer, nullable=False),
    Column("description", Text, nullable=False),
    Column("updated_at", Float, nullable=False),
)
_LOCK = "taskhook:migrations"
_VERSION = select(COMPONENTS.c.version).where(COMPONENTS.c.component == bindparam("component"))
_RECORD = text(
    "INSERT INTO taskhook_components (component, version, description, updated_at) "
    "VALUES (:component, :version, :description, :at) "
    "ON CONFLICT (component) DO UPDATE SET version = excluded.version, "
    "description = excluded.description, updated_at = excluded.updated_at"
)


def check_history(component: str, migrations: Sequence[Migration]) -> tuple[Migration, ...]:
    """`migrations` in order, numbered 1..n without a gap, or a `RegistryError`."""
    if not component or not component.replace("_", "").replace("-", "").isalnum():
        raise RegistryError(f"component name {component!r}: letters, digits, '-' and '_'")
    steps = tuple(sorted(migrations, key=lambda m: m.version))
    numbers = [m.version for m in steps]
    if numbers != list(range(1, len(steps) + 1)):
        raise RegistryError(
            f"component {component!r}: migrations must be numbered 1, 2, … without gaps "
            f"or repeats (got {numbers})"
        )
    return steps


class Histories:
    """The components declared on one storage, and how to bring a database up to them."""

    def __init__(self) -> None:
        self._declared: dict[str, tuple[Migration, ...]] = {}

    def declare(self, component: str, migrations: Sequence[Migration]) -> None:
        if component in self._declared:
            raise RegistryError(f"component {component!r} already declared its migrations")
        self._declared[component] = check_history(component, migrations)

    @property
    def declared(self) -> dict[str, tuple[Migration, ...]]:
        return dict(self._declared)

    async def apply(
        self, transaction: Transaction, *, on_failure: Callable[[], Awaitable[None]]
    ) -> dict[str, int]:
        """Apply every step the database lacks; each component's resulting version. On a
        failure (a schema this release cannot run on) `on_failure` closes what was opened."""
        try:
            await transaction(_ensure_table)
            versions: dict[str, int] = {}
            for component, steps in self._declared.items():
                versions[component] = await apply_history(transaction, component, steps)
        except BaseException:
            await on_failure()
            raise
        return versions


async def _ensure_table(tx: Tx) -> None:
    await tx.lock([_LOCK])
    await tx.create(COMPONENTS)


async def version_of(tx: Tx, component: str) -> int:
    row = await tx.fetchone(_VERSION, {"component": component})
    return int(row[0]) if row is not None else 0


async def apply_history(
    transaction: Transaction, component: str, steps: Sequence[Migration]
) -> int:
    for step in steps:

        async def one(tx: Tx, step: Migration = step) -> int:
            await tx.lock([_LOCK])
            current = await version_of(tx, component)
            if current >= step.version:
                return current
            await step.up(tx)
            await tx.execute(_RECORD, {
                "component": component, "version": step.version,
                "description": step.description, "at": time.time(),
            })  # fmt: skip
            return step.version

        await transaction(one)

    async def final(tx: Tx) -> int:
        return await version_of(tx, component)

    reached: int = await transaction(final)
    if reached > len(steps):
        raise StorageError(
            f"the database's {component!r} schema is at version {reached}, newer than this "
            f"release knows ({len(steps)}): run the release that wrote it"
        )
    return reached


__all__ = ["COMPONENTS", "Histories", "apply_history", "check_history", "version_of"]
