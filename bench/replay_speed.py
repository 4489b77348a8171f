"""In-process replay speed: N recorded deliveries through verify → dedup → store → ledger.

    .venv/bin/python bench/replay_speed.py [--deliveries 100000] [--tasks 20000]

Generates a recording of N distinct Standard-Webhooks-signed Refonte snapshots (signed months
ago, so replay must skip only the freshness check) spread over --tasks tasks, then replays it
into an empty SQLite ledger with the built-in ledger plugin, and prints deliveries/s for the
intake phase (verified, deduplicated, durably stored) and for the whole run (every delivery
also applied to the ledger by the dispatcher). Target: >= 10,000 deliveries/s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from receiver.app import create_app
from receiver.config import settings_from_mapping
from receiver.logs import configure_logging
from receiver.replay import read_recordings, replay_local
from receiver.verify import sign_standard_webhooks

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
SAMPLE = Path(__file__).resolve().parents[1] / "samples" / "refonte" / "06-audit-accepted.json"


def record(path: Path, deliveries: int, tasks: int) -> None:
    template = json.loads(SAMPLE.read_text())
    signed_at = int(time.time()) - 120 * 24 * 3600
    with path.open("w") as out:
        for i in range(deliveries):
            task_id = f"{i % tasks:024x}"
            version = i // tasks
            template["task_id"] = template["task"]["task_id"] = task_id
            template["task"]["updated_at"] = f"2024-03-02T{version % 24:02d}:{version % 60:02d}:00Z"
            template["task"]["unique_id"] = f"frame-{task_id}"
            body = json.dumps(template, separators=(",", ":")).encode()
            headers = sign_standard_webhooks(body, SECRET, msg_id=f"msg_{i}", timestamp=signed_at)
            headers["content-type"] = "application/json"
            line = {"source": "sw", "received_at": "2024-03-02T09:15:00Z", "headers": headers,
                    "body": body.decode()}  # fmt: skip
            out.write(json.dumps(line) + "\n")


async def run(recording: Path, db: Path) -> tuple[float, float, int]:
    settings = settings_from_mapping(
        {
            "database": {"url": f"sqlite:///{db}"},
            "sources": {"sw": {"kind": "refonte", "verify": "standard-webhooks",
                               "secrets": [SECRET]}},
            "handlers": ["handlers.ledger"],
            "entry_points": False,
            "dispatch": {"enabled": False, "concurrency": 256, "batch_size": 512},
        },
        environ={},
    )  # fmt: skip
    app = create_app(settings)
    await app.open()
    try:
        started = time.perf_counter()
        summary = await replay_local(app, read_recordings([str(recording)], source=None),
                                     drain=False)  # fmt: skip
        stored = time.perf_counter()
        await app.dispatcher.drain(within=3600, wait_for_retries=False)
        done = time.perf_counter()
    finally:
        await app.shutdown()
    assert not summary.rejected, summary.render()
    return stored - started, done - started, summary.accepted


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--deliveries", type=int, default=100_000)
    parser.add_argument("--tasks", type=int, default=20_000)
    args = parser.parse_args()
    configure_logging(format="console", level="warning")
    with tempfile.TemporaryDirectory() as tmp:
        recording = Path(tmp) / "traffic.jsonl"
        record(recording, args.deliveries, args.tasks)
        intake, total, accepted = asyncio.run(run(recording, Path(tmp) / "replay.db"))
    print(f"{accepted:,} deliveries replayed in-process")
    print(f"  intake (verify + dedup + durable store): {accepted / intake:,.0f}/s ({intake:.1f} s)")
    print(f"  end to end (+ ledger via the dispatcher): {accepted / total:,.0f}/s ({total:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
