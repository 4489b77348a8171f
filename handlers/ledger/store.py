"""The ledger's SQLite tables and the one transaction that applies a delivery.

`apply_delivery` runs inside the app's group-committed write transaction: it loads the task
and the holder of its unique_id, asks `rules.apply` what is true now, writes the task, the
binding, the history and the delivery's events together. Either all of it commits or none.
"""

from __future__ import annotations

import sqlite3
import time
from datetime import UTC, datetime
from typing import Any

import orjson

from handlers.ledger.rules import Outcome, TaskState, Version, apply
from receiver.bodies import decode
from receiver.events import Event, event_id, persisted
from receiver.records import DeliveryRecord
from receiver.sources.refonte import parse_callback
from receiver.storage.rows import LOAD_EVENTS, save_events_in

SCHEMA = """
CREATE TABLE IF NOT EXISTS ledger_tasks (
    task_id                TEXT PRIMARY KEY,
    source                 TEXT NOT NULL,
    status                 TEXT NOT NULL,
    type                   TEXT,
    project                TEXT,
    batch                  TEXT,
    unique_id              TEXT,
    claimed_unique_id      TEXT,
    customer_review_status TEXT,
    created_at             TEXT NOT NULL,
    updated_at             TEXT,
    task                   TEXT NOT NULL,
    response               TEXT,
    version                TEXT NOT NULL,
    audits                 TEXT NOT NULL,
    last_delivery_id       TEXT,
    ledger_updated_at      REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS ledger_tasks_created ON ledger_tasks(created_at, task_id);
CREATE INDEX IF NOT EXISTS ledger_tasks_status ON ledger_tasks(status, created_at, task_id);
CREATE INDEX IF NOT EXISTS ledger_tasks_project ON ledger_tasks(project, created_at, task_id);
CREATE INDEX IF NOT EXISTS ledger_tasks_batch ON ledger_tasks(batch, created_at, task_id);
CREATE INDEX IF NOT EXISTS ledger_tasks_type ON ledger_tasks(type, created_at, task_id);
CREATE INDEX IF NOT EXISTS ledger_tasks_unique ON ledger_tasks(unique_id, created_at, task_id);
CREATE INDEX IF NOT EXISTS ledger_tasks_review
    ON ledger_tasks(customer_review_status, created_at, task_id);
CREATE INDEX IF NOT EXISTS ledger_tasks_updated ON ledger_tasks(updated_at);
CREATE INDEX IF NOT EXISTS ledger_tasks_claims ON ledger_tasks(claimed_unique_id)
    WHERE claimed_unique_id IS NOT NULL;
CREATE TABLE IF NOT EXISTS ledger_task_tags (
    tag        TEXT NOT NULL,
    created_at TEXT NOT NULL,
    task_id    TEXT NOT NULL,
    PRIMARY KEY (tag, created_at, task_id)
);
CREATE TABLE IF NOT EXISTS ledger_unique_ids (
    unique_id TEXT PRIMARY KEY,
    task_id   TEXT NOT NULL,
    bound_at  REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS ledger_history (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    task_id     TEXT NOT NULL,
    delivery_id TEXT,
    kind        TEXT NOT NULL,
    name        TEXT,
    event_id    TEXT,
    detail      TEXT NOT NULL,
    at          REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS ledger_history_task ON ledger_history(task_id, seq);
-- Bumped by every applied delivery: readers cache list totals against it.
CREATE TABLE IF NOT EXISTS ledger_meta (
    id         INTEGER PRIMARY KEY CHECK (id = 1),
    generation INTEGER NOT NULL
);
INSERT OR IGNORE INTO ledger_meta (id, generation) VALUES (1, 0)
"""


def reset(conn: sqlite3.Connection) -> None:
    """Empty the ledger (for a rebuild from the stored deliveries)."""
    for table in ("ledger_tasks", "ledger_task_tags", "ledger_unique_ids", "ledger_history"):
        conn.execute(f"DELETE FROM {table}")
    conn.execute("UPDATE ledger_meta SET generation = generation + 1")


def create_schema(conn: sqlite3.Connection) -> None:
    for statement in SCHEMA.split(";"):
        if statement.strip():
            conn.execute(statement)


