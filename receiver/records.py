"""Plain records that cross the storage boundary. Imports nothing of ours."""

from __future__ import annotations

import os
import random
import time
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

_CROCKFORD = "0123456789abcdefghjkmnpqrstvwxyz"
# Ids need uniqueness, not secrecy: a generator seeded once from the OS avoids a syscall
# (and a GIL hand-off) per id on the hot path.
_RANDOM = random.Random(os.urandom(32))


class DeliveryStatus(StrEnum):
    RECEIVED = "received"
    PROCESSED = "processed"
    FAILED = "failed"
    DEAD = "dead"
    QUARANTINED = "quarantined"
    DUPLICATE = "duplicate"


PENDING_STATUSES = (DeliveryStatus.RECEIVED, DeliveryStatus.FAILED)


@dataclass(frozen=True, slots=True)
class Owner:
    """A dispatching process as the shared database knows it (its heartbeat row)."""

    owner: str
    host: str
    pid: int
    heartbeat_at: float


def new_id(prefix: str, now: float | None = None) -> str:
    """A ULID-like id: 48 bits of milliseconds then 80 random bits, Crockford base32.

    Ids sort by creation time, which keeps keyset paging and logs readable.
    """
    ms = int((time.time() if now is None else now) * 1000)
    value = (ms << 80) | _RANDOM.getrandbits(80)
    chars = []
    for _ in range(26):
        chars.append(_CROCKFORD[value & 31])
        value >>= 5
    return prefix + "".join(reversed(chars))


@dataclass(frozen=True, slots=True)
class NewDelivery:
    """A verified delivery about to be stored (exact body bytes, redacted headers)."""

    id: str
    source: str
    kind: str
    received_at: float
    headers: dict[str, str]
    body: bytes
    content_type: str
    dedup_key: str
    status: DeliveryStatus
    task_id: str | None = None
    sender_delivery_id: str | None = None
    key_index: int | None = None
    key_fingerprint: str | None = None
    error: str | None = None
    replayed: bool = False
    reconciled: bool = False
    # The API key name of the operator whose action this delivery records (None: a callback).
    operator: str | None = None


@dataclass(frozen=True, slots=True)
class StoreResult:
    """What `store_delivery` did: stored `delivery_id` anew, or found it stored already."""

    delivery_id: str
    duplicate: bool
    status: DeliveryStatus
    error: str | None = None


@dataclass(frozen=True, slots=True)
class DeliveryRecord:
    """A stored delivery as the dispatcher and the operator API see it."""

    id: str
    seq: int
    source: str
    kind: str
    received_at: float
    headers: dict[str, str]
    body: bytes | None
    content_type: str
    status: DeliveryStatus
    task_id: str | None
    sender_delivery_id: str | None
    key_index: int | None
    key_fingerprint: str | None
    attempts: int
    next_attempt_at: float
    last_error: str | None
    last_traceback: str | None
    duplicate_of: str | None
    replayed: bool
    events_derived: bool
    processed_at: float | None
    reconciled: bool = False
    operator: str | None = None
    # Receipts of the same delivery after this one (an original's; first seen: received_at).
    duplicate_count: int = 0
    last_duplicate_at: float | None = None

    @property
    def lane(self) -> str:
        """The queue this delivery waits in: its task's, or its own when it names no task."""
        return self.task_id if self.task_id is not None else self.id


@dataclass(frozen=True, slots=True)
class StoredEvent:
    """An event as persisted: its JSON form is what handlers see again on a retry."""

    event_id: str
    name: str
    task_id: str | None
    delivery_id: str
    payload_json: str


@dataclass(frozen=True, slots=True)
class HandlerRun:
    """The outcome of one handler on one event of one delivery."""

    event_id: str
    handler: str
    delivery_id: str
    ok: bool
    error: str | None = None
    traceback: str | None = None


@dataclass(frozen=True, slots=True)
class DeliveryOutcome:
    """How the dispatcher leaves a delivery after one attempt."""

    delivery_id: str
    status: DeliveryStatus
    attempts: int
    next_attempt_at: float = 0.0
    error: str | None = None
    traceback: str | None = None
    runs: tuple[HandlerRun, ...] = ()


@dataclass(slots=True)
class DeliveryPage:
    items: list[DeliveryRecord] = field(default_factory=list)
    total: int = 0
    next_token: str | None = None


JSONDict = dict[str, Any]
