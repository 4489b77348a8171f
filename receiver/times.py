"""Epoch seconds as the ISO 8601 text every API and alert of ours shows: UTC, with ``Z``.

A leaf module (it imports nothing of ours), so the core, the dashboard and plugins share one
spelling of a time instead of each writing its own.
"""

from __future__ import annotations

from datetime import UTC, datetime


def iso(at: float, timespec: str = "seconds") -> str:
    """``2026-12-01T18:00:00Z`` (`timespec` as `datetime.isoformat` takes it)."""
    return datetime.fromtimestamp(at, UTC).isoformat(timespec=timespec).replace("+00:00", "Z")
