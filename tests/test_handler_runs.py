"""Handler isolation: whatever a handler does, the receiver keeps serving and dispatching.

What this file proves (in-process apps on both backends, unless a test says otherwise):

- Any exception a handler raises — ``ValueError``, a ``CancelledError`` of its own,
  ``SystemExit``, ``KeyboardInterrupt``, ``GeneratorExit`` — from a sync or an async handler is
  contained, recorded as that handler's failed run with its traceback, retried only once its
  backoff is due, and the delivery is dead after exactly ``max_attempts``.
- A real ``taskhook serve`` whose handlers raise ``SystemExit`` / ``KeyboardInterrupt`` on every
  event keeps serving, its deliveries end dead, and a restart on that database serves at once
  (SQLite only).
- A blocking synchronous handler runs on a thread, never on the event loop.
- Async handlers that hang and swallow their cancellation are abandoned at their deadline and
  hold at most their own ``concurrency`` slots: a healthy task is still processed.
- A hanging synchronous handler with ``concurrency=1`` holds at most one thread; another
  handler on the same events is unaffected.
- The registry refuses non-positive ``timeout`` / ``concurrency``; a handler's own options win
  over ``[dispatch] handler_timeout_seconds`` / ``handler_concurrency``.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from receiver.app import TaskhookApp
from receiver.errors import RegistryError
from receiver.events import Event
from receiver.records import DeliveryRecord
from receiver.registry import HandlerRegistry
from tests.conftest import BACKENDS, AppFactory, client_for, sample_json, signed
from tests.pg import fetch
from tests.test_cli import free_port
from tests.test_crash import start, stop


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


def snapshot(task_id: str, n: int = 0, status: str = "completed") -> bytes:
    """A distinct, valid snapshot of `task_id`, version `n` (a `status` of "canceled" makes a
    task.canceled event, "completed" a task.completed one)."""
    body = sample_json("05-completed-before-audit.json")
    body["task_id"] = body["task"]["task_id"] = task_id
    body["status"] = body["task"]["status"] = status
    body["task"]["updated_at"] = f"2024-03-01T12:{n:02d}:00.000Z"
    return json.dumps(body).encode()


async def post(client: httpx.AsyncClient, body: bytes) -> str:
    """POST a callback; it must be acknowledged. Returns its delivery id."""
    response = await client.post("/callbacks/refonte", content=body, headers=signed())
    assert response.status_code == 200, response.text
    delivery_id: str = response.json()["delivery_id"]
    return delivery_id


async def query(db_url: str, sql: str) -> list[tuple[object, ...]]:
    # tests.pg.fetch runs its own event loop for PostgreSQL: give it a thread of its own.
    return await asyncio.to_thread(fetch, db_url, sql)


async def record(app: TaskhookApp, delivery_id: str) -> DeliveryRecord:
    found = await app.storage.get_delivery(delivery_id)
    assert found is not None, delivery_id
    return found


async def until(check: Callable[[], Awaitable[bool]], *, within: float, step: float = 0.02) -> bool:
    """Poll `check` until it holds or `within` seconds pass; whether it held."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if await check():
            return True
        await asyncio.sleep(step)
    return await check()


# --- 1. every exception type, sync and async: contained, recorded, retried, dead ------------

RAISED: list[type[BaseException]] = [
    ValueError,
    asyncio.CancelledError,
    SystemExit,
    KeyboardInterrupt,
    GeneratorExit,
]
BACKOFF_BASE = 0.01
BACKOFF_MAX = 0.02


