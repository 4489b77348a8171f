"""The dispatch queue at the storage level: one head per (source, lane), always the lane's
earliest pending delivery; per-task order through retries; claims that read only heads; heads
built for a database migrated from schema 2; and the bounded write queue (503 + Retry-After,
nothing acked lost); the front door's own limits are tested in test_front_door.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import sqlite3
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from sqlalchemy import text

from receiver.records import (
    DeliveryOutcome,
    DeliveryRecord,
    DeliveryStatus,
    HandlerRun,
    NewDelivery,
    new_id,
)
from receiver.storage import Storage, open_storage
from receiver.storage.queue import CLAIM_CANDIDATES
from receiver.storage.sqlite import sqlite_path
from receiver.storage.sqlite_schema import MIGRATIONS
from tests.conftest import BACKENDS, AppFactory, client_for, sample_json, signed


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


T0 = 1_700_000_000.0
LEASE = 5.0

# Every way the heads table can disagree with the deliveries it stands for; no row is the
# invariant. A lane's head is its earliest pending delivery, due when that delivery is due,
# except that a requeued older delivery does not displace a head that is leased right now
# (`queue.REQUEUE`): the holder finishes first.
INVARIANT = """
    WITH pending AS (
        SELECT source, COALESCE(task_id, id) AS lane, min(seq) AS first
        FROM deliveries WHERE status IN ('received', 'failed')
        GROUP BY source, COALESCE(task_id, id)
    )
    SELECT 'pending lane without a head', p.source, p.lane, p.first
    FROM pending AS p
    WHERE NOT EXISTS (
        SELECT 1 FROM dispatch_heads AS h WHERE h.source = p.source AND h.lane = p.lane)
    UNION ALL
    SELECT 'unleased head behind an earlier pending delivery', h.source, h.lane, h.seq
    FROM dispatch_heads AS h JOIN pending AS p ON p.source = h.source AND p.lane = h.lane
    WHERE h.seq <> p.first AND h.lease_owner IS NULL
    UNION ALL
    SELECT 'head on a delivery not pending in its lane', h.source, h.lane, h.seq
    FROM dispatch_heads AS h LEFT JOIN deliveries AS d ON d.seq = h.seq
    WHERE d.seq IS NULL OR d.status NOT IN ('received', 'failed') OR d.source <> h.source
       OR COALESCE(d.task_id, d.id) <> h.lane
    UNION ALL
    SELECT 'unleased head due at another time than its delivery', h.source, h.lane, h.seq
    FROM dispatch_heads AS h JOIN deliveries AS d ON d.seq = h.seq
    WHERE h.lease_owner IS NULL AND h.next_attempt_at <> d.next_attempt_at
"""


def delivery(task_id: str | None, *, at: float = T0, source: str = "s1") -> NewDelivery:
    """A pending delivery of `task_id` (None: a lone one), unique by its body."""
    body = json.dumps({"task_id": task_id, "n": uuid.uuid4().hex}).encode()
    return NewDelivery(
        id=new_id("dlv_", at), source=source, kind="refonte", received_at=at, headers={},
        body=body, content_type="application/json", dedup_key=f"test:{uuid.uuid4().hex}",
        status=DeliveryStatus.RECEIVED, task_id=task_id,
    )  # fmt: skip


async def query(storage: Storage, sql: str, params: list[Any] | None = None) -> list[Any]:
    """A read through the backend's own `query` (both have one; `Storage` does not name it)."""
    # Test SQL is written with ``?``: named here, for the statement SQLAlchemy compiles.
    pieces = sql.split("?")
    named = pieces[0] + "".join(f":p{i}{rest}" for i, rest in enumerate(pieces[1:]))
    values = {f"p{i}": v for i, v in enumerate(params or [])}
    return list(await storage.query(text(named), values))


async def violations(storage: Storage) -> list[tuple[Any, ...]]:
    return [tuple(r) for r in await query(storage, INVARIANT)]


def outcome(
    d: DeliveryRecord, status: DeliveryStatus, next_attempt_at: float = 0.0
) -> DeliveryOutcome:
    error = None if status is DeliveryStatus.PROCESSED else "test"
    return DeliveryOutcome(
        d.id, status, d.attempts + 1, next_attempt_at=next_attempt_at, error=error
    )


@pytest.fixture
async def storage(db_url: str) -> AsyncIterator[Storage]:
    opened = open_storage(db_url)
    await opened.open()
    try:
        yield opened
    finally:
        await opened.close()


