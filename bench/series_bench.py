"""What the dashboard's numbers cost at volume: the overview, the charts and a monitor step.

    .venv/bin/python bench/series_bench.py [--backends sqlite postgres] [--deliveries 1000000]
        [--replicas 3] [--days 8] [--reads 100]

For each backend it builds a database with the real schema, a full retention window of series
(`--days` of minutes for `--replicas` replicas, every name the monitor writes, two sources'
verification failures) and `--deliveries` deliveries (bulk SQL: 94% processed, 2% dead, 1%
quarantined, 3% waiting at the end of the table), runs ``ANALYZE`` as an operator might
(PostgreSQL: ``VACUUM ANALYZE``, the state autovacuum keeps), then prints p50/p99 of:

- ``overview(app)``: what every open dashboard asks for every few seconds;
- ``dashboard_charts(app, "hour")`` and ``(app, "day")``;
- ``monitor.sample()`` (counters, backlog, oldest, one upsert) and ``monitor.check()`` (dead
  deliveries since the last check, verification failures, the backlog's age);

and the plan each backend chose for the monitor's queries over the deliveries table.
The target: the overview well under 10 ms on either backend at 1M deliveries.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import create_database, drop_database, write_results
from receiver import series
from receiver.app import TaskhookApp, create_app
from receiver.charts import dashboard_charts
from receiver.config import settings_from_mapping
from receiver.monitor import DEAD_SINCE
from receiver.overview import OLDEST_WAITING, STUCK_COUNTS, overview
from receiver.plugin_store import Tx

SERVER = "postgresql://postgres@127.0.0.1:5432"
NAMES = (series.ACCEPTED, series.DUPLICATE, series.REJECTED, series.QUARANTINED,
         series.RUNS_OK, series.RUNS_FAILED, series.DEAD, series.BACKLOG_DEPTH,
         series.BACKLOG_OLDEST, series.VERIFICATION + "refonte",
         series.VERIFICATION + "labelbox")  # fmt: skip

_STATUS = (
    "CASE WHEN i > {n} - {n} * 3 / 100 THEN 'received' WHEN i % 50 = 0 THEN 'dead' "
    "WHEN i % 100 = 1 THEN 'quarantined' ELSE 'processed' END"
)
_COLUMNS = "id, source, kind, received_at, headers, body, dedup_key, status, updated_at, last_error"
_FILL = {
    "sqlite": "WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < {n}) "
    f"INSERT INTO deliveries ({_COLUMNS}) SELECT 'dlv_' || i, 'refonte', 'refonte', "
    "{t0} + i * {dt}, '{{}}', x'00', 'k' || i, " + _STATUS + ", {t0} + i * {dt}, 'boom' FROM c",
    "postgresql": f"INSERT INTO deliveries ({_COLUMNS}) SELECT 'dlv_' || i, 'refonte', "
    "'refonte', {t0} + i * {dt}, '{{}}', '\\x00'::bytea, 'k' || i, " + _STATUS + ", "
    "{t0} + i * {dt}, 'boom' FROM generate_series({first}, {last}) AS i",
}


def settings(url: str) -> Any:
    return settings_from_mapping({
        "database": {"url": url},
        "sources": {"refonte": {"kind": "refonte", "verify": "none"}},
        "entry_points": False,
        "dispatch": {"enabled": False},
        "retention": {"enabled": False},
    }, environ={})  # fmt: skip


async def fill(app: TaskhookApp, url: str, deliveries: int, replicas: int, days: int) -> None:
    now = time.time()
    last = series.minute_of(now)
    started = time.perf_counter()
    for replica in range(replicas):
        for day in range(days):
            minutes = []
            for minute in range(last - (day + 1) * 1440 + 1, last - day * 1440 + 1):
                rows = series.MinuteRows(minute)
                for n, name in enumerate(NAMES):
                    rows.add(name, 1 + (minute + n) % 17)
                rows.observe(series.ACK, {"0.005": 40, "0.01": 9, "0.05": 1, "+Inf": 0})
                minutes.append(rows)
            await series.write(app.storage, f"replica-{replica}", minutes)
    print(f"  series: {replicas * days * 1440} replica-minutes in "
          f"{time.perf_counter() - started:.1f} s")  # fmt: skip
    started = time.perf_counter()
    # Deliveries one per ~0.1 s up to now (the recent dead ones are what a check finds).
    dt, dialect = 0.1, app.storage.dialect
    shape = {"n": deliveries, "t0": now - deliveries * dt, "dt": dt}
    if dialect == "sqlite":

        async def insert(tx: Tx) -> None:
            await tx.execute(sa.text(_FILL[dialect].format(**shape)))
            await tx.execute(sa.text("ANALYZE"))

        await app.storage.transaction(insert)
    else:  # in chunks, on a connection of its own: past the storage's statement timeout
        conn = await asyncpg.connect(url)
        try:
            for first in range(1, deliveries + 1, 100_000):
                last = min(deliveries, first + 99_999)
                await conn.execute(_FILL[dialect].format(first=first, last=last, **shape))
            # What autovacuum leaves: without a visibility map every "index-only" count
            # visits the heap (the dead count over 1M rows: ~380 ms instead of ~8 ms).
            await conn.execute("VACUUM ANALYZE")
        finally:
            await conn.close()
    print(f"  deliveries: {deliveries} in {time.perf_counter() - started:.1f} s")


async def timed(what: Callable[[], Awaitable[object]], reads: int) -> dict[str, float]:
    await what()  # warm: statements compiled, pages cached
    spent = []
    for _ in range(reads):
        started = time.perf_counter()
        await what()
        spent.append((time.perf_counter() - started) * 1000)
    spent.sort()
    return {"p50_ms": round(statistics.median(spent), 3),
            "p99_ms": round(spent[min(len(spent) - 1, int(len(spent) * 0.99))], 3)}  # fmt: skip


async def plans(app: TaskhookApp) -> dict[str, list[str]]:
    storage, out = app.storage, {}
    params = {"after_at": time.time() - 300, "after_seq": 0, "limit": 200}
    prefix = "EXPLAIN QUERY PLAN " if storage.dialect == "sqlite" else "EXPLAIN "
    for name, statements, given in (("oldest", OLDEST_WAITING, {}), ("stuck", STUCK_COUNTS, {}),
                                    ("dead", DEAD_SINCE, params)):  # fmt: skip
        rows = await storage.query(sa.text(prefix + statements[storage.dialect].text), given)
        out[name] = [str(row[-1] if storage.dialect == "sqlite" else row[0]) for row in rows]
    return out


async def run(url: str, args: argparse.Namespace) -> dict[str, Any]:
    app = create_app(settings(url))
    await app.open()
    try:
        await fill(app, url, args.deliveries, args.replicas, args.days)
        day_reads = max(10, args.reads // 5)
        result: dict[str, Any] = {
            "overview": await timed(lambda: overview(app), args.reads),
            "charts_hour": await timed(lambda: dashboard_charts(app, "hour"), args.reads),
            "charts_day": await timed(lambda: dashboard_charts(app, "day"), day_reads),
            "monitor_sample": await timed(app.monitor.sample, args.reads),
            "monitor_check": await timed(app.monitor.check, args.reads),
            "plans": await plans(app),
        }  # fmt: skip
        seen = await overview(app)
        result["overview_seen"] = {"dead": seen.dead, "quarantined": seen.quarantined,
                                   "backlog": seen.backlog,
                                   "last_day_accepted": seen.last_day.accepted}  # fmt: skip
        return result
    finally:
        await app.storage.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", nargs="+", default=["sqlite", "postgres"])
    parser.add_argument("--deliveries", type=int, default=1_000_000)
    parser.add_argument("--replicas", type=int, default=3)
    parser.add_argument("--days", type=int, default=8)
    parser.add_argument("--reads", type=int, default=100)
    args = parser.parse_args()
    started = datetime.now(UTC)
    results: dict[str, Any] = {}
    for backend in args.backends:
        print(f"{backend}:")
        if backend == "sqlite":
            with tempfile.TemporaryDirectory() as tmp:
                results[backend] = asyncio.run(run(f"sqlite:///{tmp}/bench.db", args))
        else:
            name = create_database(SERVER, "taskhook_series_bench")
            try:
                results[backend] = asyncio.run(run(f"{SERVER}/{name}", args))
            finally:
                drop_database(SERVER, name)
        for key, value in results[backend].items():
            if key != "plans":
                print(f"  {key}: {value}")
        for key, steps in results[backend]["plans"].items():
            print(f"  plan {key}: " + " | ".join(s.strip() for s in steps))
    out = write_results("series_bench", started, {"args": vars(args), "results": results})
    print(f"results: {out}")


if __name__ == "__main__":
    main()
