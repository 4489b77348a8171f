"""The pipeline behind the intake (issue 12): intake vs. end to end, SQLite vs. PostgreSQL, rebuild.

    .venv/bin/python bench/pipeline_bench.py [--rounds 3] [--deliveries 20000] [--tasks 5000]
        [--concurrency 256] [--batch-size 512] [--pg postgresql://postgres@127.0.0.1:5432]
        [--no-pg] [--time-limit 600]

One recording (bench/replay_speed.py's `record()`: N distinct Standard-Webhooks-signed Refonte
snapshots spread over --tasks tasks, signed months ago) is replayed in-process through the real
pipeline with the built-in ledger, every round, on each backend:

(a) SQLite, fresh file. Replay with the dispatcher off (`replay_local(..., drain=False)`): the
    intake rate (verified, deduplicated, durably stored). Then `app.dispatcher.drain(...)`
    until nothing is left: the end-to-end rate, timed from the replay's start. Ratio e2e/intake
    (target >= 0.6).
(b) PostgreSQL, a uniquely named fresh database per round (created and dropped through
    asyncpg on the `postgres` database): the same two figures. Ratio PG e2e / SQLite e2e
    (target >= 0.5).
(d) After each e2e run, a new app on the same database runs `receiver.rebuild.rebuild(app)`:
    deliveries re-applied per second, and its ratio to that backend's e2e rate.

After each run the database is checked directly (sqlite3 / asyncpg): every delivery stored and
`processed` (nothing received / failed / dead / quarantined / duplicate), and `ledger_tasks`
holds exactly --tasks rows (after the rebuild too). A run that fails a check is INVALID and
the script exits 1. Only public entry points are used (`create_app`, `settings_from_mapping`,
`app.open()/shutdown()`, `replay_local/read_recordings`, `dispatcher.drain`, `rebuild`), so it
runs unchanged whatever the storage layer looks like. Every round is printed; medians and the
ratios (of the medians, and per round) follow. Results: bench/results/pipeline-<ts>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))
sys.path.insert(0, str(BENCH))

import common  # noqa: E402
from replay_speed import SECRET, record  # noqa: E402

from receiver.app import create_app  # noqa: E402
from receiver.config import settings_from_mapping  # noqa: E402
from receiver.logs import configure_logging  # noqa: E402
from receiver.rebuild import rebuild  # noqa: E402
from receiver.replay import read_recordings, replay_local  # noqa: E402

TARGET_E2E_OVER_INTAKE = 0.6
TARGET_PG_OVER_SQLITE = 0.5
DEFAULT_PG = os.environ.get("TASKHOOK_BENCH_PG", "postgresql://postgres@127.0.0.1:5432")
STATUS_SQL = "SELECT status, count(*) FROM deliveries GROUP BY status"
LEDGER_SQL = "SELECT count(*) FROM ledger_tasks"


def dispatch_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The dispatcher's settings for every run, explicit (printed and saved with the results).

    `enabled = false`: no background polling, so the replay measures the intake alone and the
    explicit `drain` that follows does all the dispatching."""
    return {
        "enabled": False,
        "concurrency": args.concurrency,
        "batch_size": args.batch_size,
        "handler_concurrency": args.handler_concurrency,
        "max_attempts": 8,
    }


def make_settings(url: str, dispatch: dict[str, Any]) -> Any:
    return settings_from_mapping(
        {
            "database": {"url": url},
            "sources": {
                "sw": {"kind": "refonte", "verify": "standard-webhooks", "secrets": [SECRET]}
            },
            "handlers": ["handlers.ledger"],
            "entry_points": False,
            "dispatch": dispatch,
            "log": {"level": "warning"},
        },
        environ={},
    )


# --- checking the database directly --------------------------------------------------------


def sqlite_counts(db: Path) -> tuple[dict[str, int], int]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        statuses = {str(s): int(n) for s, n in conn.execute(STATUS_SQL)}
        ledger = int(conn.execute(LEDGER_SQL).fetchone()[0])
    finally:
        conn.close()
    return statuses, ledger


