"""Leases live as long as the work, and a dead dispatcher's work is taken over fast.

- a handler three times slower than the lease still runs once per event, with a second
  dispatcher on the same database waiting for any lease to lapse (async and sync handlers);
- settings under which leases could not be renewed in time are refused at start-up, naming
  the keys (in process and through `taskhook serve`);
- after ``kill -9`` with deliveries in flight, the restarted process resumes them within 10 s
  although their lease (60 s) has not run out; another replica does the same (PostgreSQL);
- `Liveness` calls an owner dead only when it is (stale heartbeat, or a vanished pid on this
  host), never itself, and stops trusting its own claims when beats fail too long;
- a claim never returns what the same owner holds, even with its lease expired.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import types
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import cast

import httpx
import pytest

import receiver.liveness as liveness_module
from receiver.config import DispatchSettings
from receiver.errors import ConfigError, StorageUnavailable
from receiver.events import Event
from receiver.liveness import Liveness
from receiver.records import Owner
from receiver.registry import HandlerRegistry
from receiver.storage import Storage
from tests.conftest import BACKENDS, AppFactory, client_for, make_settings, signed
from tests.pg import fetch, wait_until_processed
from tests.test_cli import clean_env, free_port
from tests.test_crash import stop
from tests.test_dispatch import snapshot

# For every event: sleep, then record the event id. A run killed mid-way writes nothing, so
# a line in the file is a run that completed.
PLUGIN = """
import asyncio
import os


async def slow(event):
    await asyncio.sleep(float(os.environ.get("LEASES_SLEEP", "2")))
    with open(os.environ["LEASES_OUT"], "a") as out:
        out.write(event.event_id + "\\n")


def register(registry):
    registry.on_any(slow, name="slow")
