"""The alerts plugin's tables (SQLAlchemy Core) and their migrations, through the plugin API.

- ``alerts_outbox``: every alert queued, sent or not. A row is deleted only a week after it
  was sent, so one the webhook refused stays until it goes through (never silently lost).
  ``next_attempt_at`` is both the retry schedule and the claim: a sender pushes it past
  its post's deadline before posting, so no other replica takes the row meanwhile, and a
  sender that dies leaves the row due again once that lease runs out.
- ``alerts_dedupe``: when each (kind, key) was last queued; the conditional upsert on it is
  what makes one alert of many replicas raising the same signal.
- ``alerts_suppressed``: alerts the hourly limit held back, per kind, until the notice that
  says how many goes out.
"""

from __future__ import annotations

import secrets
import time

import sqlalchemy as sa

from receiver.plugin_store import Migration, Tx, real

META = sa.MetaData()


OUTBOX = sa.Table(
    "alerts_outbox",
    META,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("kind", sa.Text, nullable=False),
    sa.Column("key", sa.Text, nullable=False),
    sa.Column("summary", sa.Text, nullable=False),
    sa.Column("details", sa.Text, nullable=False),  # JSON
    sa.Column("link", sa.Text),
    sa.Column("raised_at", real(), nullable=False),
    sa.Column("queued_at", real(), nullable=False),
    sa.Column("sent_at", real()),
    sa.Column("attempts", sa.Integer, nullable=False, server_default=sa.text("0")),
    sa.Column("next_attempt_at", real(), nullable=False),
    sa.Column("last_error", sa.Text),
)
_UNSENT = sa.text("sent_at IS NULL")
sa.Index(
    "alerts_outbox_due",
    OUTBOX.c.next_attempt_at,
    sqlite_where=_UNSENT,
    postgresql_where=_UNSENT,
)
# The hourly limit counts what was queued in the last hour.
sa.Index("alerts_outbox_queued", OUTBOX.c.queued_at)

DEDUPE = sa.Table(
    "alerts_dedupe",
    META,
    sa.Column("kind", sa.Text, primary_key=True),
    sa.Column("key", sa.Text, primary_key=True),
    sa.Column("last_at", real(), nullable=False),
)

SUPPRESSED = sa.Table(
    "alerts_suppressed",
    META,
    sa.Column("kind", sa.Text, primary_key=True),
    sa.Column("n", sa.Integer, nullable=False),
    sa.Column("since", real(), nullable=False),
)


async def _v1(tx: Tx) -> None:
    await tx.create(OUTBOX, DEDUPE, SUPPRESSED)


MIGRATIONS = (Migration(1, "alert outbox, de-duplication and suppressed counts", _v1),)


def alert_id() -> str:
    """Unique, and ordered by when it was made (the wall clock's microseconds, not the app's
    clock): the outbox sorts by it; receivers de-duplicate on it (the ``webhook-id``)."""
    return f"alrt_{time.time_ns() // 1000:014x}{secrets.token_hex(6)}"