async def pg_counts(url: str) -> tuple[dict[str, int], int]:
    conn = await asyncpg.connect(url)
    try:
        statuses = {str(r[0]): int(r[1]) for r in await conn.fetch(STATUS_SQL)}
        ledger = int(await conn.fetchval(LEDGER_SQL))
    finally:
        await conn.close()
    return statuses, ledger


def pg_counts_sync(url: str) -> tuple[dict[str, int], int]:
    return asyncio.run(pg_counts(url))


def check_processed(
    statuses: dict[str, int], ledger: int, deliveries: int, tasks: int
) -> list[str]:
    problems = []
    processed = statuses.get("processed", 0)
    others = {s: n for s, n in statuses.items() if s != "processed" and n}
    if processed != deliveries:
        problems.append(f"{processed} of {deliveries} deliveries processed")
    if others:
        problems.append(f"deliveries not processed: {others}")
    if ledger != tasks:
        problems.append(f"ledger_tasks holds {ledger} rows, expected {tasks}")
    return problems


# --- PostgreSQL databases ------------------------------------------------------------------


def create_database(server: str) -> str:
    return common.create_database(server, "taskhook_pipe")


drop_database = common.drop_database


# --- one backend, one round ----------------------------------------------------------------


async def replay_and_drain(
    url: str, recording: Path, dispatch: dict[str, Any], time_limit: float
) -> dict[str, Any]:
    app = create_app(make_settings(url, dispatch))
    await app.open()
    try:
        started = time.perf_counter()
        summary = await replay_local(
            app, read_recordings([str(recording)], source=None), drain=False
        )
        stored = time.perf_counter()
        await app.dispatcher.drain(within=time_limit, wait_for_retries=False)
        done = time.perf_counter()
    finally:
        await app.shutdown()
    return {
        "accepted": summary.accepted,
        "duplicate": summary.duplicate,
        "rejected": dict(summary.rejected),
        "intake_s": stored - started,
        "e2e_s": done - started,
    }


async def time_rebuild(url: str, dispatch: dict[str, Any]) -> dict[str, Any]:
    app = create_app(make_settings(url, dispatch))
    await app.open()
    try:
        started = time.perf_counter()
        summary = await rebuild(app)
        elapsed = time.perf_counter() - started
    finally:
        await app.shutdown()
    return {"rebuilt": summary.deliveries, "events": summary.events, "rebuild_s": elapsed}


def run_backend(
    backend: str,
    url: str,
    count: Callable[[], tuple[dict[str, int], int]],
    recording: Path,
    args: argparse.Namespace,
    dispatch: dict[str, Any],
) -> dict[str, Any]:
    r: dict[str, Any] = {"backend": backend, "problems": []}
    try:
        r |= asyncio.run(replay_and_drain(url, recording, dispatch, args.time_limit))
    except Exception as exc:  # a timeout or a crash: the round is invalid, the bench goes on
        r["problems"].append(f"replay/drain failed: {exc!r}")
        return r
    if r["rejected"] or r["accepted"] != args.deliveries or r["duplicate"]:
        r["problems"].append(
            f"replay: {r['accepted']} accepted, {r['duplicate']} duplicate, "
            f"rejected {r['rejected']}"
        )
    r["statuses"], r["ledger_tasks"] = count()
    r["problems"] += check_processed(r["statuses"], r["ledger_tasks"], args.deliveries, args.tasks)
    r["intake_rate"] = args.deliveries / r["intake_s"]
    r["e2e_rate"] = args.deliveries / r["e2e_s"]
    r["e2e_over_intake"] = r["e2e_rate"] / r["intake_rate"]
    if args.no_rebuild:
        return r
    try:
        r |= asyncio.run(time_rebuild(url, dispatch))
    except Exception as exc:
        r["problems"].append(f"rebuild failed: {exc!r}")
        return r
    r["rebuild_rate"] = r["rebuilt"] / r["rebuild_s"]
    r["rebuild_over_e2e"] = r["rebuild_rate"] / r["e2e_rate"]
    statuses, r["ledger_tasks_after_rebuild"] = count()
    if r["rebuilt"] != args.deliveries:
        r["problems"].append(f"rebuild re-applied {r['rebuilt']} of {args.deliveries} deliveries")
    if r["ledger_tasks_after_rebuild"] != args.tasks:
        r["problems"].append(
            f"after rebuild ledger_tasks holds "
            f"{r['ledger_tasks_after_rebuild']} rows, expected {args.tasks}"
        )
    if statuses != r["statuses"]:
        r["problems"].append(f"rebuild changed delivery statuses: {statuses}")
    return r