@pytest.mark.parametrize("flavour", ["sync", "async"])
@pytest.mark.parametrize("raised", RAISED, ids=lambda t: t.__name__)
async def test_any_exception_is_a_failed_run_retried_with_backoff_then_dead(
    build_app: AppFactory, db_url: str, raised: type[BaseException], flavour: str
) -> None:
    # A clock that only the test moves: a retry can only happen once the test makes it due,
    # so "retried with backoff" is shown by what runs before and after the clock moves.
    now = [1_700_000_000.0]
    calls: list[str] = []  # task id of every run
    loop_thread = threading.get_ident()
    threads: set[int] = set()

    def fragile_sync(event: Event) -> None:
        calls.append(event.task_id or "")
        threads.add(threading.get_ident())
        if (event.task_id or "").startswith("bad-"):
            raise raised(f"{flavour} handler gave up")

    async def fragile_async(event: Event) -> None:
        calls.append(event.task_id or "")
        threads.add(threading.get_ident())
        if (event.task_id or "").startswith("bad-"):
            raise raised(f"{flavour} handler gave up")

    func = fragile_sync if flavour == "sync" else fragile_async
    app = build_app(
        setup=lambda r: r.on("task.completed", func, name="fragile"),
        clock=lambda: now[0],
        dispatch={
            "max_attempts": 3,
            "backoff_base_seconds": BACKOFF_BASE,
            "backoff_max_seconds": BACKOFF_MAX,
        },
    )
    healthy: list[str] = []
    async with app.started(), client_for(app) as client:
        bad = await post(client, snapshot("bad-1"))
        for attempt in (1, 2, 3):
            await app.dispatcher.drain(wait_for_retries=False)
            shown = await record(app, bad)
            assert (shown.status, shown.attempts) == (
                "failed" if attempt < 3 else "dead",
                attempt,
            )
            assert calls.count("bad-1") == attempt
            if attempt < 3:
                # Equal-jitter backoff: between half and all of base * 2^(attempt-1), capped.
                ceiling = min(BACKOFF_MAX, BACKOFF_BASE * 2 ** (attempt - 1))
                assert ceiling / 2 <= shown.next_attempt_at - now[0] <= ceiling
                # Not due yet: draining again before the clock moves runs nothing.
                await app.dispatcher.drain(wait_for_retries=False)
                assert calls.count("bad-1") == attempt
            # The loop survived the run and the intake still acknowledges.
            healthy.append(await post(client, snapshot(f"ok-{attempt}")))
            now[0] += 1.0
        # Dead is final: no fourth attempt however much time passes.
        await app.dispatcher.drain(wait_for_retries=False)
        now[0] += 60.0
        await app.dispatcher.drain(wait_for_retries=False)
        dead = await record(app, bad)
        healthy_states = [(await record(app, d)).status for d in healthy]

    every = await query(
        db_url,
        "SELECT delivery_id, status, attempts, last_error, traceback FROM handler_runs "
        "WHERE handler = 'fragile'",
    )
    runs = [r[1:] for r in every if r[0] == bad]
    ok_runs = await query(
        db_url, "SELECT count(*) FROM handler_runs WHERE handler = 'fragile' AND status = 'ok'"
    )
    print(
        f"[{db_url.split(':')[0]}] {raised.__name__}/{flavour}: attempts {dead.attempts}, "
        f"status {dead.status}, bad runs {calls.count('bad-1')}, handler_runs {runs[0][:2]}, "
        f"healthy processed {healthy_states.count('processed')}/{len(healthy)}"
    )
    assert (dead.status, dead.attempts, calls.count("bad-1")) == ("dead", 3, 3)
    assert dead.last_error is not None and dead.last_traceback is not None
    assert "fragile" in dead.last_error and raised.__name__ in dead.last_error
    assert "raise raised(" in dead.last_traceback
    assert len(runs) == 1
    status, attempts, last_error, tb = runs[0]
    assert (status, attempts) == ("failed", 3)
    assert isinstance(last_error, str) and last_error.startswith(f"{raised.__name__}:")
    assert isinstance(tb, str)
    assert f"{raised.__name__}: {flavour} handler gave up" in tb
    assert f"in fragile_{flavour}" in tb and "raise raised(" in tb
    # Every delivery posted after a failure was processed, each handled exactly once.
    assert healthy_states == ["processed"] * 3
    assert sorted(t for t in calls if t.startswith("ok-")) == ["ok-1", "ok-2", "ok-3"]
    assert ok_runs == [(3,)]
    # Sync handlers ran on the pool's threads, async ones on the loop.
    if flavour == "sync":
        assert threads and loop_thread not in threads
    else:
        assert threads == {loop_thread}


# --- 2. a real process: SystemExit / KeyboardInterrupt in every handler ---------------------

