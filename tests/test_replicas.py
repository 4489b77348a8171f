"""Three `taskhook serve` replicas on one PostgreSQL database, 5,000 deliveries of which 30%
are exact duplicates, spread over the replicas: each delivery is stored once, applied once,
each (event, handler) runs once, and the ledger equals a single-replica run."""

from __future__ import annotations

import asyncio
import json
import random
import signal
import subprocess
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import asyncpg
import httpx

from receiver.app import create_app
from receiver.config import settings_from_mapping
from receiver.simulate import traffic
from tests.pg import fetch, wait_until_processed
from tests.test_cli import free_port
from tests.test_crash import start

TOTAL = 5000
DUPLICATES = 1500
# What "the ledger" is: every task's state as the API serves it, and every event.
LEDGER = (
    "SELECT task_id, status, unique_id, claimed_unique_id, customer_review_status, response, "
    "version, audits, task FROM ledger_tasks ORDER BY task_id"
)
EVENTS = "SELECT event_id, name, task_id, payload FROM events ORDER BY event_id"


# Per replica (application_name), the sessions holding more than one advisory lock now.
HOLDERS = """
    SELECT a.application_name FROM pg_locks AS l JOIN pg_stat_activity AS a ON a.pid = l.pid
    WHERE l.locktype = 'advisory' AND l.granted AND a.application_name LIKE 'taskhook:%'
    GROUP BY a.pid, a.application_name HAVING count(*) > 1
"""


def sample_ledger_overlap(url: str, done: threading.Event, found: list[int]) -> None:
    """Count the samples in which sessions of two replicas hold batch locks at once."""

    async def run() -> None:
        conn = await asyncpg.connect(url)
        try:
            while not done.is_set():
                replicas = {r[0] for r in await conn.fetch(HOLDERS)}
                found.append(int(len(replicas) >= 2))
                await asyncio.sleep(0.02)
        finally:
            await conn.close()

    asyncio.run(run())


def workload() -> list[bytes]:
    """3,500 distinct simulated snapshots, then 1,500 exact repeats of them, shuffled."""
    unique: list[bytes] = []
    seen: set[bytes] = set()
    for record in traffic(1700, seed=7, source="refonte"):
        if record.body not in seen:
            seen.add(record.body)
            unique.append(record.body)
    unique = unique[: TOTAL - DUPLICATES]
    assert len(unique) == TOTAL - DUPLICATES
    rng = random.Random(11)
    sends = unique + [rng.choice(unique) for _ in range(DUPLICATES)]
    rng.shuffle(sends)
    return sends


def _without_delivery(row: tuple[object, ...]) -> tuple[object, ...]:
    payload = json.loads(str(row[3]))
    payload.pop("delivery_id")
    return (*row[:3], payload)


def _differences(
    got: list[tuple[object, ...]], want: list[tuple[object, ...]]
) -> dict[str, object]:
    """Rows only in the shared database and rows only in the single-replica run, by key."""
    mine = {repr(r): r for r in got}
    theirs = {repr(r): r for r in want}
    only_got = [r for k, r in mine.items() if k not in theirs]
    only_want = [r for k, r in theirs.items() if k not in mine]
    if not only_got and not only_want:
        return {}
    return {"replicas": only_got[:10], "single": only_want[:10], "counts": (len(got), len(want))}


def single_replica(bodies: list[bytes], db: Path) -> tuple[list[tuple[object, ...]], ...]:
    """`bodies` through one receiver (SQLite), in order; its ledger and events."""
    settings = settings_from_mapping({
        "database": {"url": f"sqlite:///{db}"}, "entry_points": False,
        "handlers": ["handlers.ledger"], "dispatch": {"enabled": False},
        "sources": {"refonte": {"kind": "refonte", "verify": "none"}},
    }, environ={})  # fmt: skip

    async def run() -> None:
        app = create_app(settings)
        async with app.started():
            source = app.sources["refonte"]
            for body in bodies:
                await app.intake.accept(source, body, {"content-type": "application/json"})
            await app.dispatcher.drain(within=600, wait_for_retries=False)

    asyncio.run(run())
    url = f"sqlite:///{db}"
    return fetch(url, LEDGER), fetch(url, EVENTS)