def iso(value: datetime) -> str:
    """UTC with fixed precision, so text order is time order (keyset paging relies on it)."""
    aware = value if value.tzinfo else value.replace(tzinfo=UTC)
    return aware.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _dt(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def _version_json(v: Version) -> bytes:
    return orjson.dumps(
        {
            "updated_at": v.updated_at.isoformat() if v.updated_at else None,
            "audit_count": v.audit_count,
            "newest_audit": v.newest_audit.isoformat() if v.newest_audit else None,
            "completed_at": v.completed_at.isoformat() if v.completed_at else None,
            "status": v.status,
        }
    )


def _version(raw: str) -> Version:
    d = orjson.loads(raw)
    return Version(
        _dt(d["updated_at"]),
        d["audit_count"],
        _dt(d["newest_audit"]),
        _dt(d["completed_at"]),
        d["status"],
    )


def load_state(conn: sqlite3.Connection, task_id: str) -> TaskState | None:
    row = conn.execute(
        "SELECT status, version, task, response, audits, unique_id, customer_review_status "
        "FROM ledger_tasks WHERE task_id = ?",
        (task_id,),
    ).fetchone()
    if row is None:
        return None
    status, version, task, response, audits, unique_id, review = row
    return TaskState(
        task_id=task_id,
        status=status,
        version=_version(version),
        task=orjson.loads(task),
        response=orjson.loads(response) if response is not None else None,
        audits=frozenset(orjson.loads(audits)),
        unique_id=unique_id,
        customer_review_status=review,
    )


def history(
    conn: sqlite3.Connection,
    task_id: str,
    delivery_id: str | None,
    kind: str,
    detail: dict[str, Any],
    *,
    name: str | None = None,
    event: str | None = None,
) -> None:
    conn.execute(
        "INSERT INTO ledger_history (task_id, delivery_id, kind, name, event_id, detail, at) "
        "VALUES (?,?,?,?,?,?,?)",
        (task_id, delivery_id, kind, name, event, orjson.dumps(detail).decode(), time.time()),
    )


def _save_task(
    conn: sqlite3.Connection,
    source: str,
    delivery: DeliveryRecord,
    outcome: Outcome,
    claimed: str | None,
    prior_tags: list[str],
) -> None:
    state = outcome.state
    task = state.task
    created = _dt(task.get("created_at")) or datetime.fromtimestamp(delivery.received_at, UTC)
    created_at = iso(created)
    updated = _dt(task.get("updated_at"))
    stored_created = conn.execute(
        """
        INSERT INTO ledger_tasks (task_id, source, status, type, project, batch, unique_id,
            claimed_unique_id, customer_review_status, created_at, updated_at, task, response,
            version, audits, last_delivery_id, ledger_updated_at)
        VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)
        ON CONFLICT (task_id) DO UPDATE SET
            status = excluded.status, type = excluded.type, project = excluded.project,
            batch = excluded.batch, unique_id = excluded.unique_id,
            claimed_unique_id = excluded.claimed_unique_id,
            customer_review_status = excluded.customer_review_status,
            updated_at = excluded.updated_at, task = excluded.task,
            response = excluded.response, version = excluded.version,
            audits = excluded.audits, last_delivery_id = excluded.last_delivery_id,
            ledger_updated_at = excluded.ledger_updated_at
        RETURNING created_at
        """,
        (
            state.task_id, source, state.status, task.get("type"), task.get("project"),
            task.get("batch"), state.unique_id, claimed, state.customer_review_status,
            created_at, iso(updated) if updated else None, orjson.dumps(task).decode(),
            orjson.dumps(state.response).decode(), _version_json(state.version).decode(),
            orjson.dumps(sorted(state.audits)).decode(), delivery.id, time.time(),
        ),
    ).fetchone()[0]  # fmt: skip
    tags = task.get("tags") or []
    if tags == prior_tags:
        return  # the tag index already says this (most snapshots leave tags alone)
    conn.execute("DELETE FROM ledger_task_tags WHERE task_id = ?", (state.task_id,))
    conn.executemany(
        "INSERT OR IGNORE INTO ledger_task_tags (tag, created_at, task_id) VALUES (?,?,?)",
        [(tag, stored_created, state.task_id) for tag in tags],
    )


def _hand_over(
    conn: sqlite3.Connection, unique_id: str, released_by: str, delivery_id: str
) -> None:
    """A released unique_id goes to the newest task that claimed it while it was held.

    That claim was a conflict only because deliveries arrived out of order (the vendor lets a
    task take an id only once it is free), so the ledger ends as in-order delivery would.
    """
    row = conn.execute(
        "SELECT task_id FROM ledger_tasks WHERE claimed_unique_id = ? AND task_id != ? "
        "ORDER BY created_at DESC, task_id DESC LIMIT 1",
        (unique_id, released_by),
    ).fetchone()
    if row is None:
        return
    claimant = row[0]
    conn.execute(
        "INSERT INTO ledger_unique_ids (unique_id, task_id, bound_at) VALUES (?,?,?)",
        (unique_id, claimant, time.time()),
    )
    conn.execute(
        "UPDATE ledger_tasks SET unique_id = ?, claimed_unique_id = NULL WHERE task_id = ?",
        (unique_id, claimant),
    )
    history(
        conn,
        claimant,
        delivery_id,
        "unique_id",
        {"unique_id": unique_id, "bound_after_release_by": released_by},
    )


def record_events(
    conn: sqlite3.Connection, task_id: str, delivery_id: str, events: list[Event]
) -> None:
    """Put a delivery's events on the task's history and in the events tables, in the
    caller's transaction."""
    now = time.time()
    conn.executemany(
        "INSERT INTO ledger_history (task_id, delivery_id, kind, name, event_id, detail, at) "
        "VALUES (?,?,?,?,?,?,?)",
        [(task_id, delivery_id, "event", e.name, e.event_id, orjson.dumps(e.payload).decode(),
          now) for e in events],
    )  # fmt: skip
    save_events_in(conn, delivery_id, [persisted(e) for e in events])


def derived_events(conn: sqlite3.Connection, delivery_id: str) -> list[Event] | None:
    """The events a delivery was already applied with, or None if it was not.

    A worker whose lease expired mid-way (a stalled replica) may still come to apply a
    delivery another worker has applied since; reading this first, inside the applying
    transaction, makes the second attempt a no-op that returns the same events.
    """
    row = conn.execute(
        "SELECT events_derived FROM deliveries WHERE id = ?", (delivery_id,)
    ).fetchone()
    if row is None or not row[0]:
        return None
    rows = conn.execute(LOAD_EVENTS, (delivery_id,)).fetchall()
    return [Event.model_validate_json(r[4]) for r in rows]


def apply_delivery(conn: sqlite3.Connection, delivery: DeliveryRecord) -> list[Event]:
    """Apply one stored delivery to the ledger and persist its events, atomically."""
    assert delivery.body is not None
    value = decode(delivery.body, delivery.content_type)
    callback = parse_callback(value)
    task_id = callback.effective_task_id
    source = delivery.source
    prior = load_state(conn, task_id)
    holder = None
    if callback.task.unique_id:
        found = conn.execute(
            "SELECT task_id FROM ledger_unique_ids WHERE unique_id = ?", (callback.task.unique_id,)
        ).fetchone()
        holder = found[0] if found else None
    outcome = apply(prior, callback, holder=holder, raw_task=value["task"])
    received = datetime.fromtimestamp(delivery.received_at, UTC)
    events = [
        Event(
            event_id=event_id(d.name, source, task_id, d.identity),
            name=d.name,
            source=source,
            task_id=task_id,
            delivery_id=delivery.id,
            occurred_at=d.occurred_at or received,
            payload=d.payload,
        )
        for d in outcome.events
    ]
    version = outcome.state.version.key() if not outcome.stale else None
    if outcome.stale:
        assert prior is not None
        history(conn, task_id, delivery.id, "stale", {
            "status": callback.effective_status,
            "snapshot_updated_at": callback.task.updated_at.isoformat()
            if callback.task.updated_at else None,
            "applied_version": prior.version.key(),
        })  # fmt: skip
    else:
        history(conn, task_id, delivery.id, "applied", {
            "status": outcome.state.status, "previous_status": prior.status if prior else None,
            "version": version,
        })  # fmt: skip
        conflict = next((e for e in outcome.events if e.name == "unique_id.conflict"), None)
        claimed = conflict.payload["unique_id"] if conflict else None
        prior_tags = (prior.task.get("tags") or []) if prior else []
        _save_task(conn, source, delivery, outcome, claimed, prior_tags)
        if outcome.release:
            conn.execute(
                "DELETE FROM ledger_unique_ids WHERE unique_id = ? AND task_id = ?",
                (outcome.release, task_id),
            )
            _hand_over(conn, outcome.release, task_id, delivery.id)
        if outcome.bind:
            conn.execute(
                "INSERT INTO ledger_unique_ids (unique_id, task_id, bound_at) VALUES (?,?,?) "
                "ON CONFLICT (unique_id) DO UPDATE SET task_id = excluded.task_id",
                (outcome.bind, task_id, time.time()),
            )
    if not outcome.stale:
        conn.execute("UPDATE ledger_meta SET generation = generation + 1 WHERE id = 1")
    record_events(conn, task_id, delivery.id, events)
    return events
