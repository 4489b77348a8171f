"""``taskhook deliveries list|show|retry`` and ``taskhook export``: the operator's inbox.

Both read the configured database directly. `retry` requeues through the same storage call
as ``POST /v1/deliveries/{id}/retry``; a running receiver's dispatcher picks the delivery up
on its next poll.
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import datetime
from typing import TYPE_CHECKING, Any

import orjson

from receiver.cli.commands import help_of
from receiver.cli.errors import UsageError, int_between
from receiver.cli.summary import Report, Value, emit_for, per_second, seconds
from receiver.records import DeliveryRecord, DeliveryStatus
from receiver.tables import table

if TYPE_CHECKING:  # storage and the API (SQLAlchemy, Starlette) load when a command runs
    from receiver.config import Settings
    from receiver.storage import Storage

LIST_COLUMNS = ("delivery_id", "status", "source", "task_id", "received_at", "attempts",
                "last_error")  # fmt: skip


def add_deliveries(sub: Any, common: argparse.ArgumentParser) -> None:
    deliveries = sub.add_parser("deliveries", help=help_of("deliveries"))
    dsub = deliveries.add_subparsers(dest="deliveries_command", required=True)
    listing = dsub.add_parser("list", help="newest first", parents=[common])
    listing.add_argument("--status", choices=[s.value for s in DeliveryStatus])
    listing.add_argument("--source")
    listing.add_argument("--task-id")
    listing.add_argument("--limit", type=int_between(1), default=50, help="at least 1")
    show = dsub.add_parser("show", help="one delivery with headers and body", parents=[common])
    show.add_argument("delivery_id")
    retry = dsub.add_parser("retry", help="requeue failed, dead or quarantined deliveries",
                            parents=[common])  # fmt: skip
    retry.add_argument("delivery_id", nargs="?")
    retry.add_argument("--all-dead", action="store_true")


def add_export(sub: Any, common: argparse.ArgumentParser) -> None:
    export = sub.add_parser("export", help=help_of("export"), parents=[common])
    export.add_argument("--since", help="ISO 8601: received at or after")
    export.add_argument("--until", help="ISO 8601: received before")
    export.add_argument("--status", choices=[s.value for s in DeliveryStatus])
    export.add_argument("--source")


def _timestamp(value: str | None, flag: str) -> float | None:
    if value is None:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        raise UsageError(f"{flag} must be an ISO 8601 date or datetime, not {value!r}") from None


async def run_deliveries(settings: Settings, args: argparse.Namespace) -> int:
    from receiver.api import delivery_detail, iso
    from receiver.storage import open_storage

    storage = open_storage(settings.database.url)
    await storage.open()
    try:
        if args.deliveries_command == "list":
            status = DeliveryStatus(args.status) if args.status else None
            page = await storage.list_deliveries(
                status=status, source=args.source, task_id=args.task_id, limit=args.limit
            )
            if getattr(args, "json", False):  # one object per line, full last_error: for scripts
                for d in page.items:
                    print(orjson.dumps(dict(zip(LIST_COLUMNS, (
                        d.id, d.status.value, d.source, d.task_id, iso(d.received_at),
                        d.attempts, d.last_error), strict=True))).decode())  # fmt: skip
                return 0
            rows = [
                (d.id, d.status.value, d.source, d.task_id, iso(d.received_at), d.attempts,
                 (d.last_error or "")[:60])
                for d in page.items
            ]  # fmt: skip
            print(table(LIST_COLUMNS, rows))
            if not getattr(args, "quiet", False):
                print(f"\n{len(rows)} of {page.total} delivery(ies)")
            return 0
        if args.deliveries_command == "show":
            found = await storage.get_delivery(args.delivery_id)
            if found is None:
                print(f"taskhook: no delivery {args.delivery_id!r}", file=sys.stderr)
                return 1
            print(orjson.dumps(delivery_detail(found), option=orjson.OPT_INDENT_2).decode())
            return 0
        return await _retry(storage, args)
    finally:
        await storage.close()


async def _retry(storage: Storage, args: argparse.Namespace) -> int:
    if args.all_dead == bool(args.delivery_id):
        print("taskhook: give one delivery id or --all-dead", file=sys.stderr)
        return 2
    ids = await storage.dead_ids() if args.all_dead else [args.delivery_id]
    failed = 0
    for delivery_id in ids:
        done = await storage.requeue(delivery_id, now=time.time())
        if done:
            print(f"requeued {delivery_id}")
        else:
            failed += 1
            why = "no such delivery" if done is None else "not failed, dead or quarantined"
            print(f"taskhook: {delivery_id}: {why}", file=sys.stderr)
    if args.all_dead:
        print(f"{len(ids) - failed} dead delivery(ies) requeued")
    return 1 if failed else 0


def replay_line(d: DeliveryRecord) -> bytes:
    """One line of the replay format (shared/CONTRACT.md, "Recorded deliveries")."""
    from receiver.api import body_fields, iso

    line: dict[str, Any] = {
        "source": d.source, "received_at": iso(d.received_at), "headers": d.headers,
    }  # fmt: skip
    if d.operator is not None:
        line["operator"] = d.operator  # an operator's action, replayed locally as one
    return orjson.dumps(line | body_fields(d.body))


async def run_export(settings: Settings, args: argparse.Namespace) -> int:
    from receiver.progress import board
    from receiver.storage import open_storage
    from receiver.storage.base import stream_deliveries

    since, until = _timestamp(args.since, "--since"), _timestamp(args.until, "--until")
    storage = open_storage(settings.database.url)
    await storage.open()
    out = sys.stdout.buffer
    count = 0
    began = time.monotonic()
    try:
        with board() as progress:  # on stderr: stdout is the export itself
            read = progress.phase("read", (await storage.list_deliveries(limit=1)).total)
            async for record in stream_deliveries(
                storage,
                status=DeliveryStatus(args.status) if args.status else None,
                source=args.source,
                since=since,
                until=until,
            ):
                read.advance()
                if record.body is None:  # a duplicate receipt: its original carries the body
                    continue
                out.write(replay_line(record) + b"\n")
                count += 1
            progress.finish(read)
    finally:
        out.flush()
        await storage.close()
    emit_for(_export_report(read.done, count, time.monotonic() - began), args, sys.stderr)
    return 0


def _export_report(read: int, exported: int, elapsed: float) -> Report:
    rows: list[tuple[str, Value]] = [
        ("read", read), ("exported", exported), ("without a body", read - exported),
        ("elapsed", seconds(elapsed)), ("rate", per_second(read, elapsed)),
    ]  # fmt: skip
    data = {"read": read, "exported": exported, "seconds": round(elapsed, 3)}
    return Report(f"exported {exported} delivery(ies)", rows, (), data)