async def claim(storage: Storage, now: float, owner: str = "w", limit: int = 50) -> list[str]:
    """The task ids (or delivery ids, for lone ones) of what `owner` claims at `now`."""
    claimed = await storage.claim_ready(owner=owner, limit=limit, now=now, lease_seconds=LEASE)
    return [d.lane for d in claimed]


class Workload:
    """One random sequence of queue operations, checked after each (the log says what ran)."""

    def __init__(self, storage: Storage, seed: int) -> None:
        self.storage = storage
        self.rng = random.Random(seed)
        self.seed = seed
        self.now = T0
        # (delivery, owner) of every claim made; an entry can go stale (taken over, or
        # finished by the owner that took it over), and finishing it anyway is part of the
        # workload only when `stale_finishes` is set.
        self.leases: list[tuple[DeliveryRecord, str]] = []
        self.log: list[str] = []
        self.seen: Counter[str] = Counter()  # what the workload did, to check it did it all

    async def store(self) -> None:
        task = self.rng.choice(["t0", "t1", "t2", "t3", None])
        source = self.rng.choice(["s1", "s1", "s2"])
        d = delivery(task, at=self.now, source=source)
        await self.storage.store_delivery(d)
        self.seen["lone" if task is None else "store"] += 1
        self.log.append(f"store {d.id} {source}/{task}")

    async def claim(self) -> None:
        owner = self.rng.choice(["a", "b"])
        limit = self.rng.randint(1, 4)
        claimed = await self.storage.claim_ready(
            owner=owner, limit=limit, now=self.now, lease_seconds=LEASE
        )
        taken = {d.id for d, o in self.leases if o != owner}
        self.seen["takeover"] += sum(d.id in taken for d in claimed)
        self.seen["claimed"] += len(claimed)
        self.leases += [(d, owner) for d in claimed]
        self.log.append(f"claim {owner} limit {limit} at +{self.now - T0:.1f}: "
                        f"{[d.id for d in claimed]}")  # fmt: skip

    async def finish(self, *, stale_finishes: bool) -> None:
        held = await self.holders()
        candidates = [
            (i, d, o) for i, (d, o) in enumerate(self.leases)
            if stale_finishes or held.get(d.seq) == o
        ]  # fmt: skip
        if not candidates:
            return
        stale = [c for c in candidates if held.get(c[1].seq) != c[2]]
        # Half the time a stale owner reports, when there is one: it is the rarer event.
        pool = stale if stale and self.rng.random() < 0.5 else candidates
        index, d, owner = self.rng.choice(pool)
        del self.leases[index]
        if held.get(d.seq) != owner:
            self.seen["stale finish"] += 1
        status = self.rng.choice(FINISHES)
        retry_at = self.now + self.rng.uniform(0.5, 6.0)
        done = await self.storage.finish(
            outcome(d, status, retry_at if status is DeliveryStatus.FAILED else 0.0), owner=owner
        )
        self.seen[f"finish {status.value}" if done else "finish refused"] += 1
        self.log.append(f"finish {d.id} by {owner} as {status.value}: {done}")

    async def requeue(self) -> None:
        dead = await self.storage.dead_ids()
        if dead:
            chosen = self.rng.choice(dead)
            done = await self.storage.requeue(chosen, now=self.now)
            self.seen["requeue"] += 1
            # The documented exception: the lane's head is leased, so it stays the head.
            ahead = await query(self.storage, LEASED_AHEAD, [chosen])
            self.seen["requeue behind a leased head"] += len(ahead)
            self.log.append(f"requeue {chosen}: {done}")

    async def holders(self) -> dict[int, str]:
        sql = "SELECT seq, lease_owner FROM dispatch_heads WHERE lease_owner IS NOT NULL"
        rows = await query(self.storage, sql)
        return {int(seq): str(owner) for seq, owner in rows}

    async def run(self, operations: int, *, stale_finishes: bool) -> None:
        for number in range(operations):
            self.now += self.rng.choice([0.0, 0.5, 1.0, 2.0, LEASE + 1])  # leases run out too
            roll = self.rng.random()
            if roll < 0.35:
                await self.store()
            elif roll < 0.6:
                await self.claim()
            elif roll < 0.85:
                await self.finish(stale_finishes=stale_finishes)
            else:
                await self.requeue()
            found = await violations(self.storage)
            # The seed replays the run; the last operations say how it got there.
            tail = "\n".join(self.log[-25:])
            assert not found, f"seed {self.seed}, operation {number}: {found}\n{tail}"


