"""``taskhook simulate``: times right at any size, and a concurrent sender that keeps each
item's order."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from receiver.app import create_app
from receiver.simulate import lifecycle, send, traffic
from tests.conftest import SECRET, make_settings


def _at(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def test_ten_thousand_tasks_are_never_updated_before_they_were_created() -> None:
    tasks = 0
    for record in traffic(10_000, 3, "refonte"):
        task = json.loads(record.body)["task"]
        created, updated = _at(task["created_at"]), _at(task["updated_at"])
        assert updated >= created, task["task_id"]
        for audit in task["audits"]:
            assert created <= _at(audit["audited_at"]) <= updated
        tasks += 1
    assert tasks > 20_000


def test_times_only_grow_past_the_old_wrap() -> None:
    import random

    # Items 5,760 and up used to wrap back to March 1st (days modulo 28).
    first = lifecycle(0, random.Random(1), 1)[0]["task"]["created_at"]
    late = lifecycle(9_999, random.Random(1), 1)
    assert _at(late[0]["task"]["created_at"]) > _at(first)
    stamps = [_at(s["task"]["updated_at"]) for s in late]
    assert stamps == sorted(stamps) and len(set(stamps)) == len(stamps)


class Counting(httpx.AsyncBaseTransport):
    """An in-process app's transport that records how many requests were in flight at once."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self.inner = inner
        self.now = self.peak = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.now += 1
        self.peak = max(self.peak, self.now)
        try:
            await asyncio.sleep(0)
            return await self.inner.handle_async_request(request)
        finally:
            self.now -= 1


async def _simulate(db: Path, concurrency: int) -> tuple[str, int, list[Any]]:
    settings = make_settings(db, handlers=["handlers.ledger"])
    app = create_app(settings)
    transport = Counting(httpx.ASGITransport(app=app))
    async with app.started():
        summary = await send(settings, url="http://taskhook", tasks=40, seed=7,
                             concurrency=concurrency, transport=transport)  # fmt: skip
        await app.dispatcher.drain()
    with sqlite3.connect(db) as conn:
        rows = conn.execute(
            "SELECT task_id, status, unique_id, customer_review_status, response "
            "FROM ledger_tasks ORDER BY task_id"
        ).fetchall()
    return summary.render(), transport.peak, rows


async def test_a_concurrent_vendor_builds_the_same_ledger(tmp_path: Path) -> None:
    assert SECRET  # make_settings' refonte source: header-token, signed by `send`
    one, peak_one, sequential = await _simulate(tmp_path / "one.db", 1)
    many, peak_many, concurrent = await _simulate(tmp_path / "many.db", 8)
    assert " 0 rejected" in one and " 0 rejected" in many
    assert one == many  # the same accepted / duplicate counts
    assert peak_one == 1 and peak_many > 1
    assert concurrent == sequential  # each item's deliveries kept their order
    assert len({row[2] for row in concurrent if row[2]}) == 40