EXITING_PLUGIN = """
from pathlib import Path

CALLS = Path({calls!r})


def _mark(kind, event):
    with CALLS.open("a") as out:
        out.write(f"{{kind}} {{event.delivery_id}}\\n")


def sync_exit(event):
    _mark("sync", event)
    raise {raised}("sync handler quits")


async def async_exit(event):
    _mark("async", event)
    raise {raised}("async handler quits")


def register(registry):
    registry.on_any(sync_exit, name="sync-exit")
    registry.on_any(async_exit, name="async-exit")
"""
SERVE_ATTEMPTS = 3


def _wait_all_dead(db: str, ids: list[str], proc: subprocess.Popen[bytes], within: float) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the server exited"
        status = dict(fetch(db, "SELECT id, status FROM deliveries"))
        if all(status.get(i) == "dead" for i in ids):
            return
        time.sleep(0.1)


def _calls(path: Path) -> dict[str, list[str]]:
    """Handler kinds that ran, by delivery id."""
    runs: dict[str, list[str]] = {}
    for line in path.read_text().splitlines() if path.exists() else []:
        kind, delivery_id = line.split()
        runs.setdefault(delivery_id, []).append(kind)
    return runs


@pytest.mark.parametrize("raised", ["SystemExit", "KeyboardInterrupt"])
def test_a_served_process_survives_handlers_that_raise_exit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, raised: str
) -> None:
    calls = tmp_path / "calls.txt"
    plugin = EXITING_PLUGIN.format(calls=str(calls), raised=raised)
    (tmp_path / "exiting_plugin.py").write_text(plugin)
    db = f"sqlite:///{tmp_path / 'taskhook.db'}"
    config = tmp_path / "taskhook.toml"
    config.write_text(
        'entry_points = false\nhandlers = ["exiting_plugin"]\n'
        f'[database]\nurl = "{db}"\n'
        '[sources.refonte]\nkind = "refonte"\nverify = "none"\n'
        f"[dispatch]\npoll_interval_seconds = 0.1\nmax_attempts = {SERVE_ATTEMPTS}\n"
        "backoff_base_seconds = 0.05\nbackoff_max_seconds = 0.1\n"
        '[log]\nlevel = "warning"\n'
    )
    # `start` passes the test's environment on (minus TASKHOOK_*): the plugin is found there.
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    log = tmp_path / "serve.log"
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = start(config, port, log)
    try:
        first = httpx.post(f"{base}/callbacks/refonte", content=snapshot("exit-0"), timeout=5)
        assert first.status_code == 200, first.text
        ids = [first.json()["delivery_id"]]
        _wait_all_dead(db, ids, proc, within=15)
        # After a delivery went through all its attempts the server still answers.
        assert httpx.get(f"{base}/healthz", timeout=5).status_code == 200
        for n in range(1, 6):
            more = httpx.post(f"{base}/callbacks/refonte", content=snapshot(f"exit-{n}"), timeout=5)
            assert more.status_code == 200, more.text
            ids.append(more.json()["delivery_id"])
        _wait_all_dead(db, ids, proc, within=20)
        assert httpx.get(f"{base}/healthz", timeout=5).status_code == 200
        alive = proc.poll() is None
    finally:
        first_exit = stop(proc)
    assert alive
    # Stopped by the test's SIGTERM, cleanly: not by the handlers' exit.
    assert first_exit in (0, -signal.SIGTERM), log.read_text()
    rows = fetch(db, "SELECT id, status, attempts, last_error FROM deliveries")
    runs = fetch(db, "SELECT handler, status, attempts FROM handler_runs")
    ran = _calls(calls)
    assert sorted(r[0] for r in rows) == sorted(ids)
    assert {(s, a) for _, s, a, _ in rows} == {("dead", SERVE_ATTEMPTS)}
    for _, _, _, error in rows:
        assert isinstance(error, str)
        assert "sync-exit on evt_" in error and "async-exit on evt_" in error
        assert f"{raised}: sync handler quits" in error
        assert f"{raised}: async handler quits" in error
    assert sorted(runs) == sorted(
        [("sync-exit", "failed", SERVE_ATTEMPTS), ("async-exit", "failed", SERVE_ATTEMPTS)]
        * len(ids)
    )
    # Each attempt re-ran both failed handlers: 3 attempts x 2 handlers per delivery.
    assert {d: sorted(k) for d, k in ran.items()} == {
        d: ["async"] * SERVE_ATTEMPTS + ["sync"] * SERVE_ATTEMPTS for d in ids
    }

    # Restart on the same database, dead deliveries present: it serves at once, no crash loop.
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    restarted = start(config, port, log)  # returns once /readyz answers 200
    try:
        assert httpx.get(f"{base}/healthz", timeout=5).status_code == 200
        again = httpx.post(f"{base}/callbacks/refonte", content=snapshot("exit-after"), timeout=5)
        assert again.status_code == 200, again.text
        after = again.json()["delivery_id"]
        _wait_all_dead(db, [after], restarted, within=15)
        # Still up, still answering, a while after the restart.
        samples = []
        for _ in range(5):
            samples.append(httpx.get(f"{base}/healthz", timeout=5).status_code)
            assert restarted.poll() is None
            time.sleep(0.1)
    finally:
        second_exit = stop(restarted)
    assert samples == [200] * 5
    assert second_exit in (0, -signal.SIGTERM), log.read_text()
    final = fetch(db, "SELECT id, status, attempts FROM deliveries")
    old = [(s, a) for i, s, a in final if i != after]
    new = [(s, a) for i, s, a in final if i == after]
    ran_after = _calls(calls)
    print(
        f"[sqlite] serve with {raised}: {len(ids)} dead after {SERVE_ATTEMPTS} attempts, "
        f"handler calls {sum(len(k) for k in ran.values())}, exit {first_exit}; restart: "
        f"healthz {samples.count(200)}/5, new delivery {new[0]}, exit {second_exit}"
    )
    # The dead deliveries were not run again by the restarted server.
    assert old == [("dead", SERVE_ATTEMPTS)] * len(ids)
    assert {d: ran_after[d] for d in ids} == ran
    assert new == [("dead", SERVE_ATTEMPTS)]
    assert len(ran_after[after]) == 2 * SERVE_ATTEMPTS


