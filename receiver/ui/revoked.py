"""Dashboard sessions signed out before they expired, kept in the app's database.

A session cookie is valid on its own (signed, with an expiry), so signing out must be
remembered somewhere every replica reads, and across restarts: a copied cookie must not
outlive the sign-out on another replica or after a deploy. A row lives until its session
would have expired anyway, then goes with the next sign-out.
"""

from __future__ import annotations

from collections.abc import Callable

import sqlalchemy as sa

from receiver.plugin_store import Migration, PluginStorage, Tx, real

COMPONENT = "ui"
META = sa.MetaData()
REVOKED = sa.Table(
    "ui_revoked_sessions",
    META,
    sa.Column("sid", sa.Text, primary_key=True),
    sa.Column("expires", real(), nullable=False),
)
_REVOKE = sa.text(
    "INSERT INTO ui_revoked_sessions (sid, expires) VALUES (:sid, :expires) "
    "ON CONFLICT (sid) DO NOTHING"
)
_FORGET = sa.text("DELETE FROM ui_revoked_sessions WHERE expires <= :now")
_IS_REVOKED = sa.text("SELECT 1 FROM ui_revoked_sessions WHERE sid = :sid")


async def _create(tx: Tx) -> None:
    await tx.create(REVOKED)


MIGRATIONS = [Migration(1, "dashboard sessions signed out before they expired", _create)]


class Revocations:
    """Declared when the dashboard is built (before storage opens: `migrate` creates it)."""

    def __init__(self, storage: PluginStorage, clock: Callable[[], float]) -> None:
        storage.declare(COMPONENT, MIGRATIONS)
        self._storage = storage
        self._clock = clock
        # What this process revoked: answered without a query (a signed-out tab's requests).
        self._local: dict[str, float] = {}

    async def revoke(self, sid: str, expires: float) -> None:
        now = self._clock()
        self._local = {s: e for s, e in self._local.items() if e > now}
        self._local[sid] = expires

        async def op(tx: Tx) -> None:
            await tx.execute(_FORGET, {"now": now})
            await tx.execute(_REVOKE, {"sid": sid, "expires": expires})

        await self._storage.transaction(op)

    async def revoked(self, sid: str) -> bool:
        if sid in self._local:
            return True
        return bool(await self._storage.query(_IS_REVOKED, {"sid": sid}))
