"""What a registration says (``POST /v1/tasks/expected``, ``taskhook expect``), checked.

Either form::

    {"source": "refonte", "tasks": [{"task_id": "t1"}, {"unique_id": "u7"}],
     "deadline": "2026-12-01T18:00:00Z"}
    {"source": "refonte", "task_id": "t1", "within_seconds": 7200, "note": "batch 12"}

Exactly one of ``deadline`` (ISO 8601 with a time zone) and ``within_seconds``; each task
names exactly one of ``task_id`` and ``unique_id``; at most `MAX_TASKS` at once.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError, model_validator

from handlers.watchdog.store import Want

MAX_TASKS = 1000
MAX_AHEAD = 366 * 86400.0  # a deadline further away is a mistake (milliseconds for seconds)
_ID = Field(default=None, min_length=1, max_length=512)


class BadRegistration(ValueError):
    """Why a registration is refused (400), with the fields at fault when there are some."""

    def __init__(self, reason: str, fields: list[dict[str, str]] | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.fields = fields or []


class TaskRef(BaseModel):
    model_config = ConfigDict(extra="forbid")

    task_id: str | None = _ID
    unique_id: str | None = _ID

    @model_validator(mode="after")
    def _one(self) -> TaskRef:
        if (self.task_id is None) == (self.unique_id is None):
            raise ValueError("give exactly one of task_id and unique_id")
        return self


class Registration(BaseModel):
    model_config = ConfigDict(extra="forbid")

    source: str = Field(min_length=1, max_length=200)
    tasks: list[TaskRef] | None = Field(default=None, min_length=1, max_length=MAX_TASKS)
    task_id: str | None = _ID
    unique_id: str | None = _ID
    deadline: AwareDatetime | None = None
    within_seconds: float | None = Field(default=None, gt=0, le=MAX_AHEAD)
    note: str | None = Field(default=None, max_length=500)

    @model_validator(mode="after")
    def _forms(self) -> Registration:
        single = self.task_id is not None or self.unique_id is not None
        if self.tasks is not None and single:
            raise ValueError("give either tasks or task_id / unique_id, not both")
        if self.tasks is None:
            if not single:
                raise ValueError("name what is expected: tasks, task_id or unique_id")
            TaskRef(task_id=self.task_id, unique_id=self.unique_id)
        if (self.deadline is None) == (self.within_seconds is None):
            raise ValueError("give exactly one of deadline and within_seconds")
        return self

    def wants(self) -> list[Want]:
        refs = self.tasks or [TaskRef(task_id=self.task_id, unique_id=self.unique_id)]
        return [Want(task_id=r.task_id, unique_id=r.unique_id) for r in refs]

    def deadline_at(self, now: float) -> float:
        if self.within_seconds is not None:
            return now + self.within_seconds
        assert self.deadline is not None
        return self.deadline.timestamp()


def parse(doc: Any, *, sources: Iterable[str], now: float) -> tuple[Registration, float]:
    """The registration `doc` asks for and its deadline, or `BadRegistration` saying why."""
    try:
        found = Registration.model_validate(doc)
    except ValidationError as exc:
        fields = [
            {"field": ".".join(str(p) for p in e["loc"]) or "body", "reason": e["msg"]}
            for e in exc.errors(include_url=False)
        ]
        raise BadRegistration(
            "; ".join(f"{f['field']}: {f['reason']}" for f in fields), fields
        ) from None
    known = sorted(sources)
    if found.source not in known:
        raise BadRegistration(
            f"unknown source {found.source!r}; configured: {', '.join(known) or 'none'}"
        )
    deadline = found.deadline_at(now)
    if deadline <= now:
        raise BadRegistration("the deadline is in the past")
    if deadline - now > MAX_AHEAD:
        raise BadRegistration("the deadline is more than a year away")
    return found, deadline
