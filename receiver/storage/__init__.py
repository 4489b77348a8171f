"""Storage backends behind one interface, chosen by ``database.url``."""

from __future__ import annotations

from typing import Any

from receiver.errors import ConfigError
from receiver.storage.base import CommitObserver, Storage
from receiver.storage.rows import MAX_HEADER_BYTES

__all__ = ["CommitObserver", "Storage", "open_storage"]


def open_storage(
    url: str,
    *,
    on_commit: CommitObserver | None = None,
    max_queue: int = 10_000,
    max_duplicate_rows: int = 10,
    max_header_bytes: int = MAX_HEADER_BYTES,
) -> Storage:
    """An unopened backend for `url` (call ``await storage.open()``). At most `max_queue`
    new deliveries wait to be written; more are refused with `StorageBusy`. A delivery's
    duplicate receipts are kept as rows up to `max_duplicate_rows` (then only counted), and
    each stored header block is cut to `max_header_bytes`."""
    limits: dict[str, Any] = {
        "on_commit": on_commit,
        "max_queue": max_queue,
        "max_duplicate_rows": max_duplicate_rows,
        "max_header_bytes": max_header_bytes,
    }
    if url.startswith("sqlite:"):
        from receiver.storage.sqlite import SQLiteStorage

        return SQLiteStorage(url, **limits)
    if url.startswith(("postgresql:", "postgres:")):
        try:
            from receiver.storage.postgres import PostgresStorage
        except ImportError:
            raise ConfigError(
                "PostgreSQL needs the `postgres` extra: pip install 'taskhook[postgres]'",
                where="database.url",
            ) from None
        return PostgresStorage(url, **limits)
    raise ConfigError("use a sqlite:/// or postgresql:// URL", where="database.url", key=url)
