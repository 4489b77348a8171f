"""Ledger read latency at 10k and at 1M tasks: ``GET /v1/task/{id}`` and a filtered page.

    .venv/bin/python bench/ledger_scale.py [--sizes 10000 1000000] [--requests 2000]

For each size it builds a fresh SQLite ledger with the real schema (rows inserted in bulk, as
the ledger would store them: 4 projects, 20 batches, 4 statuses, tags, one unique_id each),
then drives the real app in-process (httpx over ASGI, no network, so the figures are the
app's and the database's) and prints p50/p99 of:

- ``GET /v1/task/{id}`` for random ids, with their history;
- ``GET /v1/tasks?project=..&status=completed&limit=100`` first pages, and deep pages reached
  with ``next_token``;
- ``recount``: the same first page right after a real ledger write (a new completed task of
  the listed project, applied by the dispatcher): the exact ``total`` then (target <= 10 ms
  at 1M; it comes from the ledger's per-filter count rows, not from counting the tasks).

The target: each latency at 1M within 2x of the same at 10k.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from handlers.ledger.store import iso
from receiver.app import create_app
from receiver.config import settings_from_mapping
from receiver.logs import configure_logging

KEY = "bench-key"
SAMPLE = Path(__file__).resolve().parents[1] / "samples" / "refonte" / "01-completed.json"
STATUSES = ("completed", "completed", "pending", "error")
BASE = datetime(2024, 1, 1, tzinfo=UTC)


def settings_for(path: Path) -> Any:
    return settings_from_mapping(
        {
            "database": {"url": f"sqlite:///{path}"},
            "sources": {"refonte": {"kind": "refonte", "verify": "none"}},
            "handlers": ["handlers.ledger"],
            "entry_points": False,
            "dispatch": {"enabled": False},
            "api": {"keys": {"b": {"key": KEY, "scopes": ["tasks.read"]}}},
        },
        environ={},
    )


async def create(path: Path) -> None:
    """The schema as the app makes it (every component's migrations)."""
    app = create_app(settings_for(path))
    await app.open()
    await app.storage.close()


def fill(path: Path, n: int, seed: int = 7) -> None:
    rng = random.Random(seed)
    asyncio.run(create(path))
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA synchronous=OFF")  # bulk load only; the app runs with FULL
    version = json.dumps({"updated_at": None, "audit_count": 0, "newest_audit": None,
                          "completed_at": None, "status": "completed"})  # fmt: skip
    conn.execute("BEGIN")
    tasks: list[tuple[Any, ...]] = []
    tags: list[tuple[str, str, str]] = []
    history: list[tuple[Any, ...]] = []
    for i in range(n):
        task_id = f"{i:024x}"
        created = iso(BASE + timedelta(seconds=i * 30 + rng.randint(0, 29)))
        status = rng.choice(STATUSES)
        project = f"project-{i % 4}"
        task = {"task_id": task_id, "type": "imageannotation", "project": project,
                "batch": f"batch-{i % 20}", "created_at": created, "status": status,
                "unique_id": f"u-{i}", "metadata": {"i": i}, "tags": [f"tag-{i % 10}"],
                "params": {"attachment": f"https://example.com/{i}.jpg"}}  # fmt: skip
        tasks.append(
            (
                task_id,
                "refonte",
                status,
                "imageannotation",
                project,
                f"batch-{i % 20}",
                f"u-{i}",
                None,
                None,
                created,
                created,
                json.dumps(task),
                json.dumps({"annotations": []}),
                version,
                "[]",
                f"dlv_{i}",
                0.0,
            )
        )
        tags.append((f"tag-{i % 10}", created, task_id))
        history.append((task_id, f"dlv_{i}", "applied", None, None, '{"status": "x"}', 0.0))
        if len(tasks) == 50_000 or i == n - 1:
            conn.executemany(f"INSERT INTO ledger_tasks VALUES ({','.join('?' * 17)})", tasks)
            conn.executemany("INSERT INTO ledger_task_tags VALUES (?,?,?)", tags)
            conn.executemany(
                "INSERT INTO ledger_history (task_id, delivery_id, kind, name, event_id, detail,"
                " at) VALUES (?,?,?,?,?,?,?)",
                history,
            )
            tasks, tags, history = [], [], []
    # The per-filter counts, as the ledger's migration seeds them from existing tasks.
    conn.execute(
        "INSERT INTO ledger_counts (status, project, batch, type, customer_review_status, n) "
        "SELECT status, project, batch, type, customer_review_status, count(*) "
        "FROM ledger_tasks GROUP BY 1, 2, 3, 4, 5"
    )
    conn.execute("COMMIT")
    conn.execute("ANALYZE")
    conn.close()


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


async def measure(path: Path, n: int, requests: int) -> dict[str, dict[str, float]]:
    app = create_app(settings_for(path))
    rng = random.Random(11)
    headers = {"authorization": f"Bearer {KEY}"}
    results: dict[str, list[float]] = {"task": [], "page1": [], "deep": [], "recount": []}
    async with (
        app.started(),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://b") as client,
    ):
        for _ in range(50):  # warm caches
            await client.get(f"/v1/task/{rng.randrange(n):024x}", headers=headers)
        for _ in range(requests):
            started = time.perf_counter()
            r = await client.get(f"/v1/task/{rng.randrange(n):024x}", headers=headers)
            results["task"].append(time.perf_counter() - started)
            assert r.status_code == 200
        query = "/v1/tasks?project=project-1&status=completed&limit=100"
        token = None
        for i in range(requests // 4):
            started = time.perf_counter()
            r = await client.get(query, headers=headers)
            results["page1"].append(time.perf_counter() - started)
            assert r.status_code == 200 and len(r.json()["docs"]) > 0
            if i % 10 == 0:
                token = r.json()["next_token"]
            started = time.perf_counter()
            r = await client.get(f"{query}&next_token={token}", headers=headers)
            results["deep"].append(time.perf_counter() - started)
            token = r.json()["next_token"] or token
        # Right after a real ledger write (a new completed task of the listed filter, applied
        # by the dispatcher), the listing's exact total.
        template = json.loads(SAMPLE.read_text())
        for i in range(20):
            template["task_id"] = template["task"]["task_id"] = f"new-{i:020x}"
            template["task"]["project"] = "project-1"
            body = json.dumps(template).encode()
            status, _ = await app.intake.accept(
                app.sources["refonte"], body, {"content-type": "application/json"}
            )
            assert status == 200
            await app.dispatcher.drain(within=60, wait_for_retries=False)
            started = time.perf_counter()
            r = await client.get(query, headers=headers)
            results["recount"].append(time.perf_counter() - started)
    return {
        k: {"p50_ms": pct(v, 0.5), "p99_ms": pct(v, 0.99), "mean_ms": statistics.mean(v) * 1000}
        for k, v in results.items()
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 1_000_000])
    parser.add_argument("--requests", type=int, default=2000)
    args = parser.parse_args()
    configure_logging(format="console", level="warning")
    report: dict[int, dict[str, dict[str, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.sizes:
            path = Path(tmp) / f"ledger-{n}.db"
            started = time.perf_counter()
            fill(path, n)
            print(f"filled {n:,} tasks in {time.perf_counter() - started:.1f} s", flush=True)
            report[n] = asyncio.run(measure(path, n, args.requests))
            for name, figures in report[n].items():
                print(f"  {n:>9,}  {name:<6} p50 {figures['p50_ms']:6.2f} ms  "
                      f"p99 {figures['p99_ms']:6.2f} ms", flush=True)  # fmt: skip
    small, large = min(report), max(report)
    print(f"\nratio {large:,} / {small:,} (target <= 2.0)")
    ok = True
    for name in ("task", "page1", "deep"):
        for q in ("p50_ms", "p99_ms"):
            ratio = report[large][name][q] / report[small][name][q]
            ok &= ratio <= 2.0
            print(f"  {name:<6} {q[:3]}: {ratio:.2f}")
    out = Path(__file__).parent / "results" / f"ledger-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"{'target met' if ok else 'target NOT met'}; results: {out}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
