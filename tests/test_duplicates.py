"""Duplicate receipts cost a counter, not a copy: the original counts them (count, last seen),
at most `retention.max_duplicate_rows` of them are kept as rows, the count stays exact when
PostgreSQL replicas race, and no path stores a header block over the cap, on both backends."""

from __future__ import annotations

import asyncio
import json
import secrets
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from receiver.app import TaskhookApp
from receiver.records import DeliveryStatus, NewDelivery, new_id
from receiver.storage import open_storage
from receiver.storage.compiled import for_dialect
from receiver.storage.rows import TRUNCATED, header_block
from receiver.storage.sqlite import sqlite_path
from receiver.storage.sqlite_schema import MIGRATIONS
from tests.conftest import BACKENDS, AppFactory, client_for, ops, sample_json

OPEN = {"refonte": {"kind": "refonte", "verify": "none"}}
JSON = {"content-type": "application/json"}
DUPLICATE_ROWS = "SELECT count(*) FROM deliveries WHERE status = 'duplicate'"


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


def snapshot(task_id: str) -> bytes:
    body = sample_json("01-completed.json")
    body["task_id"] = body["task"]["task_id"] = task_id
    return json.dumps(body).encode()


class Clock:
    """The app's clock, moved by the test: receipt times are exact."""

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


