"""Source kinds: how each vendor's wire format becomes typed events."""

from __future__ import annotations

from receiver.sources.base import Parsed, SourceAdapter
from receiver.sources.refonte import RefonteAdapter

__all__ = ["Parsed", "SourceAdapter", "adapter_for"]


def adapter_for(kind: str) -> SourceAdapter:
    """The adapter for a configured source `kind` (validated by the settings)."""
    adapters: dict[str, SourceAdapter] = {"refonte": RefonteAdapter()}
    return adapters[kind]
