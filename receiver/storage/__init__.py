"""Storage backends behind one interface, chosen by ``database.url``."""

from __future__ import annotations

from receiver.errors import ConfigError
from receiver.storage.base import CommitObserver, Storage

__all__ = ["CommitObserver", "Storage", "open_storage"]


def open_storage(url: str, *, on_commit: CommitObserver | None = None) -> Storage:
    """An unopened backend for `url` (call ``await storage.open()``)."""
    if url.startswith("sqlite:"):
        from receiver.storage.sqlite import SQLiteStorage

        return SQLiteStorage(url, on_commit=on_commit)
    if url.startswith(("postgresql:", "postgres:")):
        try:
            from receiver.storage.postgres import PostgresStorage
        except ImportError:
            raise ConfigError(
                "PostgreSQL needs the `postgres` extra: pip install 'taskhook[postgres]'",
                where="database.url",
            ) from None
        return PostgresStorage(url, on_commit=on_commit)
    raise ConfigError("use a sqlite:/// or postgresql:// URL", where="database.url", key=url)
