"""Intake throughput: two replicas on one PostgreSQL database vs. one on SQLite, same run.

    .venv/bin/python bench/replicas_bench.py [--rounds 3] [--duration 8] [--connections 64]
        [--pg postgresql://postgres@127.0.0.1:5432] [--dispatch]

Each round measures (a) one `taskhook` intake on SQLite loaded by one wrk (-c N) and (b) two
intake replicas sharing one fresh PostgreSQL database, each loaded by its own wrk (-c N/2)
at the same time: same total connections, same uvicorn settings (bench/serve.py), the same
distinct ~1.5 KB signed Refonte callbacks as bench/intake_bench.py. (b)'s throughput is the
sum of both replicas'; its p50/p99 the worse replica's. Every 200 is checked against the rows
stored (never fewer; no duplicate or quarantined rows). Printed: per round, then medians and
the ratio b/a of the medians. Results go to bench/results/replicas-<ts>.json.

On one 2-core machine everything shares the same two cores (wrk, both replicas, PostgreSQL),
so (b) measures what the storage path costs, not what a second machine would add.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import sys
import tempfile
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parent))
from intake_bench import (
    HEADERS,
    ID_PREFIX,
    RESULTS,
    SECRET,
    SOURCE,
    Load,
    count_stored,
    ensure_wrk,
    lua_script,
    start_server,
    stop_server,
)


def write_config(path: Path, url: str, *, dispatch: bool, sign: str) -> Path:
    path.write_text(
        f'[database]\nurl = "{url}"\n\n[sources.{SOURCE}]\nkind = "refonte"\n'
        f'verify = "{sign}"\nheader = "{HEADERS[sign]}"\nsecrets = ["{SECRET}"]\n\n'
        f"[dispatch]\nenabled = {'true' if dispatch else 'false'}\n\n"
        '[log]\nlevel = "warning"\n',
        encoding="utf-8",
    )
    return path


async def _admin(server: str, sql: str) -> None:
    conn = await asyncpg.connect(f"{server}/postgres")
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def _count_pg(url: str, tags: list[str]) -> tuple[int, int, int]:
    conn = await asyncpg.connect(url)
    try:
        row = await conn.fetchrow(
            "SELECT count(*), count(*) FILTER (WHERE duplicate_of IS NOT NULL), "
            "count(*) FILTER (WHERE status = 'quarantined') FROM deliveries "
            "WHERE task_id LIKE ANY($1::text[])",
            [f"{ID_PREFIX}{t}%" for t in tags],
        )
    finally:
        await conn.close()
    return int(row[0]), int(row[1]), int(row[2])


def check(ok: int, stored: tuple[int, int, int], in_flight: int) -> list[str]:
    rows, duplicates, quarantined = stored
    problems = []
    if rows < ok:
        problems.append(f"only {rows} rows stored for {ok} acknowledged deliveries")
    elif rows - ok > in_flight:
        problems.append(f"{rows - ok} more rows than 200s (more than {in_flight} in flight)")
    if duplicates or quarantined:
        problems.append(f"{duplicates} duplicate and {quarantined} quarantined rows")
    return problems


def summarize(results: list[dict[str, Any]]) -> dict[str, Any]:
    ok = sum(r["requests"] - r["non200"] for r in results)
    seconds = max(r["duration_us"] for r in results) / 1e6
    bad = sum(r["non200"] + r["connect_errors"] + r["read_errors"] + r["write_errors"]
              + r["timeouts"] for r in results)  # fmt: skip
    return {
        "rps": ok / seconds, "ok": ok, "errors": bad,
        "p50_ms": max(r["p50_us"] for r in results) / 1000,
        "p99_ms": max(r["p99_us"] for r in results) / 1000,
    }  # fmt: skip


def one_round(
    args: argparse.Namespace, load: Load, half: Load, workdir: Path, n: int
) -> dict[str, Any]:
    out: dict[str, Any] = {"round": n}
    # (a) one replica, SQLite
    rundir = workdir / f"round{n}-sqlite"
    rundir.mkdir()
    db = rundir / "bench.db"
    config = write_config(rundir / "bench.toml", f"sqlite:///{db}", dispatch=args.dispatch,
                          sign=args.sign)  # fmt: skip
    server = start_server("intake", rundir, config)
    try:
        load.run(server.url, args.warmup, load.new_tag())
        tag = load.new_tag()
        a = summarize([load.run(server.url, args.duration, tag)])
    finally:
        stop_server(server)
    a["problems"] = check(a["ok"], count_stored(db, tag), load.connections)
    out["a"] = a

    # (b) two replicas, one PostgreSQL database
    name = f"taskhook_bench_{uuid.uuid4().hex[:10]}"
    asyncio.run(_admin(args.pg, f'CREATE DATABASE "{name}"'))
    url = f"{args.pg}/{name}"
    rundir = workdir / f"round{n}-pg"
    rundir.mkdir()
    config = write_config(rundir / "bench.toml", url, dispatch=args.dispatch, sign=args.sign)
    servers = []
    try:
        servers = [start_server("intake", rundir, config) for _ in range(2)]
        with ThreadPoolExecutor(2) as pool:
            list(pool.map(lambda s: half.run(s.url, args.warmup, half.new_tag()), servers))
            tags = [half.new_tag() for _ in servers]
            results = list(pool.map(lambda st: half.run(st[0].url, args.duration, st[1]),
                                    zip(servers, tags, strict=True)))  # fmt: skip
    finally:
        for s in servers:
            stop_server(s)
    b = summarize(results)
    b["problems"] = check(b["ok"], asyncio.run(_count_pg(url, tags)), load.connections)
    asyncio.run(_admin(args.pg, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    out["b"] = b
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--timeout", default="2s")
    parser.add_argument("--sign", choices=sorted(HEADERS), default="header-token")
    parser.add_argument("--dispatch", action="store_true")
    parser.add_argument(
        "--pg", default=os.environ.get("TASKHOOK_BENCH_PG", "postgresql://postgres@127.0.0.1:5432")
    )
    args = parser.parse_args()

    wrk = ensure_wrk()
    workdir = Path(tempfile.mkdtemp(prefix="taskhook-replicas-"))
    script = workdir / "load.lua"
    script.write_text(lua_script(args.sign), encoding="utf-8")
    load = Load(wrk, script, args.connections, 2, args.timeout)
    half = Load(wrk, script, args.connections // 2, 1, args.timeout, load.used_tags)
    print(f"replicas benchmark: {args.rounds} rounds x {args.duration:g} s, "
          f"{args.connections} connections in all, dispatch {'on' if args.dispatch else 'off'}, "
          f"{os.cpu_count()} CPUs")  # fmt: skip
    rounds = []
    try:
        for n in range(1, args.rounds + 1):
            r = one_round(args, load, half, workdir, n)
            rounds.append(r)
            for key, label in (("a", "1 x SQLite    "), ("b", "2 x PostgreSQL")):
                m = r[key]
                print(f"round {n} {label} {m['rps']:8.0f} deliveries/s  p50 {m['p50_ms']:6.2f} "
                      f"ms  p99 {m['p99_ms']:6.2f} ms  {'; '.join(m['problems']) or 'ok'}",
                      flush=True)  # fmt: skip
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    med = {k: {f: statistics.median(r[k][f] for r in rounds) for f in ("rps", "p50_ms", "p99_ms")}
           for k in ("a", "b")}  # fmt: skip
    ratio = med["b"]["rps"] / med["a"]["rps"]
    print(f"median 1 x SQLite     {med['a']['rps']:8.0f}/s  p99 {med['a']['p99_ms']:.2f} ms")
    print(f"median 2 x PostgreSQL {med['b']['rps']:8.0f}/s  p99 {med['b']['p99_ms']:.2f} ms")
    print(
        f"ratio (2 x PostgreSQL) / (1 x SQLite) = {ratio:.2f}; per round "
        + ", ".join(f"{r['b']['rps'] / r['a']['rps']:.2f}" for r in rounds)
    )
    RESULTS.mkdir(exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    (RESULTS / f"replicas-{stamp}.json").write_text(
        json.dumps({"args": vars(args), "rounds": rounds, "medians": med, "ratio": ratio}, indent=2)
    )
    return 1 if any(r[k]["problems"] for r in rounds for k in ("a", "b")) else 0


if __name__ == "__main__":
    sys.exit(main())
