"""A task listing's query: the vendor's parameter names and formats, as SQL over the ledger.

``GET /v1/tasks`` answers what the vendor's own task API answers, so code written against the
vendor (the official Scale SDK among it) runs against the ledger unchanged: its filter names
(`status`, `type`, `project`, `batch`, `customer_review_status` or `review_status`,
`unique_id`, `tags`/`tag`), its time bounds (`start_time`/`created_after`,
`end_time`/`created_before`, `updated_after`/`updated_before`,
`completed_after`/`completed_before`), in ISO 8601 with a ``T`` or a space, list values
repeated (``unique_id=a&unique_id=b``) or comma-joined (``review_status=accepted,fixed``),
matching any of them. A parameter it does not know is refused, naming it, rather than
silently ignored (a typo would otherwise list every task).
"""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Any

import orjson
import sqlalchemy as sa

from handlers.ledger.store import iso

# Filter parameter -> SQL column on ledger_tasks (tags are served by ledger_task_tags).
COLUMN_FILTERS = {
    "status": "status",
    "type": "type",
    "project": "project",
    "batch": "batch",
    "unique_id": "unique_id",
    "customer_review_status": "customer_review_status",
}
ALIASES = {"review_status": "customer_review_status", "tag": "tags"}
# Several values of these mean "any of them"; project and batch names may hold commas.
LISTS = frozenset({"status", "type", "unique_id", "customer_review_status", "tags"})
# (parameter, column, operator): time bounds.
TIMES = (
    ("start_time", "created", ">="), ("created_after", "created", ">="),
    ("end_time", "created", "<="), ("created_before", "created", "<="),
    ("updated_after", "t.updated_at", ">"), ("updated_before", "t.updated_at", "<"),
    ("completed_after", "t.completed_at", ">"), ("completed_before", "t.completed_at", "<"),
)  # fmt: skip
# Accepted and without effect here: the ledger keeps no attachments.
IGNORED = frozenset({"include_attachment_url"})
PAGING = frozenset({"limit", "next_token", "limited_response"})
KNOWN = frozenset({*COLUMN_FILTERS, *ALIASES, "tags", *(t[0] for t in TIMES), *IGNORED, *PAGING})
FILTERS = (*COLUMN_FILTERS, "tags", *(t[0] for t in TIMES))
# What `limited_response=true` keeps of each task, as the vendor documents it.
LIMITED = ("task_id", "status", "metadata", "project", "otherVersion")


class BadQuery(ValueError):
    pass


def encode_token(created_at: str, task_id: str, offset: int) -> str:
    raw = orjson.dumps([created_at, task_id, offset])
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_token(token: str) -> tuple[str, str, int]:
    """(created_at, task_id, offset) of the last task a page showed."""
    try:
        values = orjson.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        created_at, task_id = values[:2]
        offset = int(values[2]) if len(values) > 2 else 0  # tokens of earlier releases
        return str(created_at), str(task_id), offset
    except (ValueError, TypeError, IndexError, orjson.JSONDecodeError):
        raise BadQuery("next_token is not valid") from None


def _time(name: str, value: str) -> str:
    try:
        return iso(datetime.fromisoformat(value.strip().replace("Z", "+00:00")))
    except ValueError:
        raise BadQuery(f"{name} must be an ISO 8601 date or datetime") from None


@dataclass(frozen=True, slots=True)
class ListQuery:
    """A task listing's SQL parts: FROM, WHERE with its arguments, the page size, and the
    created_at column the order and the time filters use (the tag table's, when joined)."""

    source: str
    where: str
    args: dict[str, Any]
    limit: int
    created: str
    filters: dict[str, tuple[str, ...]]  # the filters given, by canonical name
    limited: bool = False

    @property
    def order(self) -> str:
        return f"ORDER BY {self.created} DESC, t.task_id DESC"  # newest created first


def multi(params: Mapping[str, Sequence[str]] | Mapping[str, str]) -> dict[str, list[str]]:
    """Each parameter's values under its canonical name, comma-joined lists split."""
    out: dict[str, list[str]] = {}
    for raw_name, raw in params.items():
        name = ALIASES.get(raw_name, raw_name)
        values = [raw] if isinstance(raw, str) else list(raw)
        if name in LISTS:
            values = [v.strip() for value in values for v in value.split(",") if v.strip()]
        out.setdefault(name, []).extend(values)
    return out


def build_query(params: Mapping[str, Sequence[str]] | Mapping[str, str]) -> ListQuery:
    unknown = sorted(set(params) - KNOWN)
    if unknown:
        raise BadQuery(
            f"unknown query parameter {', '.join(map(repr, unknown))}; known: "
            f"{', '.join(sorted(KNOWN))}"
        )
    values = multi(params)
    try:
        limit = int((values.get("limit") or ["100"])[-1])
    except ValueError:
        raise BadQuery("limit must be an integer from 1 to 100") from None
    if not 1 <= limit <= 100:
        raise BadQuery("limit must be an integer from 1 to 100")
    where: list[str] = []
    args: dict[str, Any] = {}

    def matches(column: str, name: str, given: list[str]) -> None:
        if len(given) == 1:
            where.append(f"{column} = :{name}")
            args[name] = given[0]
            return
        marks = [f":{name}_{i}" for i in range(len(given))]
        where.append(f"{column} IN ({', '.join(marks)})")
        args.update({m[1:]: v for m, v in zip(marks, given, strict=True)})

    tags = values.get("tags") or []
    source, created = "ledger_tasks AS t", "t.created_at"
    if len(tags) == 1:  # one tag: listed by the tag table's own (tag, created_at) order
        source = "ledger_task_tags AS g JOIN ledger_tasks AS t ON t.task_id = g.task_id"
        created = "g.created_at"
        matches("g.tag", "tags", tags)
    elif tags:  # any of several: each task once
        marks = [f":tags_{i}" for i in range(len(tags))]
        where.append(
            "EXISTS (SELECT 1 FROM ledger_task_tags AS g WHERE g.task_id = t.task_id "
            f"AND g.tag IN ({', '.join(marks)}))"
        )
        args.update({m[1:]: v for m, v in zip(marks, tags, strict=True)})
    for name, column in COLUMN_FILTERS.items():
        if values.get(name):
            matches(f"t.{column}", name, values[name])
    for name, column, op in TIMES:
        if values.get(name):
            where.append(f"{created if column == 'created' else column} {op} :{name}")
            args[name] = _time(name, values[name][-1])
    limited = (values.get("limited_response") or ["false"])[-1].lower() in ("1", "true")
    filters = {n: tuple(values[n]) for n in FILTERS if values.get(n)}
    return ListQuery(source, " AND ".join(where) or "1 = 1", args, limit, created, filters, limited)


@lru_cache(maxsize=512)
def statement(sql: str) -> sa.TextClause:
    return sa.text(sql)  # one object per query shape, so its compiled form is reused


def count_statement(q: ListQuery) -> sa.TextClause:
    return statement(f"SELECT count(*) FROM {q.source} WHERE {q.where}")