# --- 3. a blocking sync handler runs off the event loop -------------------------------------


async def test_a_blocking_sync_handler_does_not_block_the_loop(build_app: AppFactory) -> None:
    gate = threading.Event()  # set by the test only after the 50 POSTs were answered
    blocked = threading.Event()
    loop_thread = threading.get_ident()
    blocker_threads: list[int] = []
    released: list[bool] = []
    seen: list[str] = []

    def blocking(event: Event) -> None:
        seen.append(event.task_id or "")
        if event.task_id == "blocker":
            blocker_threads.append(threading.get_ident())
            blocked.set()
            # Bounded: were this on the loop, the POSTs below could not complete before the
            # wait ran out, and `released` would say so.
            released.append(gate.wait(timeout=15))

    app = build_app(
        setup=lambda r: r.on_any(blocking, name="blocking", timeout=30),
        dispatch={"enabled": True, "poll_interval_seconds": 0.05},
    )
    async with app.started(), client_for(app) as client:
        blocker = await post(client, snapshot("blocker"))

        async def is_blocked() -> bool:
            return blocked.is_set()

        assert await until(is_blocked, within=10)
        others = await asyncio.gather(
            *(post(client, snapshot(f"other-{n:02d}")) for n in range(50))
        )
        stored = [await app.storage.get_delivery(d) for d in others]
        still_blocked = released == [] and not gate.is_set()
        gate.set()
        await app.dispatcher.drain(within=20)
        states = [(await record(app, d)).status for d in [blocker, *others]]
    print(
        f"[{app.settings.database.url.split(':')[0]}] blocking sync handler: "
        f"{sum(s is not None for s in stored)}/50 stored while blocked, "
        f"{states.count('processed')}/51 processed, handler runs {len(seen)}, "
        f"ran off loop {blocker_threads[0] != loop_thread}"
    )
    assert len(set(others)) == 50
    assert sum(s is not None for s in stored) == 50
    assert still_blocked
    assert released == [True]
    assert blocker_threads != [] and blocker_threads[0] != loop_thread
    assert states == ["processed"] * 51
    assert sorted(seen) == sorted(["blocker", *(f"other-{n:02d}" for n in range(50))])


