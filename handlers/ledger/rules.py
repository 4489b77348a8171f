"""The ledger's rules for Refonte-style snapshots, as pure functions.

Vendors send snapshots, not events, retry for a day and deliver in any order. `apply` takes
what the ledger holds for a task and one incoming snapshot and says what is true now: the
new state, whether the snapshot was stale, the events it means, and what happens to the
task's `unique_id` binding. No I/O: the store around it loads and saves state atomically.

Which snapshot is newer (rule 1): each snapshot has a key, and snapshots are ordered by it,
so the order is total whichever fields each carries (vendors' published examples omit
`updated_at` now and then):

1. its moment: `updated_at` when it carries one, else the latest time it does carry (its
   newest `audited_at`, its `completed_at`), else none (the earliest);
2. then more audits; the later newest `audited_at`; the later `completed_at`; the later
   status: pending < error < canceled < completed.

So a recall that carries `updated_at` is newer than the completed snapshot before it that
carried none (its moment is its completion). A snapshot whose key is smaller is stale:
recorded, changes nothing. One whose key is equal is applied (it may still carry changed
tags or metadata).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from receiver.sources.refonte import Audit, RefonteCallback, task_flag

STATUS_RANK = {"pending": 0, "error": 1, "canceled": 2, "completed": 3}
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _aware(value: datetime | None) -> datetime:
    if value is None:
        return _EPOCH
    return value if value.tzinfo else value.replace(tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class Version:
    """What orders two snapshots of one task (see the module table)."""

    updated_at: datetime | None
    audit_count: int
    newest_audit: datetime | None
    completed_at: datetime | None
    status: str

    def derived(self) -> tuple[int, datetime, datetime, int]:
        return (
            self.audit_count,
            _aware(self.newest_audit),
            _aware(self.completed_at),
            STATUS_RANK.get(self.status, 0),
        )

    def key(self) -> str:
        """A stable text form, used to derive event ids."""
        stamp = _aware(self.updated_at).isoformat() if self.updated_at else "-"
        count, audit, done, rank = self.derived()
        return f"{stamp}|{count}|{audit.isoformat()}|{done.isoformat()}|{rank}"


def moment(v: Version) -> datetime:
    """When the snapshot says it is from: `updated_at`, else the latest time it carries."""
    if v.updated_at is not None:
        return _aware(v.updated_at)
    return max(_aware(v.newest_audit), _aware(v.completed_at))


def order_key(v: Version) -> tuple[datetime, int, datetime, datetime, int]:
    return (moment(v), *v.derived())


def compare(new: Version, applied: Version) -> int:
    """-1 when `new` is older than `applied`, 0 when equal, 1 when newer (module docstring)."""
    x, y = order_key(new), order_key(applied)
    return (x > y) - (x < y)


def version_of(callback: RefonteCallback) -> Version:
    audits = callback.task.audits or []
    stamps = [a.audited_at for a in audits if a.audited_at is not None]
    return Version(
        updated_at=callback.task.updated_at,
        audit_count=len(audits),
        newest_audit=max(stamps, key=_aware) if stamps else None,
        completed_at=callback.task.completed_at,
        status=callback.effective_status,
    )


@dataclass(frozen=True, slots=True)
class TaskState:
    """What the ledger holds for one task."""

    task_id: str
    status: str
    version: Version
    task: dict[str, Any]
    response: Any
    audits: frozenset[str] = frozenset()
    unique_id: str | None = None  # the unique_id this task holds now, if any
    customer_review_status: str | None = None


@dataclass(frozen=True, slots=True)
class Derived:
    """One event `apply` derived: its name, payload and what makes its id unique."""

    name: str
    payload: dict[str, Any]
    identity: str
    occurred_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class Outcome:
    state: TaskState
    stale: bool
    events: list[Derived] = field(default_factory=list)
    bind: str | None = None  # bind this unique_id to the task
    release: str | None = None  # release this unique_id (the task held it)


def releasing_unique_id(callback: RefonteCallback) -> bool:
    """Error with `clear_unique_id_on_error`, or cancel with `clear_unique_id` (task or params)."""
    status = callback.effective_status
    return (status == "error" and task_flag(callback.task, "clear_unique_id_on_error")) or (
        status == "canceled" and task_flag(callback.task, "clear_unique_id")
    )


def _prior_response(callback: RefonteCallback, prior: TaskState | None) -> Any:
    """The response a fix replaced: the vendor's `prior_responses` (the last one) when it
    sends them, else what the ledger held."""
    extra = callback.task.model_extra or {}
    sent = extra.get("prior_responses")
    if isinstance(sent, list) and sent:
        return sent[-1]
    return prior.response if prior is not None else None


def _newest_audit(audits: list[Audit]) -> Audit | None:
    dated = [a for a in audits if a.audited_at is not None]
    return max(dated, key=lambda a: _aware(a.audited_at)) if dated else None


def apply(
    prior: TaskState | None,
    callback: RefonteCallback,
    *,
    holder: str | None,
    raw_task: dict[str, Any] | None = None,
) -> Outcome:
    """Apply `callback` to `prior`; `holder` is the task currently bound to its unique_id.

    `raw_task` is the task object exactly as the vendor sent it; the ledger keeps that, so
    the API shows the vendor's fields and formats, not a re-serialisation.
    """
    task_id = callback.effective_task_id
    version = version_of(callback)
    if prior is not None and compare(version, prior.version) < 0:
        return Outcome(state=prior, stale=True)

    status = callback.effective_status
    snapshot = (
        raw_task
        if raw_task is not None
        else callback.task.model_dump(mode="json", exclude_none=True)
    )
    response = callback.response if callback.response is not None else callback.task.response
    at = version.updated_at
    events: list[Derived] = []
    vkey = version.key()

    old_status = prior.status if prior else None
    if status != old_status:
        base = {"status": status, "previous_status": old_status, "response": response}
        if status == "completed":
            events.append(Derived("task.completed", base, vkey, callback.task.completed_at or at))
        elif status == "pending" and old_status == "completed":
            events.append(Derived("task.recalled", base, vkey, at))
        elif status == "error":
            error = response.get("error") if isinstance(response, dict) else None
            payload = base | {
                "error": error,
                "clear_unique_id_on_error": task_flag(callback.task, "clear_unique_id_on_error"),
            }
            events.append(Derived("task.errored", payload, vkey, at))
        elif status == "canceled":
            payload = base | {"clear_unique_id": task_flag(callback.task, "clear_unique_id")}
            events.append(Derived("task.canceled", payload, vkey, at))

    audits = callback.task.audits or []
    seen = set(prior.audits if prior else ())
    for audit in sorted(audits, key=lambda a: _aware(a.audited_at)):
        identity = audit.identity()
        if identity in seen:
            continue
        seen.add(identity)
        audited: dict[str, Any] = {"audit": audit.model_dump(mode="json")}
        if audit.audit_result == "fixed":
            before = _prior_response(callback, prior)
            if before is not None or prior is not None:
                audited |= {"prior_response": before, "response": response}
        events.append(Derived("task.audited", audited, identity, audit.audited_at))

    if prior is not None:
        changes: dict[str, dict[str, Any]] = {}
        for name in ("metadata", "tags"):
            before, after = prior.task.get(name), snapshot.get(name)
            if before != after:
                changes[name] = {"before": before, "after": after}
        if status == old_status and prior.response != response:
            changes["response"] = {"before": prior.response, "after": response}
        if changes:
            events.append(Derived("task.updated", {"changes": changes}, vkey, at))

    newest = _newest_audit(audits)
    # The vendor's own word wins: its audits may list the newest first, or carry times that
    # do not say which one it counted.
    review = callback.task.customer_review_status or (newest.audit_result if newest else None)

    held = prior.unique_id if prior else None
    named = callback.task.unique_id
    releasing = releasing_unique_id(callback)
    wanted = None if releasing else named
    bind = release = None
    if held is not None and held != wanted:
        # Released by error/cancel with the clear flag, removed, or replaced. A task that no
        # longer holds an id never releases it again, so a late callback of an old task
        # cannot touch its successor's binding.
        release = held
        events.append(Derived("unique_id.released", {"unique_id": held}, vkey, at))
        held = None
    elif releasing and named and status != old_status:
        # First seen already errored/canceled: the vendor freed an id we never bound. Said
        # whichever task holds it here now: a successor that took it first only got here
        # first (the vendor lets it take the id once freed), and in-order delivery would
        # have said it too, so the events do not depend on other tasks' order.
        events.append(Derived("unique_id.released", {"unique_id": named}, vkey, at))
    if wanted is not None and held != wanted:
        if holder is None or holder == task_id:
            bind = held = wanted
        else:
            conflict = {"unique_id": wanted, "task_id": task_id, "held_by": holder}
            events.append(Derived("unique_id.conflict", conflict, f"{wanted}|{holder}", at))

    state = TaskState(
        task_id=task_id,
        status=status,
        version=version,
        task=snapshot,
        response=response,
        audits=frozenset(seen),
        unique_id=held,
        customer_review_status=review,
    )
    return Outcome(state=state, stale=False, events=events, bind=bind, release=release)