"""
LEASED = "SELECT count(*) FROM dispatch_heads WHERE lease_owner IS NOT NULL"
IN_FLIGHT = 8
RESUME_WITHIN = 10.0


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


# --- 1. a handler slower than the lease ------------------------------------------------------


@pytest.mark.parametrize("kind", ["async", "sync"])
async def test_a_handler_three_times_slower_than_the_lease_runs_once_per_event(
    build_app: AppFactory, db_url: str, kind: str
) -> None:
    runs: Counter[str] = Counter()  # event id -> runs, whichever app ran it
    by_app: Counter[str] = Counter()
    lock = threading.Lock()  # sync runs count from the handler threads

    def setup_for(app_name: str) -> object:
        def count(event: Event) -> None:
            with lock:
                runs[event.event_id] += 1
                by_app[app_name] += 1

        async def slow_async(event: Event) -> None:
            await asyncio.sleep(2.7)
            count(event)

        def slow_sync(event: Event) -> None:
            time.sleep(2.7)
            count(event)

        def setup(r: HandlerRegistry) -> None:
            r.on_any(slow_async if kind == "async" else slow_sync, name="slow")

        return setup

    # Both dispatchers poll fast, so the other one would claim a delivery the moment its
    # 0.9 s lease lapsed: only renewal by heartbeats keeps each run single.
    dispatch = {
        "enabled": True,
        "lease_seconds": 0.9,
        "heartbeat_seconds": 0.3,
        "takeover_seconds": 0.9,
        "poll_interval_seconds": 0.05,
    }
    first = build_app(setup=setup_for("first"), dispatch=dispatch)
    second = build_app(setup=setup_for("second"), dispatch=dispatch)
    async with first.started(), second.started(), client_for(first) as client:
        for n in range(6):
            response = await client.post(
                "/callbacks/refonte", content=snapshot(f"slow-{n}", n), headers=signed()
            )
            assert response.status_code == 200, response.text
        for _ in range(300):  # at most 15 s; the work itself takes about 3
            if await first.storage.backlog() == 0:
                break
            await asyncio.sleep(0.05)

    deliveries = await asyncio.to_thread(
        fetch, db_url, "SELECT status, attempts, count(*) FROM deliveries GROUP BY 1, 2"
    )
    events = [e for (e,) in await asyncio.to_thread(fetch, db_url, "SELECT event_id FROM events")]
    handler_runs = await asyncio.to_thread(
        fetch, db_url, "SELECT status, attempts, count(*) FROM handler_runs GROUP BY 1, 2"
    )
    print(
        f"[{db_url.split(':')[0]} {kind}] runs per event {sorted(runs.values())}, "
        f"by app {dict(by_app)}, deliveries {deliveries}, handler_runs {handler_runs}"
    )
    assert deliveries == [("processed", 1, 6)]
    assert len(events) >= 6
    assert dict(runs) == dict.fromkeys(events, 1)  # every event ran, and exactly once
    assert handler_runs == [("ok", 1, len(events))]


# --- 2. settings that cannot be honoured -----------------------------------------------------

UNRENEWABLE = [
    ({"heartbeat_seconds": 5, "lease_seconds": 10}, "dispatch.lease_seconds"),
    ({"heartbeat_seconds": 5, "takeover_seconds": 10}, "dispatch.takeover_seconds"),
]


@pytest.mark.parametrize(("dispatch", "key"), UNRENEWABLE)
def test_a_heartbeat_too_slow_for_the_lease_or_takeover_is_refused(
    tmp_path: Path, dispatch: dict[str, float], key: str
) -> None:
    with pytest.raises(ConfigError) as raised:
        make_settings(tmp_path / "x.db", dispatch=dispatch)
    print(f"refused: {raised.value}")
    assert "dispatch.heartbeat_seconds" in str(raised.value)
    assert key in str(raised.value)
    # A heartbeat exactly a third of both is allowed: the check is not a blanket refusal.
    fits = make_settings(
        tmp_path / "x.db",
        dispatch={"heartbeat_seconds": 5, "lease_seconds": 15, "takeover_seconds": 15},
    )
    assert fits.dispatch.heartbeat_seconds == 5


@pytest.mark.parametrize(("dispatch", "key"), UNRENEWABLE)
def test_serve_refuses_a_heartbeat_too_slow_in_one_line(
    tmp_path: Path, dispatch: dict[str, float], key: str
) -> None:
    config = tmp_path / "taskhook.toml"
    settings = "".join(f"{k} = {v}\n" for k, v in dispatch.items())
    config.write_text(
        'entry_points = false\n[database]\nurl = "sqlite:///'
        f'{tmp_path / "taskhook.db"}"\n'
        '[sources.refonte]\nkind = "refonte"\nverify = "none"\n'
        f"[dispatch]\n{settings}"
    )
    done = subprocess.run(
        [sys.executable, "-m", "receiver.cli", "serve", "--config", str(config), "--port",
         str(free_port())], capture_output=True, text=True, timeout=30, env=clean_env(),
    )  # fmt: skip
    output = (done.stdout + done.stderr).strip()
    print(f"exit {done.returncode}: {output}")
    assert done.returncode != 0
    assert len(output.splitlines()) == 1, output  # the message alone: no traceback, no server
    assert "Traceback" not in output
    assert "dispatch.heartbeat_seconds" in output
    assert key in output


# --- 3. and 4. kill -9 with deliveries in flight ---------------------------------------------


def serve(config: Path, port: int, log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """`taskhook serve` with `env`, returned once it answers /readyz (stopped if it never does)."""
    with log.open("ab") as out:  # the child keeps its own handle
        proc = subprocess.Popen(
            [sys.executable, "-m", "receiver.cli", "serve", "--config", str(config), "--port",
             str(port)],
            stdout=out, stderr=subprocess.STDOUT, env=env,
        )  # fmt: skip
    for _ in range(200):  # at most about 20 s
        if proc.poll() is not None:
            break
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=0.5).status_code == 200:
                return proc
        except httpx.TransportError:
            time.sleep(0.05)
    stop(proc)
    raise AssertionError(log.read_text())


def kill_9(proc: subprocess.Popen[bytes]) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    assert proc.returncode == -signal.SIGKILL


def plugin_setup(tmp_path: Path, db_url: str) -> tuple[Path, Path]:
    """The plugin module and a config using it with the default lease (60 s); the config
    and the file the handler writes to."""
    (tmp_path / "lease_plugin.py").write_text(PLUGIN)
    config = tmp_path / "taskhook.toml"
    config.write_text(
        'entry_points = false\nhandlers = ["lease_plugin"]\n'
        f'[database]\nurl = "{db_url}"\n'
        '[sources.refonte]\nkind = "refonte"\nverify = "none"\n'
        "[dispatch]\npoll_interval_seconds = 0.1\n"
        '[log]\nlevel = "warning"\n'
    )
    return config, tmp_path / "ran.txt"


def post_in_flight(port: int) -> None:
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5) as client:
        for n in range(IN_FLIGHT):
            response = client.post(
                "/callbacks/refonte",
                content=snapshot(f"lease-{n}", n),
                headers={"content-type": "application/json"},
            )
            assert response.status_code == 200, response.text


def wait_until_leased(url: str) -> None:
    for _ in range(100):  # at most about 10 s
        if fetch(url, LEASED)[0][0] == IN_FLIGHT:
            return
        time.sleep(0.05)
    raise AssertionError(f"deliveries never all leased: {fetch(url, LEASED)}")


def assert_each_event_ran_once(url: str, ran: Path) -> Counter[str]:
    lines = Counter(ran.read_text().split()) if ran.exists() else Counter()
    events = {e for (e,) in fetch(url, "SELECT event_id FROM events")}
    statuses = fetch(url, "SELECT status, count(*) FROM deliveries GROUP BY status")
    assert statuses == [("processed", IN_FLIGHT)]  # none lost, none left behind
    assert len(events) >= IN_FLIGHT
    assert dict(lines) == dict.fromkeys(events, 1)
    return lines


def test_a_restart_after_kill_9_resumes_in_flight_deliveries_within_10s(
    tmp_path: Path, db_url: str
) -> None:
    config, ran = plugin_setup(tmp_path, db_url)
    env = clean_env(PYTHONPATH=str(tmp_path), LEASES_OUT=str(ran))
    port = free_port()
    log = tmp_path / "serve.log"
    proc = serve(config, port, log, env)
    try:
        post_in_flight(port)
        wait_until_leased(db_url)
    finally:
        kill_9(proc)
    # The kill landed while every run was mid-way: nothing finished, all 8 still leased.
    assert not ran.exists()
    assert fetch(db_url, LEASED)[0][0] == IN_FLIGHT

    restarted = serve(config, port, log, env)
    try:
        ready = time.monotonic()
        wait_until_processed(db_url, within=15)
        resumed = time.monotonic() - ready
    finally:
        stop(restarted)
    lines = assert_each_event_ran_once(db_url, ran)
    print(f"[{db_url.split(':')[0]}] resumed {IN_FLIGHT} in-flight deliveries {resumed:.2f} s "
          f"after restart (lease 60 s); runs per event {sorted(lines.values())}")  # fmt: skip
    assert resumed < RESUME_WITHIN


@pytest.mark.parametrize("backend", ["postgres"])
def test_another_replica_takes_over_a_killed_one_within_10s(tmp_path: Path, db_url: str) -> None:
    config, ran = plugin_setup(tmp_path, db_url)
    # A's runs take longer, so they are still mid-way once B has started (a start takes
    # about a second) and the kill lands on work in flight; B runs them in the usual 2 s.
    env_a = clean_env(PYTHONPATH=str(tmp_path), LEASES_OUT=str(ran), LEASES_SLEEP="8")
    env_b = clean_env(PYTHONPATH=str(tmp_path), LEASES_OUT=str(ran))
    port_a, port_b = free_port(), free_port()
    a = serve(config, port_a, tmp_path / "a.log", env_a)
    b: subprocess.Popen[bytes] | None = None
    try:
        post_in_flight(port_a)
        wait_until_leased(db_url)
        b = serve(config, port_b, tmp_path / "b.log", env_b)
        # B is up beside a live A: it must not have taken any of A's leases.
        owners = fetch(db_url, "SELECT lease_owner, count(*) FROM dispatch_heads GROUP BY 1")
        assert len(owners) == 1 and owners[0][1] == IN_FLIGHT, owners
        kill_9(a)
        killed = time.monotonic()
        assert not ran.exists()  # A finished nothing: everything was in flight at the kill
        wait_until_processed(db_url, within=15)
        took_over = time.monotonic() - killed
    finally:
        if a.poll() is None:
            a.kill()
            a.wait(timeout=5)
        if b is not None:
            stop(b)
    lines = assert_each_event_ran_once(db_url, ran)
    print(f"[postgres] replica B finished A's {IN_FLIGHT} in-flight deliveries {took_over:.2f} s "
          f"after A's kill -9 (lease 60 s); runs per event {sorted(lines.values())}")  # fmt: skip
    assert took_over < RESUME_WITHIN


# --- 5. liveness -----------------------------------------------------------------------------


def vanished_pid() -> int:
    """The pid of a process that has ended (and been reaped)."""
    done = subprocess.Popen([sys.executable, "-c", "pass"])
    done.wait(timeout=30)
    return done.pid


NOW = 1_700_000_000.0
SETTINGS = DispatchSettings(heartbeat_seconds=1, lease_seconds=60, takeover_seconds=10)


class FailingBeats:
    """Storage whose first heartbeat succeeds and every later one finds the database down."""

    def __init__(self) -> None:
        self.beats = 0

    async def heartbeat(
        self, owner: str, *, host: str, pid: int, now: float, lease_seconds: float
    ) -> set[int]:
        self.beats += 1
        if self.beats > 1:
            raise StorageUnavailable("database unreachable")
        return set()

    async def owners(self) -> list[Owner]:
        return []

    async def release_owners(self, owners: Sequence[Owner]) -> int:
        return 0


def test_another_hosts_owner_is_dead_only_past_takeover_seconds() -> None:
    me = Liveness(storage=cast(Storage, None), settings=SETTINGS, owner="me", clock=lambda: NOW)
    elsewhere = "another-host-" + socket.gethostname()
    recent = Owner("recent", elsewhere, 4242, NOW - 9.9)
    on_the_edge = Owner("edge", elsewhere, 4242, NOW - 10)
    silent = Owner("silent", elsewhere, 4242, NOW - 10.1)
    assert me.dead([recent, on_the_edge, silent], NOW) == [silent]
    # The same rows a little later: the recent one's silence now counts too.
    assert me.dead([recent, on_the_edge, silent], NOW + 0.2) == [recent, on_the_edge, silent]


def test_a_vanished_pid_on_this_host_is_dead_at_once_and_self_never() -> None:
    me = Liveness(storage=cast(Storage, None), settings=SETTINGS, owner="me", clock=lambda: NOW)
    gone = Owner("gone", me.host, vanished_pid(), NOW)  # beat just now, but its process ended
    alive = Owner("alive", me.host, os.getppid(), NOW)  # a live process on this host
    sibling = Owner("sibling", me.host, os.getpid(), NOW)  # another dispatcher in this process
    itself = Owner("me", me.host, os.getpid(), NOW - 3600)  # its own row, however old
    assert me.dead([gone, alive, sibling, itself], NOW) == [gone]
    # Its own row stays alive even with a pid that does not exist.
    assert me.dead([Owner("me", me.host, vanished_pid(), NOW - 3600)], NOW) == []


async def test_failing_beats_make_a_process_distrust_its_claims(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    mono = [100.0]
    # Only the liveness module's clock is faked: the event loop keeps the real one.
    fake_time = types.SimpleNamespace(monotonic=lambda: mono[0], time=time.time)
    monkeypatch.setattr(liveness_module, "time", fake_time)
    storage = FailingBeats()
    me = Liveness(storage=cast(Storage, storage), settings=SETTINGS, owner="me")
    assert not me.healthy()  # no beat yet: nothing to vouch for
    assert await me.ensure() == set()
    assert me.healthy()
    healthy_at: list[tuple[float, bool]] = []
    for step in range(1, 13):  # beats due every second, each one failing from now on
        mono[0] = 100.0 + step
        with pytest.raises(StorageUnavailable):
            await me.ensure()
        healthy_at.append((step, me.healthy()))
    mono[0] = 108.9  # takeover - heartbeat = 9 s after the last good beat: not yet
    assert me.healthy()
    mono[0] = 109.1
    assert not me.healthy()
    print(f"beats {storage.beats}, healthy by seconds since the last good beat {healthy_at}")
    assert storage.beats == 13
    assert [ok for _, ok in healthy_at] == [True] * 8 + [False] * 4


# --- 6. a claim never returns what its owner holds -------------------------------------------


async def test_a_claim_never_returns_what_the_same_owner_holds(build_app: AppFactory) -> None:
    app = build_app()  # dispatch disabled: only this test claims
    async with app.started(), client_for(app) as client:
        for n in range(3):
            response = await client.post(
                "/callbacks/refonte", content=snapshot(f"own-{n}", n), headers=signed()
            )
            assert response.status_code == 200, response.text
        storage = app.storage
        t = time.time() + 1
        first = await storage.claim_ready(owner="a", limit=10, now=t, lease_seconds=0.001)
        assert len(first) == 3
        seqs = {d.seq for d in first}
        # The lease has long expired, yet its owner is not handed its own deliveries again.
        again = await storage.claim_ready(owner="a", limit=10, now=t + 10, lease_seconds=60)
        taken = await storage.claim_ready(owner="b", limit=10, now=t + 10, lease_seconds=60)
        assert again == []
        assert {d.seq for d in taken} == seqs
        renewed = await storage.heartbeat(
            "b", host="host-b", pid=4242, now=t + 10, lease_seconds=60
        )
        assert renewed == seqs
        assert "b" in {o.owner for o in await storage.owners()}
        # While b holds them, nobody else gets them.
        assert await storage.claim_ready(owner="c", limit=10, now=t + 20, lease_seconds=60) == []
        seen = [o for o in await storage.owners() if o.owner == "b"]
        released = await storage.release_owners(seen)
        freed = await storage.claim_ready(owner="c", limit=10, now=t + 20, lease_seconds=60)
        owners = {o.owner for o in await storage.owners()}
    print(
        f"claims: a {len(first)}, a again {len(again)}, b {len(taken)}, renewed {len(renewed)}, "
        f"released {released}, c after release {len(freed)}; owners {sorted(owners)}"
    )
    assert released == 3
    assert {d.seq for d in freed} == seqs
    assert "b" not in owners


# --- 7. a silent replica on another host -----------------------------------------------------


async def test_a_silent_owner_on_another_host_is_taken_over_within_10s(
    build_app: AppFactory,
) -> None:
    """With the default heartbeat and takeover, a process that stops beating (frozen, or its
    host gone: no pid to look at) has its claims moved within 10 s of its last beat."""
    frozen: set[str] = set()
    runs: Counter[str] = Counter()
    hang = asyncio.Event()  # never set: the frozen process never finishes

    def setup(registry: HandlerRegistry) -> None:
        async def handler(event: Event) -> None:
            if registry in frozen_registries:
                frozen.add(event.event_id)
                await hang.wait()
            runs[event.event_id] += 1

        registry.on_any(handler, name="work")

    frozen_registries: list[HandlerRegistry] = []
    dispatch = {"enabled": True, "poll_interval_seconds": 0.1}
    a = build_app(setup=setup, dispatch=dispatch)
    frozen_registries.append(a.registry)
    a.dispatcher.liveness.host = "a-host-that-is-gone"  # its pid means nothing here
    b = build_app(setup=setup, dispatch=dispatch)
    await a.startup()
    try:
        async with client_for(a) as client:
            for n in range(4):
                response = await client.post(
                    "/callbacks/refonte", content=snapshot(f"far-{n}", n), headers=signed()
                )
                assert response.status_code == 200, response.text
        for _ in range(100):  # bounded: 10 s for A to claim all four
            if len(frozen) == 4:
                break
            await asyncio.sleep(0.1)
        assert len(frozen) == 4
        # A freezes: no more beats, no more claims, its handlers stuck.
        for task in (a.dispatcher._beat_task, a.dispatcher._loop_task):
            assert task is not None
            task.cancel()
        last_beat = a.dispatcher.liveness._last_ok
        assert last_beat is not None
        async with b.started():
            moved = done = None
            for _ in range(150):  # bounded: 15 s
                elapsed = time.monotonic() - last_beat
                held = await b.storage.owners()
                if moved is None and a.dispatcher.owner not in {o.owner for o in held}:
                    moved = elapsed
                if sum(runs.values()) == 4:
                    done = elapsed
                    break
                await asyncio.sleep(0.1)
    finally:
        a.dispatcher._stopping = True
        for task in list(a.dispatcher._inflight):
            task.cancel()
        await asyncio.gather(*a.dispatcher._inflight, return_exceptions=True)
        await a.storage.close()
    print(f"silent owner on another host: claims moved {moved} s, all done {done} s after "
          f"its last beat; runs per event {sorted(runs.values())}")  # fmt: skip
    assert moved is not None and moved <= RESUME_WITHIN + 0.5  # + the poll of this loop
    assert done is not None and done <= RESUME_WITHIN + 1.0
    assert sorted(runs.values()) == [1, 1, 1, 1]


async def test_an_owner_that_beats_again_before_its_takeover_keeps_its_claims(
    build_app: AppFactory,
) -> None:
    """The takeover is a compare-and-swap on the heartbeat it saw: a stalled owner that beats
    between being seen silent and being taken over keeps its row and its leases."""
    app = build_app()
    async with app.started(), client_for(app) as client:
        response = await client.post("/callbacks/refonte", content=snapshot("cas", 1),
                                     headers=signed())  # fmt: skip
        assert response.status_code == 200
        storage = app.storage
        t = time.time()
        [held] = await storage.claim_ready(owner="a", limit=10, now=t, lease_seconds=60)
        await storage.heartbeat("a", host="h", pid=1, now=t, lease_seconds=60)
        seen = [o for o in await storage.owners() if o.owner == "a"]  # seen silent ...
        await storage.heartbeat("a", host="h", pid=1, now=t + 1, lease_seconds=60)  # ... beats
        assert await storage.release_owners(seen) == 0
        assert "a" in {o.owner for o in await storage.owners()}
        assert await storage.heartbeat("a", host="h", pid=1, now=t + 2, lease_seconds=60) == {
            held.seq
        }
        # Seen as it is now, it is taken over.
        now_seen = [o for o in await storage.owners() if o.owner == "a"]
        assert await storage.release_owners(now_seen) == 1
