"""Source kinds: how each vendor's wire format becomes typed events."""

from __future__ import annotations

from receiver.config import SourceSettings
from receiver.sources.base import Parsed, SourceAdapter
from receiver.sources.cloudfactory import CloudFactoryAdapter
from receiver.sources.generic import GenericAdapter
from receiver.sources.label_studio import LabelStudioAdapter
from receiver.sources.labelbox import LabelboxAdapter
from receiver.sources.refonte import RefonteAdapter
from receiver.sources.review import ReviewAdapter

__all__ = ["Parsed", "SourceAdapter", "adapter_for"]


def adapter_for(settings: SourceSettings) -> SourceAdapter:
    """The adapter for a configured source (its kind was validated by the settings)."""
    if settings.kind == "cloudfactory":
        return CloudFactoryAdapter(settings)
    if settings.kind == "standard-webhooks":
        return GenericAdapter(settings)
    if settings.kind == "document-review":
        return ReviewAdapter()
    if settings.kind == "labelbox":
        return LabelboxAdapter()
    if settings.kind == "label-studio":
        return LabelStudioAdapter()
    # refonte, and the polled kinds: their pollers synthesize Refonte-shaped task snapshots.
    return RefonteAdapter()
