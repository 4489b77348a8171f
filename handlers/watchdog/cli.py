"""``taskhook expect``: register expected callbacks, list them, cancel one.

    taskhook expect --source refonte --task t1 --task t2 --within 2h [--note TEXT]
    taskhook expect --source refonte --unique-id u7 --by 2026-12-01T18:00:00Z
    taskhook expect --list [--overdue | --state S] [--source S] [--all] [--json]
    taskhook expect --cancel ID

A registration is checked exactly as ``POST /v1/tasks/expected`` checks it; ``--json``
prints what that route and ``GET /v1/tasks/expected`` answer.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Iterable, Sequence
from typing import Any

import orjson

from handlers.watchdog.api import BadQuery, listing
from handlers.watchdog.models import BadRegistration, parse
from handlers.watchdog.store import Expectation, Expectations
from handlers.watchdog.tables import STATES
from receiver.registry import Command

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
COLUMNS = ("id", "source", "task_id", "unique_id", "state", "deadline", "reconcile",
           "arrived_delivery_id")  # fmt: skip


def duration(value: str) -> float:
    """``90``, ``90s``, ``15m``, ``2h``, ``1d``, ``1h30m``: seconds."""
    parts = re.fullmatch(r"(?:(\d+(?:\.\d+)?)([smhd])?)+", value.strip().lower())
    pieces = re.findall(r"(\d+(?:\.\d+)?)([smhd]?)", value.strip().lower())
    if not parts or not pieces:
        raise argparse.ArgumentTypeError("a duration like 90s, 15m, 2h, 1d or 1h30m")
    return sum(float(n) * _UNITS[u or "s"] for n, u in pieces)


def configure(parser: argparse.ArgumentParser, common: list[argparse.ArgumentParser]) -> None:
    parser.add_argument("--task", dest="tasks", action="append", metavar="TASK_ID",
                        help="a task id whose callback is expected (repeatable)")  # fmt: skip
    parser.add_argument("--unique-id", dest="unique_ids", action="append", metavar="UNIQUE_ID",
                        help="a unique_id whose task's callback is due (repeatable)")  # fmt: skip
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--list", action="store_true", help="list expectations, by deadline")
    mode.add_argument("--cancel", metavar="ID", help="withdraw an expectation")
    parser.add_argument("--source", help="the source the callbacks come to")
    by = parser.add_mutually_exclusive_group()
    by.add_argument("--within", type=duration, metavar="DURATION", help="90s, 15m, 2h, 1d")
    by.add_argument("--by", metavar="ISO8601", help="a deadline with a time zone")
    parser.add_argument("--note", help="said with the alert when it is late")
    states = parser.add_mutually_exclusive_group()
    states.add_argument("--overdue", action="store_true", help="--list: only overdue ones")
    states.add_argument("--state", choices=STATES, help="--list: only this state")
    parser.add_argument("--all", action="store_true", help="--list: every page, not the first")


def command(store: Expectations, sources: Iterable[str], clock: Any) -> Command:
    known = tuple(sources)

    async def run(args: argparse.Namespace) -> int:
        as_json = bool(getattr(args, "json", False))
        naming = bool(args.tasks or args.unique_ids)
        if naming == bool(args.list or args.cancel):
            return _fail("name --task or --unique-id to expect (or --list, or --cancel ID)")
        if args.list:
            return await _list(store, args, as_json=as_json)
        if args.cancel:
            return await _cancel(store, args.cancel, as_json=as_json)
        if args.source is None or (args.within is None and args.by is None):
            return _fail("a registration needs --source and one of --within and --by")
        doc: dict[str, Any] = {
            "source": args.source,
            "tasks": [{"task_id": t} for t in args.tasks or []]
            + [{"unique_id": u} for u in args.unique_ids or []],
            "note": args.note,
        }
        doc |= {"within_seconds": args.within} if args.within is not None else {"deadline": args.by}
        now = clock()
        try:
            asked, deadline = parse(doc, sources=known, now=now)
        except BadRegistration as exc:
            return _fail(exc.reason)
        rows = await store.register(
            asked.source, asked.wants(), deadline=deadline, who="cli", note=asked.note, now=now
        )
        _show(rows, as_json=as_json, wrap="expected")
        return 0

    return Command("expect", "the watchdog: expect callbacks by a deadline", configure, run)


async def _list(store: Expectations, args: argparse.Namespace, *, as_json: bool) -> int:
    params = {"state": "overdue" if args.overdue else args.state, "source": args.source}
    docs: list[dict[str, Any]] = []
    try:
        while True:
            page = await listing(store, {k: v for k, v in params.items() if v})
            docs += page["docs"]
            if not (args.all and page["next_token"]):
                break
            params["next_token"] = page["next_token"]
    except BadQuery as exc:
        return _fail(str(exc))
    if as_json:
        print(orjson.dumps(page | {"docs": docs}, option=orjson.OPT_INDENT_2).decode())
        return 0
    print(render(docs))
    more = "; more: --all" if page["has_more"] and not args.all else ""
    print(f"\n{len(docs)} of {page['total']} expectation(s){more}")
    return 0


async def _cancel(store: Expectations, expectation_id: str, *, as_json: bool) -> int:
    found = await store.cancel(expectation_id)
    if found is None:
        return _fail(f"no expectation {expectation_id!r}")
    _show([found], as_json=as_json)
    if found.state == "arrived":
        return _fail("its callback arrived already; nothing to cancel")
    return 0


def _show(rows: Sequence[Expectation], *, as_json: bool, wrap: str | None = None) -> None:
    views = [r.view() for r in rows]
    if as_json:
        shown: Any = {wrap: views} if wrap else views[0]
        print(orjson.dumps(shown, option=orjson.OPT_INDENT_2).decode())
    else:
        print(render(views))


def render(docs: Sequence[dict[str, Any]]) -> str:
    cells = [[str(d.get(c) or "") for c in COLUMNS] for d in docs]
    widths = [max([len(c), *(len(r[i]) for r in cells)]) for i, c in enumerate(COLUMNS)]
    lines = [COLUMNS, *cells]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip()
                     for r in lines)  # fmt: skip


def _fail(reason: str) -> int:
    print(f"taskhook: {reason}", file=sys.stderr)
    return 2
