"""The ledger rules as pure functions, on the sample snapshots."""

from __future__ import annotations

import itertools
import json
from datetime import UTC, datetime
from typing import Any

import pytest

from handlers.ledger.rules import Outcome, TaskState, Version, apply, compare
from receiver.sources.refonte import RefonteCallback, parse_callback
from tests.conftest import sample_json

LIFECYCLE = [
    "05-completed-before-audit.json",
    "06-audit-accepted.json",
    "07-audit-fixed.json",
    "08-recall-to-pending.json",
]


def cb(name: str, **task: Any) -> RefonteCallback:
    body = sample_json(name)
    body["task"].update(task)
    return parse_callback(body)


def run(names: list[str], holder: str | None = None) -> tuple[TaskState | None, list[Outcome]]:
    state: TaskState | None = None
    outcomes = []
    for name in names:
        outcome = apply(state, cb(name), holder=holder)
        state = outcome.state
        outcomes.append(outcome)
    return state, outcomes


def names(outcome: Outcome) -> list[str]:
    return [e.name for e in outcome.events]


def t(day: int, hour: int = 0) -> datetime:
    return datetime(2024, 3, day, hour, tzinfo=UTC)


def v(
    updated: datetime | None = None,
    audits: int = 0,
    newest: datetime | None = None,
    done: datetime | None = None,
    status: str = "completed",
) -> Version:
    return Version(updated, audits, newest, done, status)


@pytest.mark.parametrize(
    ("new", "applied", "expected"),
    [
        (v(t(2)), v(t(1)), 1),  # both have updated_at: it decides
        (v(t(1)), v(t(2)), -1),
        (v(t(1), audits=0), v(t(2), audits=5), -1),  # updated_at wins over the audit trail
        (v(None, audits=2), v(None, audits=1), 1),  # no updated_at: more audits is newer
        (v(None, 1, t(3)), v(None, 1, t(2)), 1),  # then the newest audited_at
        (v(None, 1, t(2), t(1)), v(None, 1, t(2), t(2)), -1),  # then completed_at
        (v(None, status="completed"), v(None, status="pending"), 1),  # then status
        (v(None, status="error"), v(None, status="completed"), -1),
        (v(t(1), audits=2), v(None, audits=1), 1),  # one side lacks updated_at: derived
        (v(t(1)), v(t(1)), 0),
    ],
)
def test_snapshot_order_rule_table(new: Version, applied: Version, expected: int) -> None:
    assert compare(new, applied) == expected


def test_a_never_seen_task_is_created() -> None:
    outcome = apply(None, cb("01-completed.json"), holder=None)
    assert not outcome.stale
    assert outcome.state.status == "completed"
    assert outcome.state.response == {"category": "red"}
    assert names(outcome) == ["task.completed"]


def test_lifecycle_in_order() -> None:
    state, outcomes = run(LIFECYCLE)
    assert [names(o) for o in outcomes] == [
        ["task.completed"],
        ["task.audited"],
        ["task.audited", "task.updated"],
        ["task.recalled"],
    ]
    fixed = outcomes[2].events[0]
    assert fixed.payload["audit"]["audit_result"] == "fixed"
    assert fixed.payload["prior_response"]["annotations"][0]["label"] == "vehicle"
    assert fixed.payload["response"]["annotations"][0]["label"] == "pedestrian"
    assert outcomes[2].events[1].payload["changes"]["response"]["after"]["is_customer_fix"]
    assert state is not None
    assert state.status == "pending"
    assert state.customer_review_status == "fixed"
    assert len(state.audits) == 2


def test_completion_after_a_recall_is_a_new_completion() -> None:
    state, _ = run(LIFECYCLE)
    again = apply(state, cb("07-audit-fixed.json", updated_at="2024-03-05T00:00:00Z"), holder=None)
    assert names(again) == ["task.completed"]
    assert again.events[0].identity != run(LIFECYCLE[:1])[1][0].events[0].identity


def test_a_late_retry_is_stale_and_changes_nothing() -> None:
    state, _ = run(["07-audit-fixed.json"])
    late = apply(state, cb("06-audit-accepted.json"), holder=None)
    assert late.stale
    assert late.state == state
    assert late.events == []


def test_each_audit_counts_once_whatever_repeats_it_and_in_any_case() -> None:
    state, _ = run(["06-audit-accepted.json"])
    body = sample_json("07-audit-fixed.json")
    body["task"]["audits"][0]["audit_result"] = "Accepted"  # prose capitalisation
    outcome = apply(state, parse_callback(body), holder=None)
    assert [
        e.payload["audit"]["audit_result"] for e in outcome.events if e.name == "task.audited"
    ] == ["fixed"]


