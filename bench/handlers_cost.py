"""What the operator's built-in plugins cost behind the intake (issue 15).

    .venv/bin/python bench/handlers_cost.py [--rounds 3] [--deliveries 10000] [--tasks 2500]

The default installation loads every built-in plugin by entry point: the ledger, and the
watchdog, whose handler sees every event (it clears expectations), and the alerts handler
(only with an ``[alerts] url``). One recording (bench/replay_speed.py's) is replayed in-process
into a fresh SQLite file and drained by the dispatcher, per round, with each plugin set in
turn (interleaved, so the machine's noise falls on all alike): the end-to-end rate
(deliveries/s, from the replay's start to the last one processed), its median over the rounds,
and each set's ratio to the ledger alone. Every run is checked: all deliveries processed.
Results: bench/results/handlers-cost-<ts>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))
sys.path.insert(0, str(BENCH))

import common  # noqa: E402
from replay_speed import SECRET, record  # noqa: E402

from receiver.app import create_app  # noqa: E402
from receiver.config import settings_from_mapping  # noqa: E402
from receiver.logs import configure_logging  # noqa: E402
from receiver.replay import read_recordings, replay_local  # noqa: E402

SETS = {
    "ledger": ["handlers.ledger"],
    "ledger+watchdog": ["handlers.ledger", "handlers.watchdog"],
    "ledger+watchdog+alerts": ["handlers.ledger", "handlers.watchdog", "handlers.alerts"],
}


def settings(url: str, handlers: list[str]) -> Any:
    return settings_from_mapping(
        {
            "database": {"url": url},
            "sources": {
                "sw": {"kind": "refonte", "verify": "standard-webhooks", "secrets": [SECRET]}
            },
            "handlers": handlers,
            "entry_points": False,
            # An alerts URL nobody listens on: the handler is registered; nothing is raised.
            "alerts": {"url": "http://127.0.0.1:9/alerts"},
            "dispatch": {"concurrency": 256, "batch_size": 512, "max_attempts": 8},
            "log": {"level": "warning"},
        },
        environ={},
    )


async def run(db: Path, recording: Path, handlers: list[str]) -> float:
    app = create_app(settings(f"sqlite:///{db}", handlers))
    await app.open()
    try:
        started = time.perf_counter()
        summary = await replay_local(app, read_recordings([str(recording)], source=None))
        elapsed = time.perf_counter() - started
    finally:
        await app.shutdown()
    with sqlite3.connect(db) as con:
        statuses = dict(con.execute("SELECT status, count(*) FROM deliveries GROUP BY status"))
    if statuses != {"processed": summary.accepted}:
        raise SystemExit(f"INVALID run ({handlers}): {statuses}")
    return summary.accepted / elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--deliveries", type=int, default=10_000)
    parser.add_argument("--tasks", type=int, default=2_500)
    args = parser.parse_args()
    configure_logging(format="console", level="warning")
    started = datetime.now(UTC)
    rates: dict[str, list[float]] = {name: [] for name in SETS}
    with tempfile.TemporaryDirectory(prefix="taskhook-handlers-") as tmp:
        recording = Path(tmp) / "traffic.jsonl"
        record(recording, args.deliveries, args.tasks)
        for n in range(1, args.rounds + 1):
            for name, handlers in SETS.items():
                rate = asyncio.run(run(Path(tmp) / f"{name}-{n}.db", recording, handlers))
                rates[name].append(rate)
                print(f"round {n} {name:<24} {rate:8,.0f} deliveries/s end to end", flush=True)
    base = statistics.median(rates["ledger"])
    print("median end to end (ratio to the ledger alone):")
    for name, values in rates.items():
        median = statistics.median(values)
        print(f"  {name:<24} {median:8,.0f}/s  {median / base:.3f}")
    out = common.write_results(
        "handlers-cost", started,
        {"args": vars(args), "rates": rates,
         "medians": {k: statistics.median(v) for k, v in rates.items()}},
    )  # fmt: skip
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
