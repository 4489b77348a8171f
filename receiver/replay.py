"""``taskhook replay``: recorded deliveries through the real pipeline, or to a running receiver.

Recordings are JSON Lines in the replay format (what ``taskhook export`` writes) or bare
``*.json`` bodies with ``--source`` (files, or folders searched recursively). In-process, each
delivery goes through the intake's own `accept` (dedup, durable store), marked as replayed, and
the dispatcher then runs every handler into the configured ledger. A recorded line is verified
as at receipt, without the freshness check; a bare body has no recorded headers to verify (it
is the operator's own file), so it is stored unverified and says so in a header of its own,
`UNVERIFIED_HEADER`. With ``--to URL`` each body is re-signed for its source and POSTed to that
receiver. Nothing to replay (no such path, nothing under a folder, an empty recording) raises
`ReplayError` before anything is sent.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import time
from collections import Counter
from collections.abc import Coroutine, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson

from receiver import verify
from receiver.actions import parse_action
from receiver.app import TaskhookApp
from receiver.bodies import media_type
from receiver.config import Settings
from receiver.errors import PayloadError, ReplayError, VerificationError
from receiver.progress import Board, drain_showing
from receiver.records import new_id
from receiver.source_runtime import UNVERIFIED, SourceRuntime

# On every bare body replayed: visible in `deliveries show` and the deliveries API.
UNVERIFIED_HEADER = "x-taskhook-unverified"
RECORDING_SUFFIXES = (".jsonl", ".ndjson")


@dataclass(frozen=True, slots=True)
class Recorded:
    origin: str  # file:line, for messages
    source: str | None
    headers: dict[str, str]
    body: bytes
    received_at: float | None = None
    operator: str | None = None  # an exported operator action: the key name that made it
    bare: bool = False  # the operator's own body file: no recorded headers, nothing to verify
    lane: str | None = None  # sent one after the other with the same lane (`replay_remote`)


@dataclass(frozen=True, slots=True)
class Unreadable:
    origin: str
    reason: str


@dataclass
class Summary:
    accepted: int = 0
    duplicate: int = 0
    rejected: Counter[str] = field(default_factory=Counter)

    @property
    def total(self) -> int:
        return self.accepted + self.duplicate + sum(self.rejected.values())

    def render(self, *, verb: str = "accepted") -> str:
        lines = [f"{self.total} deliveries: {self.accepted} {verb}, {self.duplicate} duplicate, "
                 f"{sum(self.rejected.values())} rejected"]  # fmt: skip
        lines += [f"  rejected {n}x: {reason}" for reason, n in self.rejected.most_common()]
        return "\n".join(lines)


def _line(origin: str, raw: bytes, default_source: str | None) -> Recorded | Unreadable:
    try:
        doc = orjson.loads(raw)
        if not isinstance(doc, dict):
            raise ValueError("not a JSON object")
        if "body_b64" in doc:
            body = base64.b64decode(doc["body_b64"], validate=True)
        else:
            body = str(doc["body"]).encode()
        headers = {str(k).lower(): str(v) for k, v in (doc.get("headers") or {}).items()}
        received = doc.get("received_at")
        at = (
            datetime.fromisoformat(received.replace("Z", "+00:00")).timestamp()
            if received
            else None
        )
    except (ValueError, KeyError, TypeError) as exc:
        return Unreadable(origin, f"unreadable recording line: {exc}")
    operator = doc.get("operator")
    return Recorded(
        origin, doc.get("source") or default_source, headers, body, at,
        str(operator) if operator else None,
    )  # fmt: skip


def read_recordings(paths: Sequence[str], *, source: str | None) -> Iterator[Recorded | Unreadable]:
    """Every recorded delivery under `paths`, in file order, one at a time.

    The paths are checked first, so `ReplayError` is raised here, before anything is read
    or sent: a path that does not exist, a folder with no ``*.json`` / ``*.jsonl`` file under
    it, or a path whose recordings hold no delivery at all.
    """
    files: list[tuple[Path, Path]] = []
    for name in paths:
        files += [(Path(name), file) for file in _files(Path(name))]
    return _records(files, source)


def _files(path: Path) -> list[Path]:
    if path.is_dir():
        found = sorted(
            p for p in path.rglob("*")
            if p.is_file() and (p.suffix == ".json" or p.suffix in RECORDING_SUFFIXES)
        )  # fmt: skip
        if not found:
            raise ReplayError(f"nothing to replay: no *.json bodies or *.jsonl recordings "
                              f"under {path}")  # fmt: skip
    elif path.is_file():
        found = [path]
    else:
        raise ReplayError(f"nothing to replay: no such file or folder {path}")
    if not any(p.suffix == ".json" or _has_lines(p) for p in found):
        raise ReplayError(f"nothing to replay: {path} is an empty recording")
    return found


def count_recordings(paths: Sequence[str]) -> int:
    """About how many deliveries `paths` hold (a progress total): bare bodies, and lines of
    recordings, blank ones too (counting newlines is much faster than reading lines)."""
    count = 0
    for file in (found for name in paths for found in _files(Path(name))):
        if file.suffix == ".json":
            count += 1
            continue
        with file.open("rb") as handle:
            chunks = iter(functools.partial(handle.read, 1 << 20), b"")
            count += sum(chunk.count(b"\n") for chunk in chunks)
    return count


def _has_lines(file: Path) -> bool:
    with file.open("rb") as handle:
        return any(raw.strip() for raw in handle)


def _records(files: list[tuple[Path, Path]], source: str | None) -> Iterator[Recorded | Unreadable]:
    for given, file in files:
        if file.suffix == ".json":
            if source is None:
                yield Unreadable(str(file), "a bare *.json body needs --source NAME")
                continue
            name = file.relative_to(given) if file != given else Path(file.name)
            headers = {
                "content-type": "application/json",
                UNVERIFIED_HEADER: f"bare body replayed from {name}",
            }
            yield Recorded(str(file), source, headers, file.read_bytes(), bare=True)
        else:
            with file.open("rb") as handle:
                for number, raw in enumerate(handle, start=1):
                    if raw.strip():
                        yield _line(f"{file}:{number}", raw, source)


def _reason(status: int, answer: bytes) -> str:
    try:
        doc = orjson.loads(answer)
        return f"{status} {doc.get('error', '')}: {doc.get('reason', '')}".rstrip(": ")
    except orjson.JSONDecodeError:
        return f"{status}"


async def replay_local(
    app: TaskhookApp,
    records: Iterator[Recorded | Unreadable],
    *,
    dry_run: bool = False,
    window: int = 512,
    drain: bool = True,
    total: int | None = None,
    shown: Board | None = None,
) -> Summary:
    """Feed `records` through the intake, then let the dispatcher finish them.

    Up to `window` deliveries are in flight at once so they share group commits; each is
    verified and parsed synchronously up to its store, so receipt order is file order. Where
    concurrent stores may commit out of order (PostgreSQL's pool), deliveries of different
    tasks are stored at once and one task's one after the other: a task's deliveries keep
    their order. The phases ("stored", "applied") show on `shown` (a board of its own if
    None), which keeps how far they got when the replay is interrupted.
    """
    ordered = app.storage.ordered_stores
    if not ordered:
        window = min(window, 64)  # the pool's connections, and a few waiting
    last_of_task: dict[tuple[str, str], asyncio.Future[tuple[int, bytes]]] = {}
    summary = Summary()
    board = Board() if shown is None else shown
    stored = board.phase("stored", total)
    pending: list[asyncio.Task[tuple[int, bytes]]] = []

    async def settle() -> None:
        for task in pending:
            _count(summary, *(await task))
        stored.update(summary.total)
        pending.clear()

    try:
        for record in records:
            if isinstance(record, Unreadable):
                summary.rejected[record.reason] += 1
                continue
            source = app.sources.get(record.source or "")
            if source is None:
                summary.rejected[f"unknown source {record.source!r}"] += 1
            elif dry_run and record.operator is not None:
                summary.accepted += 1
            elif dry_run:
                try:
                    if not record.bare:
                        source.check(record.body, record.headers, app.clock(), recorded=True)
                    source.adapter.parse(record.body, record.headers.get("content-type", ""))
                    summary.accepted += 1
                except (VerificationError, PayloadError) as exc:
                    summary.rejected[str(exc)] += 1
                stored.update(summary.total)
            else:
                store = app.intake.accept(
                    source, record.body, record.headers, received_at=record.received_at,
                    replayed=True, operator=record.operator,
                    verified=UNVERIFIED if record.bare else None,
                )  # fmt: skip
                if not ordered:
                    key = (source.name, _task_of(source, record))
                    store = _after(last_of_task.get(key), store)
                future = asyncio.ensure_future(store)
                if not ordered:
                    last_of_task[key] = future
                pending.append(future)
                if len(pending) >= window:
                    await settle()
                    last_of_task.clear()
        await settle()
        stored.update(summary.total, total=summary.total)  # the count was of lines
        board.finish(stored)
        if drain and not dry_run:
            waiting = functools.partial(app.dispatcher.drain, within=3600, wait_for_retries=False)
            await drain_showing(board, app.storage.backlog, waiting)
    finally:
        # Interrupted: the stores in flight end here, before the caller closes storage.
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        if shown is None:
            board.close()
    return summary


def _task_of(source: SourceRuntime, record: Recorded) -> str:
    """The task a recorded delivery is about (an operator's action: the task it acted on;
    its own id when unreadable: alone)."""
    try:
        if record.operator is not None:
            return parse_action(record.body).task_id
        parsed = source.adapter.parse(record.body, record.headers.get("content-type", ""))
    except PayloadError:
        return f"\0{id(record)}"
    return parsed.task_id or f"\0{id(record)}"


async def _after(
    earlier: asyncio.Future[tuple[int, bytes]] | None,
    store: Coroutine[Any, Any, tuple[int, bytes]],
) -> tuple[int, bytes]:
    if earlier is not None:
        with contextlib.suppress(Exception):  # its own failure is counted where it happened
            await earlier
    return await store


async def replay_remote(
    settings: Settings,
    records: Iterator[Recorded | Unreadable],
    *,
    url: str,
    rate: float = 0.0,
    concurrency: int = 1,
    transport: Any = None,
    total: int | None = None,
    shown: Board | None = None,
) -> Summary:
    """POST each recorded body to `url`, re-signed with its source's first secret; at most
    `rate` deliveries a second when it is above zero, and up to `concurrency` requests in
    flight. Records of one `lane` (a simulated item) are sent one after the other, in order.
    `transport`: an httpx transport instead of the network (an in-process app, in tests).
    The "sent" phase (of `total`, when known) shows on `shown`, or on a board of its own."""
    import httpx

    summary = Summary()
    board = Board() if shown is None else shown
    sent_phase = board.phase("sent", total)
    width = max(1, concurrency)
    in_flight: set[asyncio.Task[None]] = set()
    last_of_lane: dict[str, asyncio.Task[None]] = {}
    limits = httpx.Limits(max_connections=width, max_keepalive_connections=width)
    async with httpx.AsyncClient(
        base_url=url.rstrip("/"), timeout=30, limits=limits, transport=transport
    ) as client:

        async def post(
            request: tuple[str, bytes, dict[str, str]], after: asyncio.Task[None] | None
        ) -> None:
            if after is not None:
                with contextlib.suppress(Exception):  # counted where it happened
                    await after
            path, body, headers = request
            try:
                response = await client.post(path, content=body, headers=headers)
            except httpx.HTTPError as exc:
                summary.rejected[f"request failed: {exc!r}"] += 1
            else:
                _count(summary, response.status_code, response.content)
            sent_phase.update(summary.total)

        started = time.monotonic()
        for sent, record in enumerate(records):
            if rate > 0:
                ahead = sent / rate - (time.monotonic() - started)
                if ahead > 0:
                    await asyncio.sleep(ahead)
            request = _request(settings, record)
            if isinstance(request, str):
                summary.rejected[request] += 1
                sent_phase.update(summary.total)
                continue
            while len(in_flight) >= width:
                await asyncio.wait(in_flight, return_when=asyncio.FIRST_COMPLETED)
            lane = record.lane if isinstance(record, Recorded) else None
            task = asyncio.ensure_future(post(request, last_of_lane.get(lane or "")))
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)
            if lane is not None:
                last_of_lane[lane] = task
                task.add_done_callback(functools.partial(_forget, last_of_lane, lane))
        if in_flight:
            await asyncio.gather(*in_flight)
    board.finish(sent_phase)
    if shown is None:
        board.close()
    return summary


def _forget(lanes: dict[str, asyncio.Task[None]], lane: str, done: asyncio.Task[None]) -> None:
    if lanes.get(lane) is done:
        del lanes[lane]


def _request(
    settings: Settings, record: Recorded | Unreadable
) -> tuple[str, bytes, dict[str, str]] | str:
    """The path, body and signed headers to POST for `record`, or why it cannot be sent."""
    if isinstance(record, Unreadable):
        return record.reason
    if record.operator is not None:
        # No receiver accepts an operator's action as a callback, by design.
        return "operator actions are replayed locally only (without --to)"
    cfg = settings.sources.get(record.source or "")
    if cfg is None:
        return f"unknown source {record.source!r}"
    headers = {"content-type": record.headers.get("content-type", "application/json")}
    if media_type(headers["content-type"]) == "":
        headers["content-type"] = "application/json"
    if cfg.scheme != "none":
        msg_id = record.headers.get("webhook-id") or new_id("msg_")
        headers |= verify.sign(
            cfg.scheme, record.body, cfg.secret_values()[0],
            header=cfg.header_name, msg_id=msg_id, timestamp=int(time.time()),
        )  # fmt: skip
    return f"/callbacks/{record.source}", record.body, headers


def _count(summary: Summary, status: int, answer: bytes) -> None:
    if status != 200:
        summary.rejected[_reason(status, answer)] += 1
        return
    doc: dict[str, Any] = orjson.loads(answer)
    if doc.get("status") == "duplicate":
        summary.duplicate += 1
    else:
        summary.accepted += 1
