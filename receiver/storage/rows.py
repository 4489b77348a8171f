"""Delivery rows as both backends read and write them (column lists and conversions).

The stored header block is capped (`header_block`): the HTTP front door already refuses
oversized headers, but a replay or a reconciliation poller hands over whatever it read, and a
duplicate receipt keeps its own headers; so no path stores more than the cap. Small header
values stay whole and the largest are cut to one common length (the bytes that matter, a
content type or a signature, are rarely the big ones); a marker header says how many bytes
went.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import Any

import orjson
from sqlalchemy import TextClause, text

from receiver.paging import encode_token
from receiver.records import (
    DeliveryPage,
    DeliveryRecord,
    DeliveryStatus,
    HandlerRun,
    NewDelivery,
    StoredEvent,
)
from receiver.storage.compiled import many, sqlite_sql

COLUMNS = (
    "id, seq, source, kind, received_at, headers, body, content_type, status, task_id, "
    "sender_delivery_id, key_index, key_fingerprint, attempts, next_attempt_at, last_error, "
    "last_traceback, duplicate_of, replayed, events_derived, processed_at, reconciled, operator, "
    "duplicate_count, last_duplicate_at"
)

INSERT_COLUMNS = (
    "id, source, kind, received_at, headers, body, content_type, dedup_key, "
    "sender_delivery_id, task_id, key_index, key_fingerprint, status, last_error, "
    "duplicate_of, replayed, updated_at, reconciled, next_attempt_at, operator"
)


def insert_params(
    d: NewDelivery, headers: str, *, duplicate_of: str | None = None
) -> tuple[Any, ...]:
    """Values of INSERT_COLUMNS for `d` (`headers`: its `header_block`)."""
    # A duplicate receipt keeps its own headers and time, not a second copy of the body.
    return (
        d.id, d.source, d.kind, d.received_at, headers,
        None if duplicate_of else d.body,
        d.content_type, d.dedup_key, d.sender_delivery_id, d.task_id, d.key_index,
        d.key_fingerprint,
        DeliveryStatus.DUPLICATE.value if duplicate_of else d.status.value,
        None if duplicate_of else d.error,
        duplicate_of, int(d.replayed), d.received_at, int(d.reconciled),
        # Due from its receipt, on the intake's clock: the queue is served in due order, so
        # retries that came due are not starved by a stream of fresh deliveries.
        d.received_at, d.operator,
    )  # fmt: skip


def row_to_record(row: Sequence[Any]) -> DeliveryRecord:
    return DeliveryRecord(
        id=row[0],
        seq=row[1],
        source=row[2],
        kind=row[3],
        received_at=row[4],
        headers=orjson.loads(row[5]),
        body=row[6],
        content_type=row[7],
        status=DeliveryStatus(row[8]),
        task_id=row[9],
        sender_delivery_id=row[10],
        key_index=row[11],
        key_fingerprint=row[12],
        attempts=row[13],
        next_attempt_at=row[14],
        last_error=row[15],
        last_traceback=row[16],
        duplicate_of=row[17],
        replayed=bool(row[18]),
        events_derived=bool(row[19]),
        processed_at=row[20],
        reconciled=bool(row[21]),
        operator=row[22],
        duplicate_count=row[23],
        last_duplicate_at=row[24],
    )


#: Bytes of header names and values one stored delivery keeps (the front door's default
#: `http.max_header_bytes`: what passed it is never cut).
MAX_HEADER_BYTES = 16 * 1024
TRUNCATED = "taskhook-headers-truncated"
_MARKER_ROOM = len(TRUNCATED) + 40  # the marker header itself: "<n> bytes dropped"


def header_block(headers: Mapping[str, str], cap: int = MAX_HEADER_BYTES) -> str:
    """`headers` as the JSON text stored, within `cap` bytes of names and values."""
    raw = orjson.dumps(headers)
    if len(raw) <= cap:  # JSON is never shorter than its names and values: the hot path
        return raw.decode()
    sizes = [(k, len(k.encode()), v.encode()) for k, v in headers.items()]
    total = sum(n + len(v) for _, n, v in sizes)
    if total <= cap:
        return raw.decode()
    return orjson.dumps(_capped(sizes, total, cap)).decode()


def _capped(sizes: list[tuple[str, int, bytes]], total: int, cap: int) -> dict[str, str]:
    budget = max(0, cap - _MARKER_ROOM)
    kept: list[tuple[str, bytes]] = []
    names = 0
    for name, size, value in sizes:  # names first: a header is dropped whole only if even
        if names + size > budget:  # its name does not fit (thousands of them, replayed)
            break
        kept.append((name, value))
        names += size
    room = budget - names
    level = _level(sorted(len(v) for _, v in kept), room)
    out = {name: value[:level].decode(errors="ignore") for name, value in kept}
    stored = names + sum(len(v.encode()) for v in out.values())
    out[TRUNCATED] = f"{total - stored} bytes dropped"
    return out


def _level(lengths: list[int], room: int) -> int:
    """The largest L with sum(min(length, L)) <= room (`lengths` ascending)."""
    left = len(lengths)
    for length in lengths:
        if length * left > room:
            return room // left
        room -= length
        left -= 1
    return lengths[-1] if lengths else 0


# Operator listings, in the SQLite dialect (the PostgreSQL backend translates them).
Query = tuple[TextClause, dict[str, Any]]


def list_queries(
    *,
    status: DeliveryStatus | None,
    source: str | None,
    task_id: str | None,
    limit: int,
    before_seq: int | None,
) -> tuple[Query, Query]:
    """The count of matching deliveries, and one page of them newest first (one extra row
    says whether another page follows)."""
    where: list[str] = []
    params: dict[str, Any] = {}
    for column, value in (("status", status), ("source", source), ("task_id", task_id)):
        if value is not None:
            where.append(f"{column} = :{column}")
            params[column] = str(value)
    filters = " AND ".join(where) or "1 = 1"
    page_where = filters + (" AND seq < :before_seq" if before_seq is not None else "")
    page_params = params | {"limit": limit + 1}
    if before_seq is not None:
        page_params["before_seq"] = before_seq
    return (
        (statement(f"SELECT count(*) FROM deliveries WHERE {filters}"), params),
        (statement(f"SELECT {COLUMNS} FROM deliveries WHERE {page_where} "
                   "ORDER BY seq DESC LIMIT :limit"), page_params),
    )  # fmt: skip


def page_of(rows: Sequence[Sequence[Any]], *, total: int, limit: int) -> DeliveryPage:
    items = [row_to_record(row) for row in rows[:limit]]
    more = len(rows) > limit
    return DeliveryPage(
        items=items, total=int(total), next_token=encode_token(items[-1].seq) if more else None
    )


def scan_query(
    *,
    after_seq: int,
    limit: int,
    status: DeliveryStatus | None,
    source: str | None,
    since: float | None,
    until: float | None,
) -> Query:
    """Deliveries in receipt order after `after_seq` (keyset streaming)."""
    where = ["seq > :after_seq"]
    params: dict[str, Any] = {"after_seq": after_seq, "limit": limit}
    for name, clause, value in (
        ("status", "status = :status", status.value if status is not None else None),
        ("source", "source = :source", source),
        ("since", "received_at >= :since", since),
        ("until", "received_at < :until", until),
    ):
        if value is not None:
            where.append(clause)
            params[name] = value
    sql = f"SELECT {COLUMNS} FROM deliveries WHERE {' AND '.join(where)} ORDER BY seq LIMIT :limit"
    return statement(sql), params


@lru_cache(maxsize=256)
def statement(sql: str) -> TextClause:
    """One statement object per query shape: its compiled forms are cached with it."""
    return text(sql)


# A delivery's events and handler runs: one statement of each for both backends, compiled
# per dialect (`receiver.storage.compiled`).
INSERT_EVENTS = text(
    "INSERT INTO events (event_id, name, task_id, delivery_id, payload) "
    "VALUES (:event_id, :name, :task_id, :delivery_id, :payload) "
    "ON CONFLICT (event_id) DO NOTHING"
)
LINK_EVENTS = text(
    "INSERT INTO delivery_events (delivery_id, position, event_id) "
    "VALUES (:delivery_id, :position, :event_id) ON CONFLICT DO NOTHING"
)
MARK_DERIVED = text("UPDATE deliveries SET events_derived = 1 WHERE id = :id")
LOAD_EVENTS = text(
    "SELECT e.event_id, e.name, e.task_id, e.delivery_id, e.payload "
    "FROM delivery_events AS de JOIN events AS e ON e.event_id = de.event_id "
    "WHERE de.delivery_id = :delivery_id ORDER BY de.position"
)
# The pending deliveries of a kind about a task not yet interpreted, oldest first: an
# operator's action made now is applied after them, as a rebuild will apply it.
UNAPPLIED = text(
    f"SELECT {COLUMNS} FROM deliveries WHERE task_id = :task_id AND kind = :kind "
    "AND status IN ('received', 'failed') AND events_derived = 0 ORDER BY seq"
)
UPSERT_RUNS = text("""
    INSERT INTO handler_runs (event_id, handler, delivery_id, status, attempts, last_error,
                              traceback, updated_at)
    VALUES (:event_id, :handler, :delivery_id, :status, 1, :error, :traceback, :now)
    ON CONFLICT (event_id, handler) DO UPDATE SET
        status = excluded.status, delivery_id = excluded.delivery_id,
        attempts = handler_runs.attempts + 1, last_error = excluded.last_error,
        traceback = excluded.traceback, updated_at = excluded.updated_at
    WHERE handler_runs.status <> 'ok'