# --- 4. hanging async handlers that swallow their cancellation -------------------------------

# Module-level stop flag: the hanging handlers end only once the test sets it.
HANG_STOP = threading.Event()
HUNG: set[asyncio.Task[Any]] = set()
HANG_NAME = "hang"


async def hang_forever(event: Event) -> None:
    task = asyncio.current_task()
    assert task is not None
    HUNG.add(task)
    try:
        while not HANG_STOP.is_set():
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                continue  # swallows the deadline's cancellation: only the flag ends it
    finally:
        HUNG.discard(task)


async def test_hanging_async_handlers_hold_only_their_own_slots(build_app: AppFactory) -> None:
    HANG_STOP.clear()
    healthy: list[str] = []  # task id of every healthy run

    def setup(r: HandlerRegistry) -> None:
        # The bad tasks are canceled ones: only their task.canceled events reach the hang.
        r.on("task.canceled", hang_forever, name=HANG_NAME, timeout=0.3, concurrency=2)
        r.on_any(lambda e: healthy.append(e.task_id or ""), name="healthy")

    app = build_app(
        setup=setup,
        dispatch={
            "enabled": True,
            "poll_interval_seconds": 0.05,
            "max_attempts": 1000,  # the bad ones keep failing for the whole test
            "backoff_base_seconds": 0.05,
            "backoff_max_seconds": 0.1,
        },
    )
    abandoned: list[int] = []

    async def sample() -> None:
        for _ in range(3000):  # bounded; cancelled at the end
            abandoned.append(app.dispatcher.runner.abandoned.get(HANG_NAME, 0))
            await asyncio.sleep(0.005)

    bad_tasks = [f"bad-{n:02d}" for n in range(16)]
    async with app.started(), client_for(app) as client:
        sampler = asyncio.create_task(sample())
        try:
            bad = [await post(client, snapshot(t, status="canceled")) for t in bad_tasks]
            good = await post(client, snapshot("good-1"))

            async def good_done() -> bool:
                return (await record(app, good)).status == "processed"

            assert await until(good_done, within=15)
            # When the healthy task is through, none of the bad ones is.
            at_good = [(await record(app, d)).status for d in bad]
            healthy_at_good = healthy.count("good-1")

            async def all_tried() -> bool:
                return all([(await record(app, d)).last_error for d in bad])

            assert await until(all_tried, within=15)
            errors = [(await record(app, d)).last_error or "" for d in bad]
            states = [(await record(app, d)).status for d in bad]
            peak_while_hanging = max(abandoned)
        finally:
            # End the hung runs: set the flag, then wake each one so it sees it.
            HANG_STOP.set()
            for task in list(HUNG):
                task.cancel()

        async def none_abandoned() -> bool:
            return app.dispatcher.runner.abandoned.get(HANG_NAME, 0) == 0 and not HUNG

        ended = await until(none_abandoned, within=10)

        # With the slots free again the bad deliveries go through on their next attempt.
        async def all_processed() -> bool:
            return all([(await record(app, d)).status == "processed" for d in bad])

        recovered = await until(all_processed, within=15)
        sampler.cancel()
        await asyncio.gather(sampler, return_exceptions=True)
    timed_out = sum("timed out after 0.3s" in e for e in errors)
    busy = sum("no free slot" in e for e in errors)
    print(
        f"[{app.settings.database.url.split(':')[0]}] hanging async: good processed with "
        f"{at_good.count('processed')}/16 bad processed; bad errors: {timed_out} timed out, "
        f"{busy} no free slot; abandoned max {max(abandoned)} over {len(abandoned)} samples; "
        f"healthy runs for good-1 {healthy.count('good-1')}"
    )
    assert at_good.count("processed") == 0 and at_good.count("dead") == 0
    assert healthy_at_good == 1
    assert set(states) <= {"failed", "received"}
    assert all(e for e in errors)
    assert all("timed out after 0.3s" in e or "no free slot" in e for e in errors), errors
    # The hang reached its two slots and never held more.
    assert peak_while_hanging == 2 and max(abandoned) == 2
    assert ended and not HUNG
    assert recovered
    # The healthy handler ran exactly once per event: retries re-ran only the hang.
    assert sorted(healthy) == sorted([*bad_tasks, "good-1"])
    assert app.dispatcher.runner.abandoned.get(HANG_NAME, 0) == 0


