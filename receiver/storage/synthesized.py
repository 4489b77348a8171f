"""Deliveries stored from inside a plugin's own transaction (operator actions).

The plugin decides, stores and applies in one transaction, on either backend: these take the
caller's connection (sqlite3, or PostgreSQL's bridge) and use the SQLite dialect.
"""

from __future__ import annotations

from typing import Any

from receiver.records import DeliveryRecord, NewDelivery
from receiver.storage.queue import enqueue_in
from receiver.storage.rows import (
    COLUMNS,
    INSERT_COLUMNS,
    header_block,
    insert_params,
    row_to_record,
)

_MARKS = ",".join("?" * (INSERT_COLUMNS.count(",") + 1))
_INSERT = f"INSERT INTO deliveries ({INSERT_COLUMNS}) VALUES ({_MARKS}) RETURNING {COLUMNS}"
_UNAPPLIED = f"""
    SELECT {COLUMNS} FROM deliveries
    WHERE task_id = ? AND kind = ? AND status IN ('received', 'failed') AND events_derived = 0
    ORDER BY seq
"""


def store_in(conn: Any, delivery: NewDelivery) -> DeliveryRecord:
    """Store `delivery` in the caller's transaction (a plugin's `transact` op, either
    backend) and queue it in its task's lane."""
    rows = conn.execute(_INSERT, insert_params(delivery, header_block(delivery.headers)))
    record = row_to_record(rows.fetchall()[0])
    enqueue_in(conn, record.source, record.lane, record.seq, record.received_at)
    return record


def unapplied_in(conn: Any, kind: str, task_id: str) -> list[DeliveryRecord]:
    """The pending deliveries of `kind` about `task_id` not yet interpreted, oldest first.
    An action made now is applied after them, as in receipt order (and so as a rebuild will
    apply it)."""
    rows = conn.execute(_UNAPPLIED, (task_id, kind)).fetchall()
    return [row_to_record(row) for row in rows]
