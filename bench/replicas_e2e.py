"""End to end over HTTP: two `taskhook serve` replicas on one PostgreSQL database vs. one.

    .venv/bin/python bench/replicas_e2e.py [--rounds 3] [--deliveries 5000] [--tasks 1250]
        [--replicas 2] [--clients 16] [--concurrency 64] [--batch-size 200]
        [--verify standard-webhooks] [--pg postgresql://postgres@127.0.0.1:5432] [--keep]

Each round runs the same pre-generated deliveries (bench/replay_speed.py's `record()`: distinct
Refonte snapshots over --tasks tasks) twice, once against one replica and once against
--replicas replicas (the order alternates between rounds), each time on a fresh, uniquely
named PostgreSQL database: the replicas are `taskhook serve --config FILE` processes (the CLI,
with PYTHONPATH set to this checkout) with the ledger as the only handler and the dispatcher
on, started one after the other and waited for on /readyz. --clients threads, each with its own
keep-alive connection to one replica (thread i to replica i mod N), POST the deliveries to
`/callbacks/sw` (delivery j goes to replica j mod N), signed Standard Webhooks at send time
(or unsigned with --verify none). Traffic goes only to 127.0.0.1; the count is bounded by
--deliveries and every run by --time-limit.

Timed: from the first POST until every delivery is acknowledged and the database shows none
`received` or `failed` and all of them `processed` (polled every --sample-interval). Figures:
deliveries/s end to end, the HTTP intake's rate, and the ratio N replicas / 1 (target >= 1.0).

Meanwhile, in both runs alike (same overhead), `pg_stat_activity` joined with `pg_locks` on pid
is sampled every --sample-interval (~50 ms). Sessions are attributed to a replica by their
`application_name` ('taskhook:<pid>'), or, for sessions without it, by their client port, looked
up in /proc among the replicas' own sockets. A sample counts as "both" when sessions of at
least two replicas are `active` at once with a statement mentioning `ledger_`; "both, not
waiting" also requires none of those sessions to be waiting on a lock: evidence that two
replicas apply (different tasks') ledger changes at the same time. The counts and an example
sample are printed.

After each run the replicas get SIGTERM (SIGKILL if they have not exited within 20 s), the
database is checked (all deliveries processed, `ledger_tasks` holds --tasks rows) and dropped.
A run that fails a check is INVALID and the script exits 1. Results:
bench/results/replicas-e2e-<ts>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import http.client
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(BENCH))

import common  # noqa: E402
from intake_bench import free_port  # noqa: E402
from pipeline_bench import DEFAULT_PG, LEDGER_SQL, STATUS_SQL, check_processed  # noqa: E402
from replay_speed import SECRET, record  # noqa: E402

from receiver.verify import sign_standard_webhooks  # noqa: E402

TARGET = 1.0
PATH = "/callbacks/sw"
TASKHOOK = Path(sys.executable).parent / "taskhook"
APP_NAME = re.compile(r"^taskhook:(\d+)$")
BLOCKED = ("Lock", "Client")  # wait_event_type of a session not executing its statement
SAMPLE_KEYS = (
    "total",
    "any_ledger_active",
    "both_ledger_active",
    "both_ledger_running",
    "ledger_while_other_waits_on_lock",
    "both_any_active",
)

SAMPLE_SQL = """
SELECT a.pid, a.application_name, a.client_port, a.state, a.wait_event_type, a.wait_event,
       left(regexp_replace(a.query, '\\s+', ' ', 'g'), 160) AS query,
       coalesce(array_agg(
           l.locktype || ' ' || l.mode
           || CASE WHEN l.locktype IN ('relation', 'tuple') THEN ' ' || c.relname
                   WHEN l.locktype = 'advisory' THEN ' ' || l.classid || ':' || l.objid
                   WHEN l.locktype = 'transactionid' THEN ' ' || l.transactionid
                   ELSE '' END
           || CASE WHEN l.granted THEN '' ELSE ' (waiting)' END
           ORDER BY l.locktype, l.mode, c.relname)
         FILTER (WHERE l.pid IS NOT NULL AND l.locktype <> 'virtualxid'
                 AND (l.locktype <> 'relation' OR c.relkind IN ('r', 'p'))), '{}') AS locks