@pytest.mark.parametrize("order", list(itertools.permutations(range(4))))
def test_any_delivery_order_ends_in_the_in_order_state(order: tuple[int, ...]) -> None:
    expected, _ = run(LIFECYCLE)
    shuffled, outcomes = run([LIFECYCLE[i] for i in order] + [LIFECYCLE[order[0]]])
    assert shuffled == expected
    audited = [e.identity for o in outcomes for e in o.events if e.name == "task.audited"]
    assert len(audited) == len(set(audited)) <= 2


def test_metadata_and_tags_changes_are_updates() -> None:
    state, _ = run(["05-completed-before-audit.json"])
    changed = cb("05-completed-before-audit.json", metadata={"scene": "s-18"}, tags=["a", "b"])
    outcome = apply(state, changed, holder=None)
    assert names(outcome) == ["task.updated"]
    assert outcome.events[0].payload["changes"] == {
        "metadata": {"before": {"scene": "s-17"}, "after": {"scene": "s-18"}},
        "tags": {"before": ["experiment_1"], "after": ["a", "b"]},
    }


def test_error_with_clear_unique_id_releases_it_for_a_successor() -> None:
    errored = apply(None, cb("03-error-on-creation-clear-unique-id.json"), holder=None)
    assert names(errored) == ["task.errored", "unique_id.released"]
    assert errored.events[0].payload["clear_unique_id_on_error"] is True
    assert errored.state.unique_id is None and errored.bind is None
    successor = apply(None, cb("04-resubmitted-same-unique-id-completed.json"), holder=None)
    assert successor.bind == "kitten-001"
    assert successor.state.unique_id == "kitten-001"


def test_the_release_is_said_whichever_task_took_the_unique_id_first() -> None:
    """The errored task's callback arriving after its successor's (which took the id) says
    what in-order delivery says: the same events, so they do not depend on the order in which
    different tasks' deliveries are applied (several replicas apply them in any order)."""
    first = apply(None, cb("03-error-on-creation-clear-unique-id.json"), holder=None)
    late = apply(None, cb("03-error-on-creation-clear-unique-id.json"), holder="successor")
    assert names(late) == names(first) == ["task.errored", "unique_id.released"]
    assert [e.identity for e in late.events] == [e.identity for e in first.events]
    assert late.release is None and late.bind is None  # the successor's binding is untouched


def test_a_bound_task_that_errors_releases_its_binding() -> None:
    body = sample_json("03-error-on-creation-clear-unique-id.json")
    body["status"] = body["task"]["status"] = "pending"
    body["task"]["updated_at"] = "2023-09-12T10:00:01Z"  # before the error snapshot
    pending = parse_callback(body)
    first = apply(None, pending, holder=None)
    assert first.bind == "kitten-001"
    errored = apply(
        first.state, cb("03-error-on-creation-clear-unique-id.json"), holder=first.state.task_id
    )
    assert errored.release == "kitten-001"
    assert "unique_id.released" in names(errored)


def test_a_claim_on_a_held_unique_id_is_a_conflict_and_the_binding_stays() -> None:
    outcome = apply(None, cb("04-resubmitted-same-unique-id-completed.json"), holder="other-task")
    conflict = next(e for e in outcome.events if e.name == "unique_id.conflict")
    assert conflict.payload == {
        "unique_id": "kitten-001",
        "task_id": "6500ab77e4b0c1d2e3f40002",
        "held_by": "other-task",
    }
    assert outcome.bind is None
    assert outcome.state.unique_id is None


def test_a_late_callback_of_the_old_task_never_touches_its_successor() -> None:
    errored = apply(None, cb("03-error-on-creation-clear-unique-id.json"), holder=None)
    successor = "6500ab77e4b0c1d2e3f40002"
    late = apply(errored.state, cb("03-error-on-creation-clear-unique-id.json"), holder=successor)
    assert late.release is None and late.bind is None
    assert not [e for e in late.events if e.name.startswith("unique_id.")]


def test_cancel_with_clear_unique_id_in_params_releases() -> None:
    outcome = apply(None, cb("10-canceled-clear-unique-id.json"), holder=None)
    assert names(outcome) == ["task.canceled", "unique_id.released"]
    assert outcome.events[0].payload["clear_unique_id"] is True


def test_callback_succeeded_and_callback_completed_are_both_accepted() -> None:
    for name in ("02-completed-test-mode.json", "06-audit-accepted.json"):
        body = sample_json(name)
        assert "callback_succeeded" in json.dumps(body) or "callback_completed" in json.dumps(body)
        assert apply(None, parse_callback(body), holder=None).state.status == "completed"
