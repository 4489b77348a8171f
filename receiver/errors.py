"""Every error taskhook raises on purpose.

One base class, mapped to an HTTP status only at the edge (``receiver.intake`` and the API
routes). Each class says when to catch it::

    TaskhookError
    ├── ConfigError            bad settings: start-up stops with the source and key at fault
    ├── VerificationError      a delivery failed its source's check (401); the body is not stored
    ├── PayloadError           authenticated, but the body cannot be read (400, quarantined)
    │   └── UnsupportedMediaType   the content type is not one we can read (415, quarantined)
    ├── StorageUnavailable     the database cannot take or give data right now (503)
    │   └── StorageBusy            more writes are queued than the bound allows (503, sooner)
    ├── NotFound               the thing asked for does not exist (404)
    ├── RegistryError          a handler or plugin is wrong at registration time
    ├── HandlerError           a handler failed while dispatching (kept on the run record)
    ├── ReplayError            ``taskhook replay`` was given nothing to replay (no such path,
    │                          no bodies or recordings under it, an empty recording)
    └── Aborted                plugin code raised SystemExit & co.; contained, not re-raised

This module imports nothing of ours.
"""

from __future__ import annotations


class TaskhookError(Exception):
    """Base class of every error taskhook raises deliberately."""


class ConfigError(TaskhookError):
    """The settings are invalid. ``where`` names the file or variable, ``key`` the dotted key."""

    def __init__(self, message: str, *, where: str = "", key: str = "") -> None:
        self.where = where
        self.key = key
        prefix = ": ".join(p for p in (where, key) if p)
        super().__init__(f"{prefix}: {message}" if prefix else message)


class VerificationError(TaskhookError):
    """A delivery failed verification. ``reason`` is safe to show to the sender."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class PayloadError(TaskhookError):
    """An authenticated body that cannot be parsed into its source kind's shape.

    `fields` names each bad field with why, when the body was JSON of the wrong shape.
    """

    def __init__(self, reason: str, fields: list[dict[str, str]] | None = None) -> None:
        self.reason = reason
        self.fields = fields or []
        super().__init__(reason)


class UnsupportedMediaType(PayloadError):
    """The content type is not one the source can read."""


class StorageUnavailable(TaskhookError):
    """The storage backend cannot take or give data right now; the caller may retry."""


class StorageBusy(StorageUnavailable):
    """The write queue is full: the caller should retry shortly (backpressure, not a fault)."""


class StorageError(TaskhookError):
    """Storage was used wrongly by code (a statement's parameter missing, a migration
    history out of order, a transaction awaiting something else): a bug, not a fault."""


class NotFound(TaskhookError):
    """The requested record does not exist."""


class RegistryError(TaskhookError):
    """A handler, event name or plugin is invalid at registration time."""


class HandlerError(TaskhookError):
    """A handler raised while processing an event."""


class ReplayError(TaskhookError):
    """A replay has nothing to replay: a path that does not exist, a folder with no ``*.json``
    bodies or ``*.jsonl`` recordings under it, a recording with no delivery in it. The
    message is one line naming the path."""


class Aborted(TaskhookError):
    """Plugin code ended with an exception that is not an `Exception` (``SystemExit``,
    ``KeyboardInterrupt``, ``GeneratorExit``): contained and reported as this instead, so it
    cannot stop the process that serves everyone else."""


class VendorError(TaskhookError):
    """A vendor API polled by reconciliation answered with an error, or not at all, after
    the retries it deserved. The pass stops; its cursor stays where it was."""

    def __init__(self, source: str, reason: str, *, status: int | None = None) -> None:
        super().__init__(f"{source}: {reason}")
        self.source = source
        self.reason = reason
        self.status = status


def contain(exc: BaseException) -> Exception:
    """`exc` if it is an `Exception`, else an `Aborted` caused by it (safe to hand back to a
    caller instead of letting ``SystemExit`` & co. unwind the event loop)."""
    if isinstance(exc, Exception):
        return exc
    aborted = Aborted(f"{type(exc).__name__}: {exc}")
    aborted.__cause__ = exc
    return aborted