# --- 5. a hanging sync handler holds at most one thread ----------------------------------------

SYNC_STOP = threading.Event()


async def test_a_hanging_sync_handler_holds_one_thread_and_spares_others(
    build_app: AppFactory, db_url: str
) -> None:
    SYNC_STOP.clear()
    lock = threading.Lock()
    active = [0]
    peak = [0]
    started = [0]
    steady: list[str] = []
    failures: list[tuple[str, str]] = []

    def hang_sync(event: Event) -> None:
        with lock:
            active[0] += 1
            started[0] += 1
            peak[0] = max(peak[0], active[0])
        try:
            for _ in range(1500):  # bounded: 30 s at most, ended by the flag long before
                if SYNC_STOP.is_set():
                    return
                time.sleep(0.02)
        finally:
            with lock:
                active[0] -= 1

    def setup(r: HandlerRegistry) -> None:
        r.on("task.completed", hang_sync, name="hang-sync", timeout=0.3, concurrency=1)
        r.on("task.completed", lambda e: steady.append(e.task_id or ""), name="steady")
        r.on_error(lambda e, name, exc: failures.append((name, str(exc))))

    app = build_app(
        setup=setup,
        dispatch={"max_attempts": 3, "backoff_base_seconds": 0.01, "backoff_max_seconds": 0.02},
    )
    tasks = [f"t-{n}" for n in range(6)]
    async with app.started(), client_for(app) as client:
        ids = [await post(client, snapshot(t)) for t in tasks]
        try:
            await app.dispatcher.drain(within=30)
            hanging_after = active[0]
        finally:
            SYNC_STOP.set()

        async def thread_ended() -> bool:
            return active[0] == 0

        ended = await until(thread_ended, within=10)
        shown = [await record(app, d) for d in ids]
    runs = await query(
        db_url, "SELECT handler, status, attempts FROM handler_runs ORDER BY handler"
    )
    timed_out = [e for n, e in failures if n == "hang-sync" and e == "timed out after 0.3s"]
    busy = [e for n, e in failures if n == "hang-sync" and e.startswith("no free slot within")]
    print(
        f"[{db_url.split(':')[0]}] hanging sync: started {started[0]}, peak threads {peak[0]}, "
        f"{len(timed_out)} timed out + {len(busy)} no free slot, "
        f"dead {sum(s.status == 'dead' for s in shown)}/6, steady runs {len(steady)}"
    )
    # One thread ever ran the hang: it kept its single slot, every later run found none.
    assert (started[0], peak[0], hanging_after) == (1, 1, 1)
    assert ended
    assert len(timed_out) == 1 and len(busy) == 6 * 3 - 1
    assert len(failures) == 6 * 3  # the steady handler never failed
    assert [(s.status, s.attempts) for s in shown] == [("dead", 3)] * 6
    assert sorted(steady) == tasks  # once per event: it succeeded, retries skipped it
    assert sorted(runs) == sorted([("hang-sync", "failed", 3)] * 6 + [("steady", "ok", 1)] * 6)