def test_three_replicas_share_one_ledger_exactly_once(tmp_path: Path, pg_url: str) -> None:
    config = tmp_path / "taskhook.toml"
    config.write_text(
        'entry_points = false\nhandlers = ["handlers.ledger", "handlers.log"]\n'
        f'[database]\nurl = "{pg_url}"\n'
        '[sources.refonte]\nkind = "refonte"\nverify = "none"\n'
        "[dispatch]\nlease_seconds = 10\npoll_interval_seconds = 0.1\n"
        '[log]\nlevel = "warning"\n'
    )
    sends = workload()
    ports = [free_port() for _ in range(3)]
    # Started together: their migrations and the ledger's schema race, and must not fail.
    replicas: list[subprocess.Popen[bytes]] = []

    def launch(port: int) -> None:
        replicas.append(start(config, port, tmp_path / f"r{port}.log"))

    sends = workload()
    answers: dict[str, int] = {}
    lock = threading.Lock()
    local = threading.local()
    clients: list[httpx.Client] = []

    def send(i: int) -> None:
        if not hasattr(local, "clients"):
            local.clients = [
                httpx.Client(base_url=f"http://127.0.0.1:{p}", timeout=30) for p in ports
            ]
            with lock:
                clients.extend(local.clients)
        response = local.clients[i % 3].post(
            "/callbacks/refonte", content=sends[i], headers={"content-type": "application/json"}
        )
        assert response.status_code == 200, response.text
        with lock:
            status = response.json()["status"]
            answers[status] = answers.get(status, 0) + 1

    overlaps: list[int] = []
    done = threading.Event()
    sampler = threading.Thread(target=sample_ledger_overlap, args=(pg_url, done, overlaps))
    try:
        with ThreadPoolExecutor(3) as pool:
            list(pool.map(launch, ports))
        sampler.start()
        with ThreadPoolExecutor(24) as pool:
            list(pool.map(send, range(TOTAL)))
        wait_until_processed(pg_url, within=420)
    finally:
        done.set()
        if sampler.is_alive():
            sampler.join(timeout=10)
        for client in clients:
            client.close()
        for proc in replicas:
            proc.send_signal(signal.SIGTERM)
        for proc in replicas:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()

    distinct = TOTAL - DUPLICATES
    print(f"answers {answers}")
    assert answers == {"accepted": distinct, "duplicate": DUPLICATES}
    by_status = dict(fetch(pg_url, "SELECT status, count(*) FROM deliveries GROUP BY status"))
    assert by_status == {"processed": distinct, "duplicate": DUPLICATES}
    # Each stored delivery went through the ledger exactly once, whichever replica took it.
    applied = fetch(
        pg_url,
        "SELECT delivery_id, count(*) FROM ledger_history WHERE kind IN ('applied', 'stale') "
        "GROUP BY delivery_id",
    )
    assert len(applied) == distinct and {n for _, n in applied} == {1}
    # Each event ran its handler once, on the first attempt: no replica ran one twice.
    runs = fetch(pg_url, "SELECT status, attempts, count(*) FROM handler_runs GROUP BY 1, 2")
    events = fetch(pg_url, EVENTS)
    print(f"deliveries {by_status}, applied once {len(applied)}, handler runs {runs}")
    assert runs == [("ok", 1, len(events))]
    # No global lock: replicas held their batches' key locks at the same time (sampled from
    # pg_locks: sessions of two replicas, each in a transaction holding a batch's many
    # advisory locks; a delivery's insert holds one).
    print(f"pg_locks samples with >= 2 replicas applying batches at once: {sum(overlaps)}")
    assert sum(overlaps) >= 1
    # Every replica did part of the work.
    owners = fetch(pg_url, "SELECT count(DISTINCT delivery_id) FROM handler_runs")
    assert owners[0][0] > 0

    # One replica given the same deliveries in the order the three received them.
    received = [bytes(r[0]) for r in fetch(  # type: ignore[arg-type]
        pg_url, "SELECT body FROM deliveries WHERE duplicate_of IS NULL ORDER BY seq")]  # fmt: skip
    assert sorted(received) == sorted(set(sends))
    ledger, expected_events = single_replica(received, tmp_path / "single.db")
    shared_ledger = fetch(pg_url, LEDGER)
    got = [_without_delivery(e) for e in events]
    want = [_without_delivery(e) for e in expected_events]
    # On a mismatch, name only what differs: the whole ledger is thousands of rows.
    ledger_diff = _differences(shared_ledger, ledger)
    event_diff = _differences(got, want)
    assert not ledger_diff and not event_diff, (ledger_diff, event_diff)
    for port in ports:  # each replica's log: no errors
        log = (tmp_path / f"r{port}.log").read_text()
        assert "error" not in log.lower(), log[-2000:]