def describe(n: int, rounds: int, r: dict[str, Any]) -> str:
    label = f"round {n}/{rounds}  {r['backend']:<10}"
    if "e2e_rate" not in r:
        return f"{label}  INVALID: {'; '.join(r['problems'])}"
    line = (
        f"{label}  intake {r['intake_rate']:8,.0f}/s ({r['intake_s']:5.1f} s)  "
        f"e2e {r['e2e_rate']:7,.0f}/s ({r['e2e_s']:5.1f} s)  "
        f"e2e/intake {r['e2e_over_intake']:.3f}"
    )
    if "rebuild_rate" in r:
        line += (
            f"  rebuild {r['rebuild_rate']:7,.0f}/s ({r['rebuild_s']:5.1f} s, "
            f"{r['rebuilt']:,} re-applied) rebuild/e2e {r['rebuild_over_e2e']:.3f}"
        )
    line += f"  ledger_tasks {r['ledger_tasks']:,}"
    line += f"  INVALID: {'; '.join(r['problems'])}" if r["problems"] else "  ok"
    return line


def median_of(rounds: list[dict[str, Any]], backend: str, key: str) -> float | None:
    values = [r[backend][key] for r in rounds if key in r.get(backend, {})]
    return statistics.median(values) if values else None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--deliveries", type=int, default=20_000)
    parser.add_argument("--tasks", type=int, default=5_000)
    parser.add_argument("--concurrency", type=int, default=256, help="[dispatch] concurrency")
    parser.add_argument("--batch-size", type=int, default=512, help="[dispatch] batch_size")
    parser.add_argument(
        "--handler-concurrency", type=int, default=8, help="[dispatch] handler_concurrency"
    )
    parser.add_argument("--pg", default=DEFAULT_PG, help="PostgreSQL server (no database)")
    parser.add_argument("--no-pg", action="store_true", help="SQLite only: no (b)")
    parser.add_argument("--no-rebuild", action="store_true", help="skip (d)")
    parser.add_argument("--time-limit", type=float, default=600.0, help="per drain, seconds")
    args = parser.parse_args()
    if args.tasks > args.deliveries:
        parser.error("--tasks must not exceed --deliveries")
    configure_logging(format="console", level="warning")
    dispatch = dispatch_settings(args)
    started = datetime.now(UTC)
    resolved = make_settings("sqlite:///settings-probe.db", dispatch).dispatch.model_dump()
    print(
        f"pipeline benchmark: {args.rounds} rounds, {args.deliveries:,} deliveries over "
        f"{args.tasks:,} tasks, backends sqlite{'' if args.no_pg else ' + postgresql'}, "
        f"{os.cpu_count()} CPUs, {started:%Y-%m-%d %H:%M} UTC"
    )
    print("dispatcher: " + ", ".join(f"{k}={v}" for k, v in resolved.items()))

    rounds: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="taskhook-pipeline-") as tmp:
        recording = Path(tmp) / "traffic.jsonl"
        record(recording, args.deliveries, args.tasks)
        for n in range(1, args.rounds + 1):
            db = Path(tmp) / f"round{n}.db"
            sq = run_backend(
                "sqlite",
                f"sqlite:///{db}",
                functools.partial(sqlite_counts, db),
                recording,
                args,
                dispatch,
            )
            print(describe(n, args.rounds, sq), flush=True)
            out: dict[str, Any] = {"round": n, "sqlite": sq}
            if not args.no_pg:
                name = create_database(args.pg)
                url = f"{args.pg}/{name}"
                try:
                    pg = run_backend(
                        "postgresql",
                        url,
                        functools.partial(pg_counts_sync, url),
                        recording,
                        args,
                        dispatch,
                    )
                finally:
                    drop_database(args.pg, name)
                print(describe(n, args.rounds, pg), flush=True)
                out["postgresql"] = pg
                if "e2e_rate" in pg and "e2e_rate" in sq:
                    out["pg_over_sqlite_e2e"] = pg["e2e_rate"] / sq["e2e_rate"]
                    print(
                        f"round {n}/{args.rounds}  PG e2e / SQLite e2e "
                        f"{out['pg_over_sqlite_e2e']:.3f}",
                        flush=True,
                    )
            rounds.append(out)

    backends = ["sqlite"] + ([] if args.no_pg else ["postgresql"])
    keys = ("intake_rate", "e2e_rate", "e2e_over_intake", "rebuild_rate", "rebuild_over_e2e")
    medians = {b: {k: median_of(rounds, b, k) for k in keys} for b in backends}
    print(f"\nmedians over {args.rounds} rounds (deliveries/s)")
    print(
        f"  {'backend':<10} {'intake':>9} {'e2e':>8} {'e2e/intake':>11} {'rebuild':>8} "
        f"{'rebuild/e2e':>12}"
    )

    def fmt(v: float | None, spec: str) -> str:
        return "n/a" if v is None else format(v, spec)

    for b in backends:
        m = medians[b]
        print(
            f"  {b:<10} {fmt(m['intake_rate'], ',.0f'):>9} {fmt(m['e2e_rate'], ',.0f'):>8} "
            f"{fmt(m['e2e_over_intake'], '.3f'):>11} {fmt(m['rebuild_rate'], ',.0f'):>8} "
            f"{fmt(m['rebuild_over_e2e'], '.3f'):>12}"
        )
    targets: dict[str, Any] = {}
    sq_ratio = medians["sqlite"]["e2e_over_intake"]
    per_round = [r["sqlite"].get("e2e_over_intake") for r in rounds]
    targets["sqlite_e2e_over_intake"] = {
        "target": TARGET_E2E_OVER_INTAKE,
        "median": sq_ratio,
        "per_round": per_round,
        "met": sq_ratio is not None and sq_ratio >= TARGET_E2E_OVER_INTAKE,
    }
    print(
        f"(a) SQLite e2e / intake: median {fmt(sq_ratio, '.3f')} (per round "
        + ", ".join(fmt(v, ".3f") for v in per_round)
        + f"); target >= {TARGET_E2E_OVER_INTAKE}: "
        + ("met" if targets["sqlite_e2e_over_intake"]["met"] else "NOT met")
    )
    if not args.no_pg:
        pg_e2e, sq_e2e = medians["postgresql"]["e2e_rate"], medians["sqlite"]["e2e_rate"]
        ratio = pg_e2e / sq_e2e if pg_e2e and sq_e2e else None
        per_round = [r.get("pg_over_sqlite_e2e") for r in rounds]
        targets["pg_over_sqlite_e2e"] = {
            "target": TARGET_PG_OVER_SQLITE,
            "of_medians": ratio,
            "per_round": per_round,
            "met": ratio is not None and ratio >= TARGET_PG_OVER_SQLITE,
        }
        print(
            f"(b) PG e2e / SQLite e2e: {fmt(ratio, '.3f')} of the medians (per round "
            + ", ".join(fmt(v, ".3f") for v in per_round)
            + f"); target >= {TARGET_PG_OVER_SQLITE}: "
            + ("met" if targets["pg_over_sqlite_e2e"]["met"] else "NOT met")
        )
        pg_ratio = medians["postgresql"]["e2e_over_intake"]
        print(f"    PG e2e / PG intake: median {fmt(pg_ratio, '.3f')}")
    if not args.no_rebuild:
        for b in backends:
            print(f"(d) {b} rebuild / e2e: median {fmt(medians[b]['rebuild_over_e2e'], '.3f')}")

    valid = all(not r[b]["problems"] for r in rounds for b in backends)
    if not valid:
        print("INVALID RUN: some runs failed verification (see INVALID above)")
    out_path = common.write_results("pipeline", started, {
        "args": vars(args), "dispatch": resolved, "rounds": rounds, "medians": medians,
        "targets": targets, "valid": valid,
    })  # fmt: skip
    print(f"results: {out_path.relative_to(BENCH.parent)}")
    return 0 if valid else 1


if __name__ == "__main__":
    sys.exit(main())
