"""The public plugin storage API on both backends: a stateful plugin with its own table,
migrations per component, transactions that commit or roll back whole, and key locks that
serialize only what shares a key."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from receiver.errors import RegistryError, StorageError
from receiver.plugin_store import Migration, Tx
from receiver.registry import HandlerRegistry
from tests.conftest import BACKENDS, AppFactory, sample

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "stateful"
OPEN = {"refonte": {"kind": "refonte", "verify": "none"}}


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture
def completions() -> Any:
    sys.path.insert(0, str(EXAMPLES))
    try:
        import completions

        yield completions
    finally:
        sys.path.remove(str(EXAMPLES))
        sys.modules.pop("completions", None)


async def test_the_readme_stateful_plugin_keeps_its_own_table(
    build_app: AppFactory, completions: Any
) -> None:
    app = build_app(sources=OPEN, handlers=["completions"], dispatch={"enabled": True})
    body = sample("05-completed-before-audit.json")
    async with app.started():
        status, _ = await app.intake.accept(
            app.sources["refonte"], body, {"content-type": "application/json"}
        )
        assert status == 200
        await app.dispatcher.drain(within=20)
        counted = await completions.report(app.storage)
        # Applying the same event again (a rerun of the handler) counts nothing more.
        run = await app.storage.list_deliveries(limit=1)
        events = await app.storage.load_events(run.items[0].id)
        handler = next(h for h in app.registry.handlers if h.name == "completions")
        from receiver.events import Event

        await handler.func(Event.model_validate_json(events[0].payload_json))  # type: ignore[misc]
        again = await completions.report(app.storage)
    assert len(counted) == 1 and counted[0][2] == 1
    assert again == counted
    assert app.storage.versions["completions"] == 1  # type: ignore[attr-defined]


async def test_a_failing_transaction_leaves_nothing(build_app: AppFactory) -> None:
    table = sa.Table("scratch", sa.MetaData(), sa.Column("k", sa.Text, primary_key=True))
    insert = sa.text("INSERT INTO scratch (k) VALUES (:k)")

    def setup(registry: HandlerRegistry) -> None:
        async def create(tx: Tx) -> None:
            await tx.create(table)

        assert registry.storage is not None
        registry.storage.declare("scratch", [Migration(1, "scratch", create)])

    app = build_app(sources=OPEN, setup=setup)
    async with app.started():
        storage = app.registry.storage
        assert storage is not None

        async def half(tx: Tx) -> None:
            await tx.execute(insert, {"k": "a"})
            raise ValueError("changed my mind")

        with pytest.raises(ValueError, match="changed my mind"):
            await storage.transaction(half)

        async def whole(tx: Tx) -> int:
            await tx.executemany(insert, [{"k": "b"}, {"k": "c"}])
            return len(await tx.fetch(sa.select(table.c.k)))

        assert await storage.transaction(whole) == 2
        rows = await storage.query(sa.select(table.c.k).order_by(table.c.k))
    assert [r[0] for r in rows] == ["b", "c"]


def test_migration_histories_are_checked_when_declared() -> None:
    from receiver.storage.migrations import Histories

    async def up(tx: Tx) -> None: ...

    histories = Histories()
    with pytest.raises(RegistryError, match="without gaps"):
        histories.declare("mine", [Migration(1, "a", up), Migration(3, "c", up)])
    histories.declare("mine", [Migration(2, "b", up), Migration(1, "a", up)])
    with pytest.raises(RegistryError, match="already declared"):
        histories.declare("mine", [Migration(1, "a", up)])
    with pytest.raises(RegistryError, match="letters, digits"):
        histories.declare("no spaces", [])


@pytest.mark.parametrize("backend", ["sqlite"])
async def test_a_sqlite_transaction_may_await_only_its_statements(build_app: AppFactory) -> None:
    app = build_app(sources=OPEN)
    async with app.started():

        async def strays(tx: Tx) -> None:
            await asyncio.sleep(0.01)  # would stall the group commit of every other writer

        with pytest.raises(StorageError, match="awaited something other"):
            await app.storage.transaction(strays)
        assert await app.storage.query(sa.text("SELECT 1")) == [(1,)]


@pytest.mark.parametrize("backend", ["postgres"])
async def test_keys_serialize_only_transactions_that_share_one(build_app: AppFactory) -> None:
    """While one transaction holds key k:1, another takes k:2 at once (no global lock), and
    a third asking for k:1 waits until the first commits."""
    app = build_app(sources=OPEN)
    waiting = sa.text("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted")
    async with app.started():
        storage = app.storage
        held = asyncio.Event()
        other_done = asyncio.Event()
        order: list[str] = []

        async def first(tx: Tx) -> None:
            await tx.lock(["k:1"])
            held.set()
            await asyncio.wait_for(other_done.wait(), 10)  # k:2 is taken meanwhile
            for _ in range(200):  # then the k:1 waiter shows up, blocked on us
                if (await storage.query(waiting))[0][0] >= 1:
                    break
                await asyncio.sleep(0.05)
            order.append("first")

        async def other_key(tx: Tx) -> None:
            await held.wait()
            await tx.lock(["k:2"])
            order.append("other key")
            other_done.set()

        async def same_key(tx: Tx) -> None:
            await other_done.wait()
            await tx.lock(["k:1"])
            order.append("same key")

        await asyncio.gather(
            storage.transaction(first),
            storage.transaction(other_key),
            storage.transaction(same_key),
        )
    assert order == ["other key", "first", "same key"]


def test_the_readme_shows_the_example_as_it_is() -> None:
    readme = (EXAMPLES.parents[1] / "README.md").read_text()
    assert (EXAMPLES / "completions.py").read_text() in readme