LEASED_AHEAD = """
    SELECT 1 FROM dispatch_heads AS h
    JOIN deliveries AS d ON d.source = h.source AND COALESCE(d.task_id, d.id) = h.lane
    WHERE d.id = ? AND h.seq > d.seq AND h.lease_owner IS NOT NULL
"""
# Dead twice as often: each dead delivery is one more that can be requeued.
FINISHES = (
    DeliveryStatus.PROCESSED,
    DeliveryStatus.FAILED,
    DeliveryStatus.DEAD,
    DeliveryStatus.DEAD,
    DeliveryStatus.QUARANTINED,
)


async def empty(storage: Storage) -> None:
    async def op(tx: Any) -> None:
        await tx.execute(text("DELETE FROM dispatch_heads"))
        await tx.execute(text("DELETE FROM deliveries"))

    await storage.transaction(op)


@pytest.mark.parametrize("stale_finishes", [False, True], ids=["holders", "stale-owners"])
async def test_random_workloads_keep_one_head_per_lane_at_its_earliest_pending(
    storage: Storage, backend: str, stale_finishes: bool
) -> None:
    """Stores, claims by two owners (leases run out and are taken over), finishes of every
    kind, requeues of dead deliveries. With `stale_finishes`, an owner whose lease was taken
    over may still report its attempt (a replica that stalled past its lease, then resumed)."""
    # The same seeds on both backends (measured: about 1 s a variant on SQLite, 2 s on
    # PostgreSQL), bounded: 30 runs of 60 operations.
    runs, operations = 30, 60
    seen: Counter[str] = Counter()
    for seed in range(runs):
        await empty(storage)
        workload = Workload(storage, seed)
        await workload.run(operations, stale_finishes=stale_finishes)
        seen += workload.seen
    print(f"[{backend}] {runs} runs of {operations}: {dict(sorted(seen.items()))}")
    # The workload did everything it is meant to check the heads through.
    wanted = {"store", "lone", "claimed", "takeover", "requeue", "requeue behind a leased head"}
    wanted |= {f"finish {s.value}" for s in FINISHES}
    if stale_finishes:
        wanted |= {"stale finish", "finish refused"}
    assert wanted <= set(seen), wanted - set(seen)


async def test_one_tasks_order_holds_through_its_retries(storage: Storage) -> None:
    ids = [(await storage.store_delivery(delivery("a"))).delivery_id for _ in range(3)]
    claimed = await storage.claim_ready(owner="w", limit=10, now=T0, lease_seconds=LEASE)
    assert [d.id for d in claimed] == ids[:1]  # only the head of the lane
    other = (await storage.store_delivery(delivery("b"))).delivery_id

    retry_at = T0 + 30
    assert await storage.finish(outcome(claimed[0], DeliveryStatus.FAILED, retry_at), owner="w")
    # Task a waits out its backoff: neither its head nor what is behind it; task b goes on.
    now_claim = await storage.claim_ready(owner="w", limit=10, now=T0 + 1, lease_seconds=LEASE)
    assert [d.id for d in now_claim] == [other]
    assert await claim(storage, retry_at - 0.5) == []

    again = await storage.claim_ready(owner="w", limit=10, now=retry_at, lease_seconds=LEASE)
    assert [(d.id, d.attempts) for d in again] == [(ids[0], 1)]
    assert await storage.finish(outcome(again[0], DeliveryStatus.PROCESSED), owner="w")
    after = await storage.claim_ready(owner="w", limit=10, now=retry_at, lease_seconds=LEASE)
    assert [d.id for d in after] == [ids[1]]
    assert "a" not in await claim(storage, retry_at + 1, owner="other")  # 3 waits behind 2
    assert await violations(storage) == []


async def test_a_retried_failed_delivery_is_due_at_once(storage: Storage) -> None:
    """`retry` (the API's and the CLI's) makes a failed delivery due now, not at the end of
    the backoff it was waiting out."""
    stored = await storage.store_delivery(delivery("a"))
    claimed = await storage.claim_ready(owner="w", limit=10, now=T0, lease_seconds=LEASE)
    assert await storage.finish(outcome(claimed[0], DeliveryStatus.FAILED, T0 + 3600), owner="w")
    assert await storage.requeue(stored.delivery_id, now=T0 + 1) is True
    shown = await storage.get_delivery(stored.delivery_id)
    assert shown is not None and (shown.status, shown.next_attempt_at) == ("received", T0 + 1)
    assert await claim(storage, T0 + 2) == ["a"]


