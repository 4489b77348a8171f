"""Storage backends behind one interface, chosen by ``database.url``."""

from __future__ import annotations

from receiver.errors import ConfigError
from receiver.storage.base import CommitObserver, Storage

__all__ = ["CommitObserver", "Storage", "open_storage"]


def open_storage(
    url: str, *, on_commit: CommitObserver | None = None, max_queue: int = 10_000
) -> Storage:
    """An unopened backend for `url` (call ``await storage.open()``). At most `max_queue`
    new deliveries wait to be written; more are refused with `StorageBusy`."""
    if url.startswith("sqlite:"):
        from receiver.storage.sqlite import SQLiteStorage

        return SQLiteStorage(url, on_commit=on_commit, max_queue=max_queue)
    if url.startswith(("postgresql:", "postgres:")):
        try:
            from receiver.storage.postgres import PostgresStorage
        except ImportError:
            raise ConfigError(
                "PostgreSQL needs the `postgres` extra: pip install 'taskhook[postgres]'",
                where="database.url",
            ) from None
        return PostgresStorage(url, on_commit=on_commit, max_queue=max_queue)
    raise ConfigError("use a sqlite:/// or postgresql:// URL", where="database.url", key=url)
