"""``taskhook tasks list [filters]`` and ``taskhook tasks show ID``: the ledger on a terminal."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from datetime import datetime
from typing import Any

import orjson

from handlers.ledger.api import Query, fetch_task, list_page, sql_query
from handlers.ledger.counts import Totals
from handlers.ledger.query import BadQuery
from handlers.ledger.review import ALLOWED
from handlers.ledger.store import iso
from receiver.plugin_store import PluginStorage
from receiver.registry import Command
from receiver.tables import table

FILTERS = ("status", "type", "project", "batch", "unique_id", "customer_review_status", "tag",
           "start_time", "end_time", "updated_after", "updated_before", "completed_after",
           "completed_before")  # fmt: skip
# What the ledger's statuses can be: Refonte's and the document-review lifecycle's.
VALUES = {
    "status": frozenset({"pending", "completed", "error", "canceled", *ALLOWED}),
    "customer_review_status": frozenset({"pending", "accepted", "fixed", "rejected", "commented"}),
}
LIST_COLUMNS = ("task_id", "status", "type", "project", "batch", "unique_id",
                "customer_review_status", "created_at", "updated_at")  # fmt: skip


def configure(parser: argparse.ArgumentParser, common: list[argparse.ArgumentParser]) -> None:
    sub = parser.add_subparsers(dest="tasks_command", required=True)
    show = sub.add_parser("show", help="one task as last applied, and its history", parents=common)
    show.add_argument("task_id")
    show.add_argument("--json", action="store_true", help="print the API's JSON instead")
    listing = sub.add_parser("list", help="tasks, newest created first", parents=common)
    for name in FILTERS:
        checked = VALUES.get(name)
        hint = f"one of {', '.join(sorted(checked))} (several: comma-joined)" if checked else None
        listing.add_argument(
            f"--{name.replace('_', '-')}", dest=name,
            type=_one_of(name, checked) if checked else str, help=hint,
        )  # fmt: skip
    listing.add_argument("--limit", type=_limit, default=100, help="tasks per page (1-100)")
    listing.add_argument("--next-token", dest="next_token", help="the page after this token")
    listing.add_argument("--all", action="store_true", help="every page, not only the first")
    listing.add_argument("--json", action="store_true", help="print the API's JSON instead")


def command(storage: PluginStorage) -> Command:
    query = sql_query(storage)

    async def run(args: argparse.Namespace) -> int:
        if args.tasks_command == "show":
            return await show(query, args.task_id, as_json=args.json)
        params = {
            name: str(getattr(args, name))
            for name in (*FILTERS, "next_token")
            if getattr(args, name, None) is not None
        }
        params["limit"] = str(args.limit)
        return await listing(storage, params, every=args.all, as_json=args.json)

    return Command("tasks", "the task ledger: list and show tasks", configure, run)


async def show(query: Query, task_id: str, *, as_json: bool) -> int:
    task = await fetch_task(query, task_id)
    if task is None:
        print(f"taskhook: no task {task_id!r} in the ledger")
        return 1
    history = await query(
        "SELECT at, kind, name, delivery_id, detail FROM ledger_history "
        "WHERE task_id = :task_id ORDER BY seq",
        {"task_id": task_id},
    )
    if as_json:
        print(orjson.dumps(task, option=orjson.OPT_INDENT_2).decode())
        return 0
    for key in ("task_id", "status", "type", "project", "batch", "unique_id",
                "customer_review_status", "created_at", "updated_at", "completed_at"):  # fmt: skip
        print(f"{key:>24}  {task.get(key, '') or ''}")
    print()
    print(table(
        ("at", "kind", "event", "delivery_id", "detail"),
        [(iso(datetime.fromtimestamp(at).astimezone()), kind, name or "", delivery,
          _short(detail)) for at, kind, name, delivery, detail in history],
    ))  # fmt: skip
    return 0


def _short(detail: str, width: int = 60) -> str:
    return detail if len(detail) <= width else detail[: width - 1] + "…"


async def listing(
    storage: PluginStorage, params: dict[str, str], *, every: bool = False, as_json: bool = False
) -> int:
    """A page (or with `every`, all pages) of tasks, as a table or as the API's JSON."""
    query, totals = sql_query(storage), Totals(storage)
    docs: list[dict[str, Any]] = []
    try:
        while True:
            page = await list_page(query, totals, params)
            docs += page["docs"]
            if not (every and page["next_token"]):
                break
            params = params | {"next_token": page["next_token"]}
    except BadQuery as exc:
        print(f"taskhook: {exc}", file=sys.stderr)
        return 2
    if as_json:
        shown = page if not every else page | {"docs": docs, "offset": 0, "has_more": False}
        print(orjson.dumps(shown, option=orjson.OPT_INDENT_2).decode())
        return 0
    print(table(LIST_COLUMNS, [[d.get(c) for c in LIST_COLUMNS] for d in docs]))
    more = f"; next page: --next-token {page['next_token']}" if page["next_token"] else ""
    print(f"\n{len(docs)} of {page['total']} task(s){more}")
    return 0


def _limit(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        n = 0
    if not 1 <= n <= 100:
        raise argparse.ArgumentTypeError("must be an integer from 1 to 100")
    return n


def _one_of(name: str, allowed: frozenset[str]) -> Callable[[str], str]:
    """Refuse a misspelt value rather than list nothing."""

    def check(value: str) -> str:
        wrong = [v for v in value.split(",") if v.strip() and v.strip() not in allowed]
        if wrong:
            known = ", ".join(sorted(allowed))
            raise argparse.ArgumentTypeError(
                f"{', '.join(map(repr, wrong))} is not a {name}; one of {known}"
            )
        return value

    return check