async def test_a_requeued_older_delivery_takes_the_lane_once_the_leased_head_retries(
    storage: Storage,
) -> None:
    """The one exception to "the head is the earliest pending delivery" lasts only while the
    head is leased: when that attempt ends in a retry, the older delivery goes first."""
    older = (await storage.store_delivery(delivery("a"))).delivery_id
    newer = (await storage.store_delivery(delivery("a"))).delivery_id
    [first] = await storage.claim_ready(owner="w", limit=10, now=T0, lease_seconds=LEASE)
    assert await storage.finish(outcome(first, DeliveryStatus.DEAD), owner="w")
    [second] = await storage.claim_ready(owner="w", limit=10, now=T0, lease_seconds=LEASE)
    assert second.id == newer
    assert await storage.requeue(older, now=T0 + 1) is True  # while `newer` is leased
    assert await violations(storage) == []  # the documented exception
    assert await storage.finish(outcome(second, DeliveryStatus.FAILED, T0 + 10), owner="w")
    assert await violations(storage) == []
    due = await storage.claim_ready(owner="w", limit=10, now=T0 + 20, lease_seconds=LEASE)
    assert [d.id for d in due] == [older]


async def test_a_stale_owner_cannot_reopen_what_its_taker_finished(storage: Storage) -> None:
    """A replica that stalled past its lease reports its attempt after the owner that took
    the delivery over has finished it: that late report must not make it pending again."""
    first = (await storage.store_delivery(delivery("a"))).delivery_id
    await storage.store_delivery(delivery("a"))
    [stalled] = await storage.claim_ready(owner="A", limit=10, now=T0, lease_seconds=LEASE)
    later = T0 + LEASE + 1
    [taken] = await storage.claim_ready(owner="B", limit=10, now=later, lease_seconds=LEASE)
    assert taken.id == stalled.id == first
    assert await storage.finish(outcome(taken, DeliveryStatus.PROCESSED), owner="B")
    await storage.finish(outcome(stalled, DeliveryStatus.FAILED, later + 1), owner="A")
    shown = await storage.get_delivery(first)
    assert shown is not None and shown.status is DeliveryStatus.PROCESSED
    assert await violations(storage) == []


async def test_a_claim_reads_only_heads(storage: Storage, backend: str, db_url: str) -> None:
    tasks, depth = 20, 100
    for start_at in range(0, tasks * depth, 500):  # bounded fan-out per gather
        await asyncio.gather(*(
            storage.store_delivery(delivery(f"deep-{n % tasks:02d}", at=T0))
            for n in range(start_at, start_at + 500)
        ))  # fmt: skip
    heads = await storage.claim_ready(owner="w", limit=100, now=T0, lease_seconds=LEASE)
    assert sorted(d.task_id or "" for d in heads) == sorted(f"deep-{n:02d}" for n in range(tasks))
    for d in heads:  # every head backs off for an hour; 1,980 deliveries wait behind them
        assert await storage.finish(outcome(d, DeliveryStatus.FAILED, T0 + 3600), owner="w")
    assert await storage.backlog() == tasks * depth
    assert await storage.claim_ready(owner="w", limit=200, now=T0 + 1, lease_seconds=LEASE) == []

    params = [T0 + 1, T0 + 1, "w", 200]
    if backend == "sqlite":
        plan = [str(r[-1]) for r in await query(storage, f"EXPLAIN QUERY PLAN {CLAIM_CANDIDATES}",
                                                params)]  # fmt: skip
        print("claim plan (SQLite):", plan)
        # Heads in receipt order (the seq index), skipping those in backoff: the 1,980
        # deliveries behind them are never read.
        assert any("dispatch_heads" in step for step in plan), plan
        assert not any("deliveries" in step for step in plan), plan
    else:
        from receiver.storage.postgres import _CLAIM

        conn = await asyncpg.connect(
            db_url, server_settings={"plan_cache_mode": "force_custom_plan"}
        )
        try:
            # Statistics first, as autovacuum gathers them once this many rows have changed.
            # Without any, the planner takes the never-analyzed heads table for 550 rows, so
            # ~60 leased, and on a table as small as these 2,000 deliveries a hash join over
            # a seq scan then costs less than ~60 probes of the primary key: a small-table
            # artifact (on a table of millions the probes win regardless), not what a claim
            # does. No scan is forbidden (no enable_seqscan): the planner is free to scan the
            # 20-row heads table, never the deliveries. The receiver plans each execution
            # with its parameters (`SESSION` in receiver.storage.postgres); so does this.
            await conn.execute("ANALYZE deliveries; ANALYZE dispatch_heads")
            rows = await conn.fetch(f"EXPLAIN {_CLAIM}", T0 + 1, 200, "w", T0 + 1 + LEASE)
        finally:
            await conn.close()
        plan = [str(r[0]) for r in rows]
        print("claim plan (PostgreSQL):\n" + "\n".join(plan))
        assert not any("Seq Scan on deliveries" in step for step in plan), plan
        assert any("using deliveries_pkey on deliveries" in step for step in plan), plan


