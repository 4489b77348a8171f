"""Property: random task histories, delivered with duplicates and in any order, end in the
same ledger as in-order delivery, and no audit is ever counted twice."""

from __future__ import annotations

import json
import sqlite3
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from handlers.ledger.batch import Batch
from handlers.ledger.store import apply_snapshots
from handlers.ledger.tables import MIGRATIONS
from receiver.records import DeliveryRecord, DeliveryStatus
from receiver.storage.compiled import Statements
from receiver.storage.sqlite_tx import SQLiteTx, drive

BASE = datetime(2024, 3, 1, tzinfo=UTC)
STEPS = st.sampled_from(["audit_accepted", "audit_fixed", "audit_rejected", "recall",
                         "complete", "touch_metadata"])  # fmt: skip


def stamp(minutes: int) -> str:
    return (BASE + timedelta(minutes=minutes)).isoformat().replace("+00:00", "Z")


@st.composite
def histories(draw: st.DrawFn) -> list[dict[str, Any]]:
    """Snapshots as a vendor would send them, in the order it would send them.

    Tasks share one unique_id: each but the last ends in error (clear_unique_id_on_error) or
    cancel (clear_unique_id) before the next is created with the same unique_id.
    """
    clock = 0
    snapshots: list[dict[str, Any]] = []
    n_tasks = draw(st.integers(1, 3))
    for t in range(n_tasks):
        clock += 10
        task: dict[str, Any] = {
            "task_id": f"task-{t}", "type": "imageannotation", "project": "p",
            "created_at": stamp(clock), "unique_id": "uid-1", "metadata": {"n": 0},
            "tags": ["a"], "audits": [], "status": "pending",
            "clear_unique_id_on_error": True,
        }  # fmt: skip

        # As some published examples do: the first completion sent without updated_at.
        bare_completion = draw(st.booleans())

        def emit(status: str, response: Any, task: dict[str, Any] = task) -> None:
            nonlocal clock, bare_completion
            clock += 1
            if status == "completed" and task["status"] != "completed":
                task["completed_at"] = stamp(clock)
            task["status"] = status
            task["updated_at"] = stamp(clock)
            task["response"] = response
            sent = json.loads(json.dumps(task))
            if bare_completion and status == "completed":
                del sent["updated_at"]
                bare_completion = False
            snapshots.append(
                {"task_id": task["task_id"], "status": status, "response": response, "task": sent}
            )

        emit("pending", None)
        last = t == n_tasks - 1
        if not last and draw(st.booleans()):
            emit("error", {"error": "attachment 403"})
            continue
        emit("completed", {"label": "v1"})
        for step in draw(st.lists(STEPS, max_size=6)):
            if step.startswith("audit") and task["status"] == "completed":
                result = step.split("_")[1]
                task["audits"] = [*task["audits"], {"audited_by": "qa@x", "audited_at":
                                  stamp(clock + 1), "audit_result": result}]  # fmt: skip
                response = {"label": f"fix{clock}"} if result == "fixed" else task["response"]
                if draw(st.booleans()):  # the vendor's own review status, sent with it
                    task["customer_review_status"] = result
                emit("completed", response)
            elif step == "recall" and task["status"] == "completed":
                emit("pending", None)
            elif step == "complete" and task["status"] == "pending":
                emit("completed", {"label": f"redo{clock}"})
            elif step == "touch_metadata":
                task["metadata"] = {"n": clock}
                emit(task["status"], task["response"])
        if not last:
            if task["status"] == "pending":
                task["params"] = {"clear_unique_id": True}
                emit("canceled", None)
            else:
                emit("error", {"error": "recalled and failed"})
    return snapshots


def ledger(order: list[dict[str, Any]]) -> tuple[list[Any], list[Any], dict[str, int]]:
    conn = sqlite3.connect(":memory:", isolation_level=None)
    # The ledger as the app runs it: its migrations, then each delivery in a transaction.
    tx = SQLiteTx(conn, Statements("sqlite"), max_header_bytes=16384)
    for migration in MIGRATIONS:
        drive(migration.up(tx))
    for i, snapshot in enumerate(order):
        body = json.dumps(snapshot).encode()
        record = DeliveryRecord(
            id=f"dlv_{i}", seq=i, source="refonte", kind="refonte", received_at=1.0e9 + i,
            headers={}, body=body, content_type="application/json",
            status=DeliveryStatus.RECEIVED, task_id=snapshot["task_id"], sender_delivery_id=None,
            key_index=None, key_fingerprint=None, attempts=0, next_attempt_at=0,
            last_error=None, last_traceback=None, duplicate_of=None, replayed=False,
            events_derived=False, processed_at=None,
        )  # fmt: skip
        (result,) = drive(apply_snapshots(Batch(tx), [record]))
        assert not isinstance(result, Exception), result
    tasks = conn.execute(
        "SELECT task_id, status, unique_id, customer_review_status, task, response, audits "
        "FROM ledger_tasks ORDER BY task_id"
    ).fetchall()
    bindings = conn.execute("SELECT unique_id, task_id FROM ledger_unique_ids").fetchall()
    audited = dict(
        conn.execute(
            "SELECT task_id, count(*) FROM ledger_history WHERE name = 'task.audited' "
            "GROUP BY task_id"
        ).fetchall()
    )
    return tasks, bindings, audited


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(history=histories(), data=st.data())
def test_any_order_with_duplicates_ends_in_the_in_order_ledger(
    history: list[dict[str, Any]], data: st.DataObject
) -> None:
    expected_tasks, expected_bindings, expected_audits = ledger(history)
    repeats = data.draw(st.lists(st.sampled_from(history), max_size=len(history)))
    shuffled = data.draw(st.permutations(history + repeats))
    tasks, bindings, audited = ledger(list(shuffled))
    assert tasks == expected_tasks
    assert bindings == expected_bindings
    assert audited == expected_audits
    for task_id, _, _, _, _, _, audits in tasks:
        assert audited.get(task_id, 0) == len(json.loads(audits))  # each audit exactly once
