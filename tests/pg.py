"""Throwaway PostgreSQL databases on the machine's server (127.0.0.1:5432, trust auth).

Each test that needs one gets a database of its own, created here and dropped after, so
runs never collide.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import asyncpg

SERVER = os.environ.get("TASKHOOK_TEST_PG", "postgresql://postgres@127.0.0.1:5432")


async def _admin(sql: str) -> None:
    conn = await asyncpg.connect(f"{SERVER}/postgres")
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@contextmanager
def fresh_database() -> Iterator[str]:
    """A new empty database; yields its URL."""
    name = f"taskhook_test_{uuid.uuid4().hex[:12]}"
    asyncio.run(_admin(f'CREATE DATABASE "{name}"'))
    try:
        yield f"{SERVER}/{name}"
    finally:
        asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def fetch(url: str, sql: str) -> list[tuple[object, ...]]:
    """Rows of a query on a sqlite:/// or postgresql:// database (SQL both dialects read)."""
    if url.startswith("sqlite:"):
        import sqlite3

        from receiver.storage.sqlite import sqlite_path

        with sqlite3.connect(sqlite_path(url)) as conn:
            return [tuple(r) for r in conn.execute(sql).fetchall()]

    async def run() -> list[tuple[object, ...]]:
        conn = await asyncpg.connect(url)
        try:
            return [tuple(r) for r in await conn.fetch(sql)]
        finally:
            await conn.close()

    return asyncio.run(run())


def wait_until_processed(url: str, *, within: float) -> None:
    """Return once no delivery waits to be processed, or after `within` seconds (the
    caller's assertions then say what is left)."""
    import time

    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        pending = "SELECT count(*) FROM deliveries WHERE status IN ('received', 'failed')"
        if fetch(url, pending)[0][0] == 0:
            return
        time.sleep(0.1)
