"""What the PostgreSQL backend checks before the core's history (`core_schema`) runs.

Databases of the previous release recorded their schema in ``taskhook_migrations`` (version
4 is the schema `tables` describes, which `core_schema` version 1 adopts as it is). One older
than that is refused with what to do, rather than half-upgraded.
"""

from __future__ import annotations

from typing import Any

from receiver.errors import StorageUnavailable

_LEGACY = "SELECT to_regclass('taskhook_migrations') IS NOT NULL"
_LEGACY_VERSION = "SELECT coalesce(max(version), 0) FROM taskhook_migrations"
ADOPTED = 4


async def check_legacy(conn: Any) -> None:
    if not await conn.fetchval(_LEGACY):
        return
    version = int(await conn.fetchval(_LEGACY_VERSION))
    if version < ADOPTED:
        raise StorageUnavailable(
            f"this PostgreSQL database has the schema of an early release (version {version}); "
            "upgrade it with the previous release's `taskhook migrate` first"
        )
