"""The outbox: alerts are queued in the database first, then posted, then marked sent.

Safe with several replicas sharing one PostgreSQL database, because every decision is a
statement on shared rows, taken under a named lock (`Tx.lock`), never a process's memory:

- **De-duplication.** Queuing upserts ``alerts_dedupe`` (kind, key) and moves its
  ``last_at`` only where the previous one is at least ``repeat_seconds`` old. The statement
  changed a row (inserted, or moved it) or it did not: the one transaction that changed it
  queues the alert; every other replica (or a repeat within the window) sees 0 rows.
- **Rate limit.** Under the lock ``alerts:queue`` (so two replicas never both take the last
  slot), the alerts queued in the last hour are counted; at ``max_per_hour`` the alert is
  counted in ``alerts_suppressed`` instead of queued. Once the hour has room again, one
  notice says how many were held back, by kind (`release_notice`).
- **Claims.** A sender takes the oldest due row under the lock ``alerts:send`` and pushes
  its ``next_attempt_at`` past the post's deadline (the lease) in the same transaction; only
  then does it post. Sent: ``sent_at`` is set. Refused or unreachable: ``next_attempt_at``
  is the backoff, the error is kept on the row, and a later pass tries again.

Delivery is at least once: a replica that dies after its post and before marking the row
sent leaves it to be posted again when the lease ends. The ``webhook-id`` (the row id)
lets a receiver drop the repeat.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import orjson
import sqlalchemy as sa

from handlers.alerts.tables import alert_id
from receiver.plugin_store import PluginStorage, Tx
from receiver.signals import Signal
from receiver.times import iso

HOUR = 3600.0
SUPPRESSED_KIND = "alerts.suppressed"  # the notice's own kind (not a Signal kind)
BACKOFF_BASE = 10.0
BACKOFF_MAX = 900.0
KEEP_SENT = 7 * 86400.0

Queued = Literal["queued", "repeat", "suppressed"]

_DEDUPE = sa.text(
    "INSERT INTO alerts_dedupe (kind, key, last_at) VALUES (:kind, :key, :now) "
    "ON CONFLICT (kind, key) DO UPDATE SET last_at = excluded.last_at "
    "WHERE alerts_dedupe.last_at <= :cutoff"
)
_IN_HOUR = sa.text("SELECT count(*) FROM alerts_outbox WHERE queued_at > :since")
_SUPPRESS = sa.text(
    "INSERT INTO alerts_suppressed (kind, n, since) VALUES (:kind, 1, :now) "
    "ON CONFLICT (kind) DO UPDATE SET n = alerts_suppressed.n + 1"
)
_SUPPRESSED = sa.text("SELECT kind, n, since FROM alerts_suppressed ORDER BY kind")
_FORGET_SUPPRESSED = sa.text("DELETE FROM alerts_suppressed")
_INSERT = sa.text(
    "INSERT INTO alerts_outbox (id, kind, key, summary, details, link, raised_at, queued_at, "
    "attempts, next_attempt_at) VALUES (:id, :kind, :key, :summary, :details, :link, "
    ":raised_at, :now, 0, :now)"
)
_COLUMNS = "id, kind, key, summary, details, link, raised_at, attempts"
# Oldest first among those due (ids are ordered by creation).
_DUE = sa.text(
    f"SELECT {_COLUMNS} FROM alerts_outbox WHERE sent_at IS NULL AND next_attempt_at <= :now "
    "ORDER BY id LIMIT 1"
)
_FAILING = sa.text(
    "SELECT 1 FROM alerts_outbox WHERE sent_at IS NULL AND last_error IS NOT NULL LIMIT 1"
)
_CLAIM = sa.text(
    "UPDATE alerts_outbox SET next_attempt_at = :until, attempts = attempts + 1 "
    "WHERE id = :id AND sent_at IS NULL AND next_attempt_at <= :now"
)
_SENT = sa.text("UPDATE alerts_outbox SET sent_at = :now, last_error = NULL WHERE id = :id")
_FAILED = sa.text(
    "UPDATE alerts_outbox SET next_attempt_at = :next, last_error = :error "
    "WHERE id = :id AND sent_at IS NULL"
)
_PRUNE_SENT = sa.text("DELETE FROM alerts_outbox WHERE sent_at IS NOT NULL AND sent_at < :before")
_PRUNE_DEDUPE = sa.text("DELETE FROM alerts_dedupe WHERE last_at < :before")
_LIST = sa.text(
    f"SELECT {_COLUMNS}, queued_at, sent_at, next_attempt_at, last_error FROM alerts_outbox "
    "ORDER BY id"
)


@dataclass(frozen=True, slots=True)
class Alert:
    """One queued alert as it is posted (safe to show: no secret, no delivery body)."""

    id: str
    kind: str
    key: str
    summary: str
    details: Mapping[str, Any]
    link: str | None
    raised_at: float
    attempts: int  # posts tried, this one included

    @classmethod
    def of(cls, row: Any) -> Alert:
        return cls(
            id=row[0], kind=row[1], key=row[2], summary=row[3], details=orjson.loads(row[4]),
            link=row[5], raised_at=float(row[6]), attempts=int(row[7]),
        )  # fmt: skip


def backoff(attempts: int) -> float:
    """Seconds before post number `attempts` + 1: 10 s, 20 s, 40 s, ... at most 15 min."""
    return float(min(BACKOFF_MAX, BACKOFF_BASE * 2 ** max(0, attempts - 1)))


class Outbox:
    def __init__(self, storage: PluginStorage, *, repeat_seconds: float, max_per_hour: int) -> None:
        self._storage = storage
        self._repeat = repeat_seconds
        self._max = max_per_hour

    async def queue(self, signal: Signal, now: float) -> tuple[Queued, str | None]:
        """Queue `signal` unless it repeats one within ``repeat_seconds`` or the hour is
        full; what happened, and the new alert's id."""
        new_id = alert_id()

        async def op(tx: Tx) -> Queued:
            await tx.lock(["alerts:queue"])
            fresh = await tx.execute(
                _DEDUPE,
                {"kind": signal.kind, "key": signal.key, "now": now,
                 "cutoff": now - self._repeat},
            )  # fmt: skip
            if fresh == 0:
                return "repeat"
            if await self._hour_full(tx, now):
                await tx.execute(_SUPPRESS, {"kind": signal.kind, "now": now})
                return "suppressed"
            await tx.execute(_INSERT, {
                "id": new_id, "kind": signal.kind, "key": signal.key,
                "summary": one_line(signal.summary), "details": _json(signal.details),
                "link": signal.link, "raised_at": signal.at, "now": now,
            })  # fmt: skip
            return "queued"

        outcome = await self._storage.transaction(op)
        return outcome, new_id if outcome == "queued" else None

    async def release_notice(self, now: float) -> str | None:
        """Queue the notice of suppressed alerts once the last hour has room for it."""
        notice = alert_id()

        async def op(tx: Tx) -> bool:
            await tx.lock(["alerts:queue"])
            held = await tx.fetch(_SUPPRESSED)
            if not held or await self._hour_full(tx, now):
                return False
            by_kind = {str(kind): int(n) for kind, n, _ in held}
            total = sum(by_kind.values())
            since = min(float(at) for _, _, at in held)
            await tx.execute(_INSERT, {
                "id": notice, "kind": SUPPRESSED_KIND, "key": "suppressed",
                "summary": f"{total} alert(s) suppressed since {iso(since)}: more than "
                           f"{self._max} in an hour",
                "details": _json({"suppressed": total, "by_kind": by_kind, "since": iso(since),
                                  "max_per_hour": self._max}),
                "link": None, "raised_at": now, "now": now,
            })  # fmt: skip
            await tx.execute(_FORGET_SUPPRESSED)
            return True

        return notice if await self._storage.transaction(op) else None

    async def _hour_full(self, tx: Tx, now: float) -> bool:
        row = await tx.fetchone(_IN_HOUR, {"since": now - HOUR})
        return row is not None and int(row[0]) >= self._max

    async def claim(self, now: float, lease: float) -> Alert | None:
        """The oldest due alert, leased to this sender for `lease` seconds (or None)."""

        async def op(tx: Tx) -> Alert | None:
            await tx.lock(["alerts:send"])
            row = await tx.fetchone(_DUE, {"now": now})
            if row is None:
                return None
            taken = await tx.execute(_CLAIM, {"id": row[0], "now": now, "until": now + lease})
            if taken == 0:
                return None
            return Alert.of((*row[:7], int(row[7]) + 1))

        return await self._storage.transaction(op)

    async def failing(self) -> bool:
        """Whether an alert the webhook refused (or never answered) waits for its retry."""
        return bool(await self._storage.query(_FAILING))

    async def sent(self, alert_id: str, now: float) -> None:
        async def op(tx: Tx) -> None:
            await tx.execute(_SENT, {"id": alert_id, "now": now})

        await self._storage.transaction(op)

    async def failed(self, alert: Alert, error: str, now: float) -> float:
        """Keep `alert` for a later attempt; when that is due."""
        due = now + backoff(alert.attempts)

        async def op(tx: Tx) -> None:
            await tx.execute(_FAILED, {"id": alert.id, "next": due, "error": error[:500]})

        await self._storage.transaction(op)
        return due

    async def prune(self, now: float) -> None:
        """Forget alerts sent a week ago, and de-duplication rows no repeat can match."""

        async def op(tx: Tx) -> None:
            await tx.execute(_PRUNE_SENT, {"before": now - KEEP_SENT})
            await tx.execute(_PRUNE_DEDUPE, {"before": now - max(self._repeat, HOUR)})

        await self._storage.transaction(op)

    async def rows(self) -> list[dict[str, Any]]:
        """Every alert in the outbox, oldest first (tests, and operators at a prompt)."""
        names = ("id", "kind", "key", "summary", "details", "link", "raised_at", "attempts",
                 "queued_at", "sent_at", "next_attempt_at", "last_error")  # fmt: skip
        found = []
        for row in await self._storage.query(_LIST):
            item = dict(zip(names, row, strict=True))
            item["details"] = orjson.loads(item["details"])
            found.append(item)
        return found


def one_line(text: str) -> str:
    return " ".join(text.split())


def _json(value: Mapping[str, Any]) -> str:
    # default=str: a signal's details are meant to be JSON, but an odd value (a datetime)
    # must not lose the alert.
    return orjson.dumps(dict(value), default=str).decode()
