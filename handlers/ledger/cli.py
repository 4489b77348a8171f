"""``taskhook tasks list [filters]`` and ``taskhook tasks show ID``: the ledger on a terminal."""

from __future__ import annotations

import argparse
from datetime import datetime

import orjson

from handlers.ledger.api import Query, fetch_task, sql_query
from handlers.ledger.query import COLUMN_FILTERS, BadQuery, build_query, count_statement
from handlers.ledger.store import iso
from receiver.plugin_store import PluginStorage
from receiver.registry import Command
from receiver.tables import table

LIST_COLUMNS = ("task_id", "status", "type", "project", "batch", "unique_id",
                "customer_review_status", "created_at", "updated_at")  # fmt: skip


def configure(parser: argparse.ArgumentParser, common: list[argparse.ArgumentParser]) -> None:
    sub = parser.add_subparsers(dest="tasks_command", required=True)
    show = sub.add_parser("show", help="one task as last applied, and its history", parents=common)
    show.add_argument("task_id")
    show.add_argument("--json", action="store_true", help="print the API's JSON instead")
    listing = sub.add_parser("list", help="tasks, newest created first", parents=common)
    for name in (*COLUMN_FILTERS, "tag", "start_time", "end_time", "updated_after"):
        listing.add_argument(f"--{name.replace('_', '-')}", dest=name)
    listing.add_argument("--limit", type=int, default=100)


def command(storage: PluginStorage) -> Command:
    query = sql_query(storage)

    async def run(args: argparse.Namespace) -> int:
        if args.tasks_command == "show":
            return await show(query, args.task_id, as_json=args.json)
        params = {
            name: str(getattr(args, name))
            for name in (*COLUMN_FILTERS, "tag", "start_time", "end_time", "updated_after")
            if getattr(args, name, None) is not None
        }
        params["limit"] = str(args.limit)
        return await listing(storage, params)

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


async def listing(storage: PluginStorage, params: dict[str, str]) -> int:
    query = sql_query(storage)
    try:
        q = build_query(params)
    except BadQuery as exc:
        print(f"taskhook: {exc}")
        return 2
    rows = await query(
        f"SELECT t.task_id, t.status, t.type, t.project, t.batch, t.unique_id, "
        f"t.customer_review_status, t.created_at, t.updated_at FROM {q.source} "
        f"WHERE {q.where} {q.order} LIMIT :limit",
        q.args | {"limit": q.limit},
    )
    total = (await storage.query(count_statement(q), q.args))[0][0]
    print(table(LIST_COLUMNS, rows))
    print(f"\n{len(rows)} of {total} task(s)")
    return 0