""")


def event_rows(
    delivery_id: str, events: Sequence[StoredEvent]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Parameters of INSERT_EVENTS and of LINK_EVENTS for a delivery's events."""
    return (
        [{"event_id": e.event_id, "name": e.name, "task_id": e.task_id,
          "delivery_id": e.delivery_id, "payload": e.payload_json} for e in events],
        [{"delivery_id": delivery_id, "position": i, "event_id": e.event_id}
         for i, e in enumerate(events)],
    )  # fmt: skip


def batch_event_rows(
    batch: Mapping[str, Sequence[StoredEvent]],
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """`event_rows` of several deliveries, concatenated."""
    inserted: list[dict[str, Any]] = []
    linked: list[dict[str, Any]] = []
    for delivery_id, events in batch.items():
        rows, links = event_rows(delivery_id, events)
        inserted += rows
        linked += links
    return inserted, linked


def run_rows(runs: Sequence[HandlerRun], now: float) -> list[dict[str, Any]]:
    """Parameters of UPSERT_RUNS."""
    return [
        {"event_id": r.event_id, "handler": r.handler, "delivery_id": r.delivery_id,
         "status": "ok" if r.ok else "failed", "error": r.error, "traceback": r.traceback,
         "now": now}
        for r in runs
    ]  # fmt: skip


def save_events_in(conn: Any, delivery_id: str, events: Sequence[StoredEvent]) -> None:
    """Persist a delivery's events inside the caller's SQLite transaction."""
    save_many_in(conn, {delivery_id: events})


def save_many_in(conn: Any, batch: Mapping[str, Sequence[StoredEvent]]) -> None:
    """Persist deliveries' events and mark them derived: three statements for the batch."""
    inserted, linked = batch_event_rows(batch)
    insert, link = sqlite_sql(INSERT_EVENTS), sqlite_sql(LINK_EVENTS)
    conn.executemany(insert.sql, many(insert, inserted))
    conn.executemany(link.sql, many(link, linked))
    conn.executemany(sqlite_sql(MARK_DERIVED).sql, [(i,) for i in batch])