def test_heads_are_built_for_a_database_of_schema_2(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        for script in MIGRATIONS[:2]:
            for statement in script.split(";"):
                if statement.strip():
                    conn.execute(statement)
        conn.execute("PRAGMA user_version=2")
        rows = [  # (id, task_id, status, next_attempt_at), in receipt order
            ("dlv_a1", "a", "received", T0),
            ("dlv_b1", "b", "processed", T0),
            ("dlv_a2", "a", "received", T0),
            ("dlv_b2", "b", "failed", T0 + 100),  # in backoff
            ("dlv_b3", "b", "received", T0),
            ("dlv_lone", None, "received", T0),
            ("dlv_a3", "a", "received", T0),
        ]
        conn.executemany(
            "INSERT INTO deliveries (id, source, kind, received_at, headers, body, content_type,"
            " dedup_key, task_id, status, attempts, next_attempt_at, events_derived, reconciled)"
            " VALUES (?, 'refonte', 'refonte', ?, '{}', X'7B7D', 'application/json', ?, ?, ?,"
            " ?, ?, 0, 0)",
            [(i, T0, f"k:{i}", task, status, int(status == "failed"), due)
             for i, task, status, due in rows],
        )  # fmt: skip
    finally:
        conn.close()

    async def run() -> tuple[list[str], list[str], list[Any], int]:
        storage = open_storage(f"sqlite:///{path}")
        await storage.open()
        try:
            heads = await query(storage, "SELECT lane, seq FROM dispatch_heads ORDER BY seq")
            early = await storage.claim_ready(owner="w", limit=10, now=T0, lease_seconds=LEASE)
            late = await storage.claim_ready(owner="w", limit=10, now=T0 + 100, lease_seconds=LEASE)
            version = (await query(storage, "PRAGMA user_version"))[0][0]
            return [d.id for d in early], [d.id for d in late], heads, int(version)
        finally:
            await storage.close()

    early, late, heads, version = asyncio.run(run())
    assert version == len(MIGRATIONS)
    assert [lane for lane, _ in heads] == ["a", "b", "dlv_lone"]
    assert early == ["dlv_a1", "dlv_lone"]  # b's earliest pending is in backoff
    assert late == ["dlv_b2"]  # not b3, which was received after it


def refonte_body(n: int) -> bytes:
    body = sample_json("05-completed-before-audit.json")
    body["task_id"] = body["task"]["task_id"] = f"busy-{n:03d}"
    return json.dumps(body).encode()


async def hold_writes(backend: str, db_url: str) -> Callable[[], Awaitable[None]]:
    """Take the database's write lock from another connection, as another process could;
    returns the coroutine function that lets go."""
    if backend == "sqlite":
        conn = sqlite3.connect(sqlite_path(db_url), isolation_level=None)
        conn.execute("BEGIN IMMEDIATE")

        async def release_sqlite() -> None:
            conn.execute("ROLLBACK")
            conn.close()

        return release_sqlite
    pg = await asyncpg.connect(db_url)
    tx = pg.transaction()
    await tx.start()
    await pg.execute("LOCK TABLE deliveries IN EXCLUSIVE MODE")  # inserts wait

    async def release_pg() -> None:
        await tx.rollback()
        await pg.close()

    return release_pg


async def test_a_full_write_queue_answers_503_and_loses_nothing(
    build_app: AppFactory, backend: str, db_url: str
) -> None:
    """With room for one queued write, a burst is mostly refused with 503 + Retry-After: 1;
    every 200 is a stored delivery, and nothing refused is stored.

    The burst alone may or may not outrun the writer. To make the queue full for certain,
    another connection holds the write lock while the burst arrives (as another process
    writing to the database would): the stores that got in wait for the lock (SQLite's
    writer retries BEGIN with async sleeps; PostgreSQL's INSERT waits on the table lock),
    so every later delivery finds the queue full. The lock is let go once all refusals are
    answered, well within the writer's 2 s lock timeout (SQLite) and the 10 s command
    timeout (PostgreSQL), and the waiting stores then commit and answer 200.

    At most one store waits on SQLite's writer mid-batch and one more in its queue, so one
    or two are accepted; PostgreSQL counts the stores in flight, so exactly one.
    """
    burst = 64 if backend == "sqlite" else 32
    most = 2 if backend == "sqlite" else 1
    app = build_app(database={"url": db_url, "max_queued_writes": 1})
    answers: list[tuple[int, httpx.Response]] = []

    refusals_in = asyncio.Event()

    async with app.started(), client_for(app) as client:

        async def post(n: int) -> None:
            response = await client.post(
                "/callbacks/refonte", content=refonte_body(n), headers=signed()
            )
            answers.append((n, response))
            if len(answers) >= burst - most:
                refusals_in.set()

        release = await hold_writes(backend, db_url)
        try:

            async def let_go() -> None:
                # Bounded: let go after 1.5 s at the latest, and let the assertions tell.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(refusals_in.wait(), 1.5)
                await release()

            await asyncio.wait_for(asyncio.gather(let_go(), *(post(n) for n in range(burst))), 30)
        except BaseException:
            with contextlib.suppress(Exception):
                await release()
            raise
        ok = {n: r.json()["delivery_id"] for n, r in answers if r.status_code == 200}
        busy = [r for _, r in answers if r.status_code == 503]
        stored = await query(app.storage, "SELECT id FROM deliveries")

        # A sender that comes back as told gets in: nothing it sent was lost.
        retried = [
            await client.post("/callbacks/refonte", content=refonte_body(n), headers=signed())
            for n in range(burst) if n not in ok
        ]  # fmt: skip
        total = (await app.storage.list_deliveries(limit=1)).total

    print(f"[{backend}] burst {burst}: {len(ok)} accepted, {len(busy)} answered 503")
    assert len(answers) == burst
    assert 1 <= len(ok) <= most
    assert len(busy) == burst - len(ok)
    assert {r.headers["retry-after"] for r in busy} == {"1"}
    assert all("busy" in r.json()["error"] for r in busy)
    assert sorted(r[0] for r in stored) == sorted(ok.values())  # 0 lost, 0 extra
    assert {r.json()["status"] for r in retried} == {"accepted"}
    assert total == burst


async def test_a_delivery_in_flight_cannot_be_requeued(storage: Storage) -> None:
    """A failed delivery being retried right now (its head leased) is not made due again
    under its owner: that would let a second process run it at the same time."""
    stored = (await storage.store_delivery(delivery("a"))).delivery_id
    [first] = await storage.claim_ready(owner="w", limit=10, now=T0, lease_seconds=LEASE)
    assert await storage.finish(outcome(first, DeliveryStatus.FAILED, T0 + 1), owner="w")
    [again] = await storage.claim_ready(owner="x", limit=10, now=T0 + 2, lease_seconds=LEASE)
    assert again.id == stored
    assert await storage.requeue(stored, now=T0 + 3) is False  # in flight: refused
    # Nobody else can claim it while x runs it, and x's finish still counts.
    assert await storage.claim_ready(owner="y", limit=10, now=T0 + 4, lease_seconds=LEASE) == []
    assert await storage.finish(outcome(again, DeliveryStatus.PROCESSED), owner="x")
    assert await violations(storage) == []


async def test_a_late_failure_never_undoes_a_success(storage: Storage) -> None:
    """A stale attempt's runs are recorded, but a handler already recorded as succeeded on
    an event stays so: it is not run a second time."""
    ok = HandlerRun("evt_1", "h", "dlv_x", ok=True)
    late = HandlerRun("evt_1", "h", "dlv_x", ok=False, error="timed out", traceback="tb")
    await storage.record_runs([ok])
    await storage.record_runs([late])
    assert await storage.succeeded_runs(["evt_1"]) == {("evt_1", "h")}