async def fetch(url: str, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    """Rows of `sql` (``:name`` parameters, given in order) on a connection of the test's own."""
    statement = text(sql)
    compiled = for_dialect("sqlite" if url.startswith("sqlite:") else "postgresql", statement)
    args = list(params)
    if url.startswith("sqlite:"):
        return _sqlite_rows(url, compiled.sql, tuple(args))
    import asyncpg

    conn = await asyncpg.connect(url)
    try:
        return [tuple(r) for r in await conn.fetch(compiled.sql, *args)]
    finally:
        await conn.close()


def _sqlite_rows(url: str, sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
    with sqlite3.connect(sqlite_path(url)) as conn:
        return [tuple(r) for r in conn.execute(sql, params).fetchall()]


async def rows_of(url: str, original: str) -> list[tuple[Any, ...]]:
    return await fetch(
        url,
        "SELECT status, body, received_at FROM deliveries WHERE duplicate_of = :original "
        "ORDER BY seq",
        original,
    )


async def test_duplicates_are_counted_on_the_original_and_kept_as_rows_up_to_the_bound(
    build_app: AppFactory, db_url: str
) -> None:
    clock = Clock()
    app = build_app(sources=OPEN, clock=clock, retention={"max_duplicate_rows": 3})
    async with app.started(), client_for(app) as client:
        source = app.sources["refonte"]
        status, first = await app.intake.accept(source, snapshot("dup-1"), dict(JSON))
        original = json.loads(first)["delivery_id"]
        answers = []
        for _ in range(25):  # 25 receipts of the same bytes, one second apart
            clock.now += 1
            answers.append(await app.intake.accept(source, snapshot("dup-1"), dict(JSON)))
        shown = (await client.get(f"/v1/deliveries/{original}", headers=ops())).json()
        record = await app.storage.get_delivery(original)
    assert status == 200
    assert {(s, json.loads(b)["status"], json.loads(b)["delivery_id"]) for s, b in answers} == {
        (200, "duplicate", original)
    }
    assert record is not None
    assert (record.duplicate_count, record.last_duplicate_at) == (25, clock.now)
    assert shown["duplicates"] == {"count": 25, "last_seen": "2023-11-14T22:13:45.000Z"}
    assert shown["received_at"] == "2023-11-14T22:13:20.000Z"  # first seen
    kept = await rows_of(db_url, original)
    # The first three receipts are rows (their own time, no body); the 22 after, a count.
    assert [(r[0], r[1], r[2]) for r in kept] == [
        ("duplicate", None, 1_700_000_001.0),
        ("duplicate", None, 1_700_000_002.0),
        ("duplicate", None, 1_700_000_003.0),
    ]
    assert await fetch(db_url, "SELECT count(*) FROM deliveries") == [(4,)]


async def test_no_duplicate_rows_at_all_when_the_bound_is_zero(
    build_app: AppFactory, db_url: str
) -> None:
    app = build_app(sources=OPEN, retention={"max_duplicate_rows": 0})
    async with app.started():
        source = app.sources["refonte"]
        for _ in range(5):
            await app.intake.accept(source, snapshot("dup-0"), dict(JSON))
    assert await fetch(
        db_url, "SELECT status, duplicate_count, duplicate_rows FROM deliveries"
    ) == [("received", 4, 0)]


async def test_concurrent_duplicates_count_exactly(build_app: AppFactory, db_url: str) -> None:
    """Many receipts of one delivery at once, on SQLite through the one writer, on
    PostgreSQL through a pool of connections: one original, every other receipt counted."""
    app = build_app(sources=OPEN, retention={"max_duplicate_rows": 5})
    async with app.started():
        source = app.sources["refonte"]
        answers = await asyncio.gather(
            *(app.intake.accept(source, snapshot("dup-race"), dict(JSON)) for _ in range(120))
        )
    statuses = [json.loads(body)["status"] for _, body in answers]
    assert statuses.count("accepted") == 1 and statuses.count("duplicate") == 119
    assert await fetch(
        db_url, "SELECT duplicate_count, duplicate_rows FROM deliveries WHERE duplicate_of IS NULL"
    ) == [(119, 5)]
    assert await fetch(db_url, "SELECT count(*) FROM deliveries WHERE status = 'duplicate'") == [
        (5,)
    ]


def delivery(task_id: str, at: float) -> NewDelivery:
    body = snapshot(task_id)
    return NewDelivery(
        id=new_id("dlv_", at), source="refonte", kind="refonte", received_at=at,
        headers=dict(JSON), body=body, content_type="application/json",
        dedup_key=f"sha256:{task_id}", status=DeliveryStatus.RECEIVED, task_id=task_id,
    )  # fmt: skip


async def test_replicas_racing_on_duplicates_keep_an_exact_count(pg_url: str) -> None:
    """Four storages (four pools, as four replicas) store the same delivery 400 times at once:
    the original's count is exact and the rows stay within the bound."""
    storages = [open_storage(pg_url, max_duplicate_rows=7) for _ in range(4)]
    for storage in storages:
        await storage.open()
    try:
        results = await asyncio.gather(
            *(storages[n % 4].store_delivery(delivery("raced", 1000.0 + n)) for n in range(400))
        )
    finally:
        for storage in storages:
            await storage.close()
    originals = {r.delivery_id for r in results}
    assert len(originals) == 1 and [r.duplicate for r in results].count(False) == 1
    [(count, kept, last, first)] = await fetch(
        pg_url,
        "SELECT duplicate_count, duplicate_rows, last_duplicate_at, received_at FROM deliveries "
        "WHERE duplicate_of IS NULL",
    )
    assert (count, kept) == (399, 7)
    assert last == max(1000.0 + n for n in range(400) if 1000.0 + n != first)
    assert await fetch(pg_url, "SELECT count(*) FROM deliveries WHERE status = 'duplicate'") == [
        (7,)
    ]


def test_a_header_block_over_the_cap_keeps_small_values_whole() -> None:
    headers = {
        "content-type": "application/json",
        "x-signature": "s" * 64,
        "x-junk": "j" * 1_000_000,
        "x-more-junk": "k" * 50_000,
    }
    stored = json.loads(header_block(headers, 16 * 1024))
    sizes = {k: len(k) + len(v) for k, v in headers.items()}
    kept = {k: v for k, v in stored.items() if k != TRUNCATED}
    assert kept["content-type"] == "application/json" and kept["x-signature"] == "s" * 64
    # The two big values are cut to one length, and all of it fits the cap with the marker.
    assert len(kept["x-junk"]) == len(kept["x-more-junk"]) > 7000
    assert set(kept["x-junk"]) == {"j"} and set(kept["x-more-junk"]) == {"k"}
    total_kept = sum(len(k) + len(v) for k, v in stored.items())
    assert total_kept <= 16 * 1024
    dropped = sum(sizes.values()) - sum(len(k) + len(v) for k, v in kept.items())
    assert stored[TRUNCATED] == f"{dropped} bytes dropped"
    # Within the cap, the block is stored as it came.
    assert json.loads(header_block({"content-type": "text/plain"}, 16 * 1024)) == {
        "content-type": "text/plain"
    }


def test_thousands_of_headers_are_cut_to_the_cap_too() -> None:
    headers = {f"x-h-{n:05d}": "v" * 20 for n in range(5000)}
    stored = json.loads(header_block(headers, 16 * 1024))
    assert sum(len(k) + len(v) for k, v in stored.items()) <= 16 * 1024
    assert TRUNCATED in stored and "x-h-00000" in stored and "x-h-04999" not in stored


async def test_replayed_huge_headers_are_stored_capped(
    build_app: AppFactory, db_url: str, backend: str
) -> None:
    """A replay (no HTTP limits) of one delivery 100 times with a 1 MB header: the stored
    header blocks are capped and only the bounded rows exist, so the database grows by a few
    hundred KiB, not by 100 MB (measured before: ~980 KiB per receipt on both backends)."""
    app = build_app(sources=OPEN)
    junk = {**JSON, "x-junk": secrets.token_urlsafe(750_000)}  # ~1 MB, incompressible
    async with app.started():
        source = app.sources["refonte"]
        await app.intake.accept(source, snapshot("huge"), dict(JSON))
        before = await size_of(app, backend, db_url)
        for _ in range(100):
            status, _ = await app.intake.accept(source, snapshot("huge"), dict(junk))
            assert status == 200
        after = await size_of(app, backend, db_url)
        stored = [json.loads(str(r[0])) for r in await app.storage.query(
            text("SELECT headers FROM deliveries WHERE status = 'duplicate'"))]  # fmt: skip
    grown = after - before
    print(f"{backend}: {grown / 100 / 1024:.1f} KiB stored per 1 MB-header duplicate")
    assert len(stored) == 10  # retention.max_duplicate_rows' default
    assert all(sum(len(k) + len(v) for k, v in h.items()) <= 16 * 1024 for h in stored)
    assert all(h["content-type"] == "application/json" and TRUNCATED in h for h in stored)
    assert grown < 1024 * 1024


async def size_of(app: TaskhookApp, backend: str, url: str) -> int:
    """The deliveries table's size (PostgreSQL, TOAST included), or the SQLite file's once
    its write-ahead log is checkpointed into it."""
    if backend == "postgres":
        rows = await app.storage.query(text("SELECT pg_total_relation_size('deliveries')"))
        return int(rows[0][0])
    return _checkpointed_size(sqlite_path(url))


def _checkpointed_size(path: str) -> int:
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return Path(path).stat().st_size


@pytest.fixture
def schema_3_db(tmp_path: Path) -> Iterator[Path]:
    """A database of schema 3 with an original and three duplicate rows of it."""
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        for script in MIGRATIONS[:3]:
            for statement in script.split(";"):
                if statement.strip():
                    conn.execute(statement)
        conn.execute("PRAGMA user_version=3")
        values: list[Any] = [("dlv_o", "processed", None, 10.0)] + [
            (f"dlv_d{n}", "duplicate", "dlv_o", 10.0 + n) for n in range(1, 4)
        ]
        conn.executemany(
            "INSERT INTO deliveries (id, source, kind, received_at, headers, body, content_type,"
            " dedup_key, status, duplicate_of) VALUES (?, 'refonte', 'refonte', ?, '{}', NULL,"
            " 'application/json', 'k', ?, ?)",
            [(i, at, status, of) for i, status, of, at in values],
        )
    finally:
        conn.close()
    yield path


async def test_schema_4_counts_the_duplicate_rows_already_stored(schema_3_db: Path) -> None:
    storage = open_storage(f"sqlite:///{schema_3_db}")
    await storage.open()
    try:
        original = await storage.get_delivery("dlv_o")
    finally:
        await storage.close()
    assert original is not None
    assert (original.duplicate_count, original.last_duplicate_at) == (3, 13.0)
    with sqlite3.connect(schema_3_db) as conn:
        assert (
            conn.execute("SELECT duplicate_rows FROM deliveries WHERE id = 'dlv_o'").fetchone()[0]
            == 3
        )
        assert conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
