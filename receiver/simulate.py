"""``taskhook simulate``: play a vendor against a receiver, for demos and load.

Builds realistic task lifecycles from the sample snapshots — creation errors that release
their unique_id and a resubmission that takes it, completions, audits accepted / fixed /
rejected, recalls and re-completions — then sends them as a vendor does: interleaved across
tasks, with exact duplicates and late retries of older snapshots, each signed for the target
source. The same --seed always sends the same bodies in the same order.

Times are a base time plus minutes that only grow, so they are right at any size: each task
is created before it is updated, and each snapshot is newer than the one before it.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

from receiver.config import Settings
from receiver.replay import Recorded, Summary, replay_remote

BASE_TIME = datetime(2024, 3, 1, tzinfo=UTC)

# The shape of samples/refonte/05-completed-before-audit.json, kept here so an installed
# taskhook (without the repository's samples) can simulate too.
_TASK: dict[str, Any] = {
    "type": "imageannotation",
    "project": "street_scenes",
    "batch": "street_scenes_2024-03",
    "instruction": "Label every object in this image",
    "params": {
        "attachment": "https://example.com/image.jpg",
        "geometries": {"box": {"objects_to_annotate": ["vehicle", "pedestrian"]}},
    },
    "metadata": {"scene": "s-17"},
    "tags": ["experiment_1"],
    "callback_url": "http://www.example.com/callback",
    "callback_completed": True,
}


def _stamp(minutes: int) -> str:
    """`BASE_TIME` plus `minutes`, as the vendor writes times (never wraps)."""
    return (BASE_TIME + timedelta(minutes=minutes)).strftime("%Y-%m-%dT%H:%M:%S.000Z")


def lifecycle(item: int, rng: random.Random, seed: int) -> list[dict[str, Any]]:
    """The snapshots one labelled item produces, oldest first."""
    clock = item * 7
    unique_id = f"sim-{seed}/item-{item}"
    snapshots: list[dict[str, Any]] = []

    def snap(task: dict[str, Any], status: str, response: Any) -> None:
        nonlocal clock
        clock += rng.randint(1, 30)
        task["status"] = status
        task["updated_at"] = _stamp(clock)
        task["response"] = response
        body = {"task_id": task["task_id"], "status": status, "response": response,
                "task": json.loads(json.dumps(task))}  # fmt: skip
        snapshots.append(body)

    base = json.loads(json.dumps(_TASK))
    attempt = 0
    if rng.random() < 0.2:  # the attachment could not be fetched: error, release, resubmit
        failed = base | {
            "task_id": f"sim{seed:04d}{item:08d}{attempt:02d}", "unique_id": unique_id,
            "clear_unique_id_on_error": True, "created_at": _stamp(clock), "audits": [],
        }  # fmt: skip
        snap(failed, "error", {"error": "One or more attachments could not be downloaded."})
        attempt += 1
    task = base | {
        "task_id": f"sim{seed:04d}{item:08d}{attempt:02d}", "unique_id": unique_id,
        "created_at": _stamp(clock), "audits": [],
    }  # fmt: skip
    answer: dict[str, Any] = {
        "annotations": [{"label": rng.choice(["vehicle", "pedestrian"]), "left": item}]
    }
    snap(task, "completed", answer)
    for _ in range(rng.choice([0, 0, 1, 1, 2])):
        result = rng.choice(["accepted", "fixed", "rejected"])
        audit = {
            "audited_by": "qa@example.com", "audited_at": _stamp(clock + 1),
            "audit_result": result, "audit_source": "customer",
            "audit_time_secs": rng.randint(5, 90),
        }  # fmt: skip
        task["audits"] = [*task["audits"], audit]
        task["customer_review_status"] = result
        if result == "fixed":
            task["prior_responses"] = [answer]
            answer = {"annotations": [{"label": "fixed", "left": item}], "is_customer_fix": True}
        snap(task, "completed", answer)
    if rng.random() < 0.1:  # recalled to pending, then completed again
        snap(task, "pending", None)
        snap(task, "completed", answer)
    return snapshots


def traffic(tasks: int, seed: int, source: str) -> Iterator[Recorded]:
    """The vendor's sends: interleaved lifecycles, duplicates and late retries. Each item's
    deliveries share a lane, so a concurrent sender keeps their order."""
    rng = random.Random(seed)
    queues = [lifecycle(i, rng, seed) for i in range(tasks)]
    live = [i for i, queue in enumerate(queues) if queue]
    headers = {"content-type": "application/json"}
    sent = 0
    while live:
        at = rng.randrange(len(live))
        item = live[at]
        queue = queues[item]
        if len(queue) > 1 and rng.random() < 0.1:
            # A delivery the vendor failed to make arrives only after the next state: late,
            # out of order, never seen before (so not a byte-identical duplicate either).
            queue[0], queue[1] = queue[1], queue[0]
        body = json.dumps(queue.pop(0)).encode()
        if not queue:  # done: the last live item takes its place (O(1), still seeded)
            live[at] = live[-1]
            live.pop()
        sent += 1
        lane = f"item-{item}"
        yield Recorded(f"simulated #{sent}", source, headers, body, lane=lane)
        if rng.random() < 0.15:  # an exact retry: the vendor did not hear our 200
            yield Recorded("simulated duplicate", source, headers, body, lane=lane)


async def send(
    settings: Settings,
    *,
    url: str,
    tasks: int,
    seed: int = 1,
    source: str = "refonte",
    rate: float = 0.0,
    concurrency: int = 1,
    transport: Any = None,
) -> Summary:
    """Play the vendor against the receiver at `url`: `tasks` items' traffic, signed for
    `source`, at most `rate` a second (0: no limit) and `concurrency` requests at once (one
    item's deliveries still one after the other). `transport`: see `replay_remote`."""
    records = traffic(tasks, seed, source)
    return await replay_remote(
        settings, records, url=url, rate=rate, concurrency=concurrency, transport=transport
    )