FROM pg_stat_activity a
LEFT JOIN pg_locks l ON l.pid = a.pid
LEFT JOIN pg_class c ON c.oid = l.relation
WHERE a.datname = current_database() AND a.pid <> pg_backend_pid()
  AND a.backend_type = 'client backend'
GROUP BY a.pid, a.application_name, a.client_port, a.state, a.wait_event_type, a.wait_event,
         a.query
"""


# --- the deliveries ------------------------------------------------------------------------


def generate(path: Path, deliveries: int, tasks: int) -> list[tuple[bytes, str]]:
    """(body, msg id) per delivery, from replay_speed's recording (its old signatures are
    dropped: a live intake checks freshness, so each POST is signed when it is sent)."""
    record(path, deliveries, tasks)
    out = []
    with path.open() as lines:
        for line in lines:
            rec = json.loads(line)
            out.append((rec["body"].encode(), rec["headers"]["webhook-id"]))
    return out


def headers_for(body: bytes, msg_id: str, verify: str) -> dict[str, str]:
    headers = {"content-type": "application/json"}
    if verify == "standard-webhooks":
        headers |= sign_standard_webhooks(body, SECRET, msg_id=msg_id, timestamp=int(time.time()))
    return headers


# --- replicas ------------------------------------------------------------------------------


def dispatch_settings(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "enabled": True,
        "concurrency": args.concurrency,
        "batch_size": args.batch_size,
        "poll_interval_seconds": args.poll_interval,
        "handler_concurrency": args.handler_concurrency,
    }


def write_config(path: Path, url: str, args: argparse.Namespace) -> Path:
    source: dict[str, Any] = {"kind": "refonte", "verify": args.verify}
    if args.verify != "none":
        source["secrets"] = [SECRET]

    def table(values: dict[str, Any]) -> str:
        return "".join(f"{k} = {json.dumps(v)}\n" for k, v in values.items())

    path.write_text(
        'handlers = ["handlers.ledger"]\nentry_points = false\n\n'
        f"[database]\nurl = {json.dumps(url)}\n\n"
        f"[sources.sw]\n{table(source)}\n"
        f"[dispatch]\n{table(dispatch_settings(args))}\n"
        '[log]\nlevel = "warning"\n',
        encoding="utf-8",
    )
    return path


@dataclass
class Replica:
    port: int
    proc: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def start_replica(workdir: Path, config: Path, index: int) -> Replica:
    port = free_port()
    log_path = workdir / f"replica{index}-{port}.log"
    env = os.environ | {
        "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    }
    cmd = [
        str(TASKHOOK),
        "serve",
        "--config",
        str(config),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    with log_path.open("wb") as log:
        proc = subprocess.Popen(cmd, cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT)
    replica = Replica(port, proc, log_path)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"replica exited with {proc.returncode}:\n{replica.log_tail()}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
            conn.request("GET", "/readyz")
            status = conn.getresponse().status
            conn.close()
            if status == 200:
                return replica
        except OSError:
            pass
        time.sleep(0.05)
    stop_replica(replica)
    raise RuntimeError(f"replica not ready within 60 s:\n{replica.log_tail()}")


def stop_replica(replica: Replica) -> str:
    """SIGTERM, then SIGKILL after 20 s: how it ended."""
    if replica.proc.poll() is not None:
        return f"had exited ({replica.proc.returncode})"
    replica.proc.send_signal(signal.SIGTERM)
    try:
        replica.proc.wait(timeout=20)
        return "stopped"
    except subprocess.TimeoutExpired:
        replica.proc.kill()
        replica.proc.wait()
        return "KILLED (did not exit within 20 s of SIGTERM)"


# --- which replica a session belongs to ----------------------------------------------------


def port_owners(pids: list[int]) -> dict[int, int]:
    """Local TCP port -> pid, for the sockets the processes `pids` hold (Linux /proc)."""
    inode_pid: dict[str, int] = {}
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if link.startswith("socket:["):
                inode_pid[link[8:-1]] = pid
    owners: dict[int, int] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            if len(fields) > 9 and fields[9] in inode_pid:
                owners[int(fields[1].rsplit(":", 1)[1], 16)] = inode_pid[fields[9]]
    return owners


class Attribution:
    def __init__(self, replicas: list[Replica]) -> None:
        self.index = {r.pid: i for i, r in enumerate(replicas)}
        self.ports: dict[int, int] = {}
        self.by_name = 0
        self.by_port = 0
        self.unknown = 0

    def replica(self, app_name: str | None, client_port: int | None) -> int | None:
        m = APP_NAME.match(app_name or "")
        if m and int(m[1]) in self.index:
            self.by_name += 1
            return self.index[int(m[1])]
        if client_port is not None:
            if client_port not in self.ports:
                self.ports = port_owners(list(self.index))
            pid = self.ports.get(client_port)
            if pid is not None:
                self.by_port += 1
                return self.index[pid]
        self.unknown += 1
        return None


# --- one run -------------------------------------------------------------------------------


@dataclass
class Posting:
    ok: int = 0
    failures: collections.Counter[str] = field(default_factory=collections.Counter)
    first_post: float = 0.0
    last_answer: float = 0.0
    timed_out: bool = False


def post_all(
    replicas: list[Replica],
    deliveries: list[tuple[bytes, str]],
    args: argparse.Namespace,
    started: float,
) -> Posting:
    queues = [collections.deque(deliveries[i :: len(replicas)]) for i in range(len(replicas))]
    result = Posting(first_post=started)
    lock = threading.Lock()
    deadline = started + args.time_limit

    def worker(w: int) -> None:
        n = w % len(replicas)
        port, queue = replicas[n].port, queues[n]
        conn: http.client.HTTPConnection | None = None
        ok = 0
        failures: collections.Counter[str] = collections.Counter()
        while time.perf_counter() < deadline:
            try:
                body, msg_id = queue.popleft()
            except IndexError:
                break
            try:
                conn = conn or http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                conn.request(
                    "POST", PATH, body=body, headers=headers_for(body, msg_id, args.verify)
                )
                response = conn.getresponse()
                response.read()
                status = str(response.status)
                if response.will_close:
                    conn.close()
                    conn = None
            except (OSError, http.client.HTTPException) as exc:
                status = type(exc).__name__
                if conn is not None:
                    conn.close()
                conn = None
            if status == "200":
                ok += 1
            else:
                failures[status] += 1
        if conn is not None:
            conn.close()
        with lock:
            result.ok += ok
            result.failures.update(failures)
            result.last_answer = max(result.last_answer, time.perf_counter())
            if any(queues) and time.perf_counter() >= deadline:
                result.timed_out = True

    with ThreadPoolExecutor(args.clients, thread_name_prefix="post") as pool:
        list(pool.map(worker, range(args.clients)))
    return result


def session_view(s: asyncpg.Record, replica: int | None) -> dict[str, Any]:
    return {
        "replica": replica,
        "pid": s["pid"],
        "application_name": s["application_name"],
        "state": s["state"],
        "wait": f"{s['wait_event_type']}:{s['wait_event']}" if s["wait_event_type"] else None,
        "query": s["query"],
        "locks": list(s["locks"]),
    }


async def measure(
    url: str,
    replicas: list[Replica],
    deliveries: list[tuple[bytes, str]],
    args: argparse.Namespace,
) -> dict[str, Any]:
    monitor = await asyncpg.connect(url)
    attribution = Attribution(replicas)
    samples = dict.fromkeys(SAMPLE_KEYS, 0)
    examples: dict[str, Any] = {}
    statuses: dict[str, int] = {}
    loop = asyncio.get_running_loop()
    try:
        started = time.perf_counter()
        posting = loop.run_in_executor(None, post_all, replicas, deliveries, args, started)
        done_at: float | None = None
        while time.perf_counter() - started < args.time_limit + 5:
            t = time.perf_counter()
            rows = await monitor.fetch(SAMPLE_SQL)
            sessions = [
                session_view(s, attribution.replica(s["application_name"], s["client_port"]))
                for s in rows
            ]
            active = [s for s in sessions if s["state"] == "active" and s["replica"] is not None]
            ledger = [s for s in active if "ledger_" in (s["query"] or "").lower()]
            # Executing, not blocked on a lock nor waiting for the client's next message.
            running = [s for s in ledger if (s["wait"] or "").split(":")[0] not in BLOCKED]
            waiting = [s for s in active if (s["wait"] or "").startswith("Lock:")]
            samples["total"] += 1
            samples["any_ledger_active"] += bool(ledger)
            groups = {
                "both_any_active": active,
                "both_ledger_active": ledger,
                "both_ledger_running": running,
            }
            for key, group in groups.items():
                if len({s["replica"] for s in group}) >= 2:
                    samples[key] += 1
                    examples.setdefault(key, {"at_s": round(t - started, 3), "sessions": sessions})
            if any(w["replica"] != r["replica"] for r in running for w in waiting):
                samples["ledger_while_other_waits_on_lock"] += 1
                examples.setdefault(
                    "ledger_while_other_waits_on_lock",
                    {"at_s": round(t - started, 3), "sessions": sessions},
                )
            if running:
                examples.setdefault(
                    "one_ledger_running", {"at_s": round(t - started, 3), "sessions": sessions}
                )
            if posting.done():
                statuses = {str(r[0]): int(r[1]) for r in await monitor.fetch(STATUS_SQL)}
                pending = statuses.get("received", 0) + statuses.get("failed", 0)
                post = posting.result()
                if pending == 0 and statuses.get("processed", 0) >= post.ok:
                    done_at = time.perf_counter()
                    break
                if post.timed_out or post.ok + sum(post.failures.values()) == 0:
                    break
            await asyncio.sleep(max(0.0, args.sample_interval - (time.perf_counter() - t)))
        post = await posting
        ledger_tasks = int(await monitor.fetchval(LEDGER_SQL))
        statuses = {str(r[0]): int(r[1]) for r in await monitor.fetch(STATUS_SQL)}
    finally:
        await monitor.close()
    problems = []
    if post.failures:
        problems.append(
            f"{sum(post.failures.values())} POSTs not answered 200: {dict(post.failures)}"
        )
    if post.timed_out:
        problems.append(f"posting not finished within {args.time_limit:g} s")
    if done_at is None:
        problems.append(f"not all processed within {args.time_limit:g} s: {statuses}")
    problems += check_processed(statuses, ledger_tasks, len(deliveries), args.tasks)
    e2e_s = (done_at or time.perf_counter()) - started
    return {
        "ok": post.ok,
        "post_s": post.last_answer - started,
        "intake_rate": post.ok / (post.last_answer - started) if post.ok else 0.0,
        "e2e_s": e2e_s,
        "e2e_rate": len(deliveries) / e2e_s if done_at else None,
        "statuses": statuses,
        "ledger_tasks": ledger_tasks,
        "samples": samples,
        "attribution": {
            "by_application_name": attribution.by_name,
            "by_client_port": attribution.by_port,
            "unattributed": attribution.unknown,
        },
        "examples": examples,
        "problems": problems,
    }


def run(
    n: int, deliveries: list[tuple[bytes, str]], args: argparse.Namespace, workdir: Path, label: str
) -> dict[str, Any]:
    name = f"taskhook_e2e_{uuid.uuid4().hex[:10]}"
    url = f"{args.pg}/{name}"
    rundir = workdir / label
    rundir.mkdir()
    asyncio.run(common.pg_admin(args.pg, f'CREATE DATABASE "{name}"'))
    replicas: list[Replica] = []
    out: dict[str, Any] = {"replicas": n, "database": name}
    try:
        config = write_config(rundir / "taskhook.toml", url, args)
        for i in range(n):  # one after the other: the first one migrates the fresh database
            replicas.append(start_replica(rundir, config, i))
        out["pids"] = [r.pid for r in replicas]
        out |= asyncio.run(measure(url, replicas, deliveries, args))
    except Exception as exc:
        out.setdefault("problems", []).append(f"run failed: {exc!r}")
    finally:
        out["stopped"] = [stop_replica(r) for r in replicas]
        for r, how in zip(replicas, out["stopped"], strict=True):
            if how != "stopped":
                out.setdefault("problems", []).append(f"replica {r.pid} {how}")
            if r.proc.returncode not in (0, -signal.SIGTERM, None) and how == "stopped":
                out.setdefault("problems", []).append(
                    f"replica {r.pid} exited with {r.proc.returncode}: {r.log_tail(5)}"
                )
        common.drop_database(args.pg, name)
    return out


def describe(rnd: int, rounds: int, r: dict[str, Any]) -> str:
    label = f"round {rnd}/{rounds}  {r['replicas']} replica{'s' if r['replicas'] > 1 else ' '}"
    if r.get("e2e_rate") is None:
        return f"{label}  INVALID: {'; '.join(r.get('problems', []))}"
    s = r["samples"]
    line = (
        f"{label}  e2e {r['e2e_rate']:7,.0f}/s ({r['e2e_s']:5.1f} s)  "
        f"HTTP intake {r['intake_rate']:7,.0f}/s ({r['post_s']:5.1f} s)  "
        f"samples {s['total']}: ledger_ active {s['any_ledger_active']}, >=2 replicas "
        f"on ledger_ {s['both_ledger_active']} (running {s['both_ledger_running']}), "
        f"ledger_ while another replica waits on a lock "
        f"{s['ledger_while_other_waits_on_lock']}, >=2 replicas active at all "
        f"{s['both_any_active']}"
    )
    line += f"  INVALID: {'; '.join(r['problems'])}" if r["problems"] else "  ok"
    return line


EXAMPLES = (
    ("both_ledger_running", ">=2 replicas running ledger_ statements at the same time"),
    ("both_ledger_active", ">=2 replicas active on ledger_ statements (some waiting)"),
    ("ledger_while_other_waits_on_lock", "one replica on ledger_, another waiting on a lock"),
    ("one_ledger_running", "one replica running a ledger_ statement"),
)


def print_example(title: str, example: dict[str, Any], pids: list[int]) -> None:
    idle = [s for s in example["sessions"] if s["state"] == "idle"]
    print(f"  example: {title} (t = {example['at_s']:.2f} s; {len(idle)} idle sessions not shown):")
    for s in example["sessions"]:
        if s["state"] == "idle":
            continue
        who = "?" if s["replica"] is None else f"replica {s['replica']} (pid {pids[s['replica']]})"
        locks = ", ".join(s["locks"]) or "-"
        print(
            f"    {who:<24} backend {s['pid']:<7} {s['state'] or '-':<20} "
            f"wait {s['wait'] or '-':<22} {s['query']!r}"
        )
        print(f"    {'':<24} locks: {locks}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--deliveries", type=int, default=5_000)
    parser.add_argument("--tasks", type=int, default=1_250)
    parser.add_argument("--replicas", type=int, default=2, help="compared with one replica")
    parser.add_argument("--clients", type=int, default=16, help="POSTing threads in all")
    parser.add_argument("--concurrency", type=int, default=64, help="[dispatch] concurrency")
    parser.add_argument("--batch-size", type=int, default=200, help="[dispatch] batch_size")
    parser.add_argument("--handler-concurrency", type=int, default=8)
    parser.add_argument(
        "--poll-interval", type=float, default=0.1, help="[dispatch] poll_interval_seconds"
    )
    parser.add_argument(
        "--verify", choices=["standard-webhooks", "none"], default="standard-webhooks"
    )
    parser.add_argument("--sample-interval", type=float, default=0.05)
    parser.add_argument("--time-limit", type=float, default=120.0, help="per run, seconds")
    parser.add_argument("--pg", default=DEFAULT_PG, help="PostgreSQL server (no database)")
    parser.add_argument("--keep", action="store_true", help="keep configs and replica logs")
    args = parser.parse_args()
    if args.replicas < 2 or args.clients < args.replicas or args.tasks > args.deliveries:
        parser.error("need --replicas >= 2, --clients >= --replicas, --tasks <= --deliveries")
    started = datetime.now(UTC)
    workdir = Path(tempfile.mkdtemp(prefix="taskhook-replicas-e2e-"))
    deliveries = generate(workdir / "traffic.jsonl", args.deliveries, args.tasks)
    print(
        f"replicas e2e benchmark: {args.rounds} rounds, 1 vs {args.replicas} replicas "
        f"(`{TASKHOOK} serve`), {args.deliveries:,} deliveries over {args.tasks:,} tasks, "
        f"{args.clients} POSTing threads, verify {args.verify}, {os.cpu_count()} CPUs, "
        f"{started:%Y-%m-%d %H:%M} UTC"
    )
    print("dispatcher: " + ", ".join(f"{k}={v}" for k, v in dispatch_settings(args).items()))
    rounds: list[dict[str, Any]] = []
    try:
        for rnd in range(1, args.rounds + 1):
            order = [1, args.replicas] if rnd % 2 else [args.replicas, 1]
            out: dict[str, Any] = {"round": rnd, "order": order}
            for n in order:
                r = run(n, deliveries, args, workdir, f"round{rnd}-{n}")
                out["one" if n == 1 else "many"] = r
                print(describe(rnd, args.rounds, r), flush=True)
            one, many = out["one"].get("e2e_rate"), out["many"].get("e2e_rate")
            out["ratio"] = many / one if one and many else None
            if out["ratio"] is not None:
                print(
                    f"round {rnd}/{args.rounds}  {args.replicas} replicas / 1: {out['ratio']:.3f}",
                    flush=True,
                )
            rounds.append(out)
    finally:
        if args.keep:
            print(f"kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)

    def med(key: str, name: str) -> float | None:
        values = [r[key][name] for r in rounds if r[key].get(name) is not None]
        return statistics.median(values) if values else None

    medians = {k: {f: med(k, f) for f in ("e2e_rate", "intake_rate")} for k in ("one", "many")}
    one, many = medians["one"]["e2e_rate"], medians["many"]["e2e_rate"]
    ratio = many / one if one and many else None
    totals = {k: sum(r["many"].get("samples", {}).get(k, 0) for r in rounds) for k in SAMPLE_KEYS}
    print(f"\nmedians over {args.rounds} rounds")
    for key, label in (("one", "1 replica "), ("many", f"{args.replicas} replicas")):
        m = medians[key]
        print(
            f"  {label}  e2e {m['e2e_rate'] or 0:7,.0f}/s  HTTP intake "
            f"{m['intake_rate'] or 0:7,.0f}/s"
        )
    print(
        f"(c) {args.replicas} replicas / 1 replica, end to end: "
        + ("n/a" if ratio is None else f"{ratio:.3f}")
        + " of the medians (per round "
        + ", ".join("n/a" if r["ratio"] is None else f"{r['ratio']:.3f}" for r in rounds)
        + f"); target >= {TARGET}: "
        + ("met" if ratio is not None and ratio >= TARGET else "NOT met")
    )
    print(
        f"    {args.replicas}-replica runs, pg_stat_activity samples: {totals['total']} in all, "
        f"{totals['any_ledger_active']} with a ledger_ statement active, "
        f"{totals['both_ledger_active']} with sessions of >=2 replicas active on ledger_ "
        f"statements at once, {totals['both_ledger_running']} of them with those sessions "
        "running (not waiting on a lock or on the client); "
        f"{totals['ledger_while_other_waits_on_lock']} with one replica on ledger_ while "
        f"another waits on a lock; {totals['both_any_active']} with >=2 replicas active "
        "at all"
    )
    last = next((r["many"] for r in reversed(rounds) if r["many"].get("examples")), None)
    if last is not None:
        a = last["attribution"]
        print(
            f"    sessions attributed by application_name {a['by_application_name']}, "
            f"by client port {a['by_client_port']}, unattributed {a['unattributed']} "
            "(last run)"
        )
        for key, title in EXAMPLES:
            if key in last["examples"]:
                print_example(title, last["examples"][key], last["pids"])
                break
    valid = all(not r[k].get("problems") for r in rounds for k in ("one", "many"))
    if not valid:
        print("INVALID RUN: some runs failed verification (see INVALID above)")
    out_path = common.write_results("replicas-e2e", started, {
        "args": vars(args), "dispatch": dispatch_settings(args), "rounds": rounds,
        "medians": medians, "ratio": ratio, "samples_many": totals, "valid": valid,
    })  # fmt: skip
    print(f"results: {out_path.relative_to(ROOT)}")
    return 0 if valid else 1


if __name__ == "__main__":
    sys.exit(main())