async def test_a_sync_run_past_its_deadline_counts_as_abandoned_until_its_thread_ends(
    build_app: AppFactory,
) -> None:
    # `HandlerRunner.abandoned` is "runs cut at their deadline that have not ended yet", and
    # the "no free slot" error reports it: a thread still running past its deadline is one.
    SYNC_STOP.clear()
    running = threading.Event()
    ended = threading.Event()
    failures: list[str] = []

    def hang_sync(event: Event) -> None:
        running.set()
        try:
            for _ in range(1500):  # bounded: 30 s at most, ended by the flag long before
                if SYNC_STOP.is_set():
                    return
                time.sleep(0.02)
        finally:
            ended.set()

    def setup(r: HandlerRegistry) -> None:
        r.on("task.completed", hang_sync, name="hang-sync", timeout=0.3, concurrency=1)
        r.on_error(lambda e, name, exc: failures.append(str(exc)))

    app = build_app(
        setup=setup,
        dispatch={"max_attempts": 2, "backoff_base_seconds": 0.01, "backoff_max_seconds": 0.02},
    )
    async with app.started(), client_for(app) as client:
        await post(client, snapshot("t-0"))
        try:
            await app.dispatcher.drain(within=10)
            thread_still_running = running.is_set() and not ended.is_set()
            counted = app.dispatcher.runner.abandoned.get("hang-sync", 0)
        finally:
            SYNC_STOP.set()

        async def thread_ended() -> bool:
            return ended.is_set()

        assert await until(thread_ended, within=10)
    print(
        f"[{app.settings.database.url.split(':')[0]}] sync run past its deadline: thread "
        f"running {thread_still_running}, abandoned counted {counted}, errors {failures}"
    )
    assert thread_still_running
    assert failures[0] == "timed out after 0.3s"
    assert failures[1].startswith("no free slot within 0.3s")
    assert counted == 1, "a thread still running past its deadline is not counted"
    assert "(1 earlier runs still going past their deadline)" in failures[1]


# --- 6. registration checks; a handler's own limits win over [dispatch] ---------------------


@pytest.mark.parametrize("options", [{"timeout": 0}, {"timeout": -1}, {"concurrency": 0}], ids=str)
def test_registry_refuses_non_positive_limits_naming_the_handler(options: dict[str, int]) -> None:
    registry = HandlerRegistry()
    with pytest.raises(RegistryError, match="'picky'"):
        registry.on("task.completed", lambda e: None, name="picky", **options)  # type: ignore[arg-type]
    with pytest.raises(RegistryError, match="'picky-any'"):
        registry.on_any(lambda e: None, name="picky-any", **options)  # type: ignore[arg-type]
    print(f"registry refused {options} for on and on_any; handlers {len(registry.handlers)}")
    assert registry.handlers == ()


async def test_a_handlers_own_timeout_and_concurrency_override_the_dispatch_defaults(
    build_app: AppFactory,
) -> None:
    active = {"wide": 0, "plain": 0}
    peak = {"wide": 0, "plain": 0}
    all_in = asyncio.Event()

    async def short(event: Event) -> None:
        await asyncio.sleep(10)  # cut at its own 0.2 s, not at the default 30 s

    async def wide(event: Event) -> None:
        active["wide"] += 1
        peak["wide"] = max(peak["wide"], active["wide"])
        if active["wide"] == 3:
            all_in.set()
        try:
            # Three at once only if its own concurrency=3 beats handler_concurrency=1.
            await asyncio.wait_for(all_in.wait(), timeout=5)
        finally:
            active["wide"] -= 1

    async def plain(event: Event) -> None:
        active["plain"] += 1
        peak["plain"] = max(peak["plain"], active["plain"])
        await asyncio.sleep(0.05)
        active["plain"] -= 1

    def setup(r: HandlerRegistry) -> None:
        r.on("task.canceled", short, name="short", timeout=0.2)
        r.on("task.completed", wide, name="wide", concurrency=3)
        r.on("task.completed", plain, name="plain")  # the [dispatch] defaults

    app = build_app(
        setup=setup,
        dispatch={"max_attempts": 1, "handler_timeout_seconds": 30, "handler_concurrency": 1},
    )
    async with app.started(), client_for(app) as client:
        cut = await post(client, snapshot("short-1", status="canceled"))
        many = [await post(client, snapshot(f"wide-{n}")) for n in range(3)]
        await app.dispatcher.drain(within=20)
        shown_cut = await record(app, cut)
        shown_many = [(await record(app, d)).status for d in many]
    print(
        f"[{app.settings.database.url.split(':')[0]}] overrides: short -> {shown_cut.status} "
        f"({shown_cut.last_error}), wide peak {peak['wide']}, plain peak {peak['plain']}, "
        f"wide deliveries processed {shown_many.count('processed')}/3"
    )
    assert (shown_cut.status, shown_cut.attempts) == ("dead", 1)
    assert shown_cut.last_error is not None and "timed out after 0.2s" in shown_cut.last_error
    assert shown_many == ["processed"] * 3
    assert peak == {"wide": 3, "plain": 1}
