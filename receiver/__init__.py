"""taskhook's intake: verification, durable storage, deduplication and dispatch.

Build an app with `create_app(load_settings(...))`; nothing is created at import.
"""

from __future__ import annotations

from receiver.app import TaskhookApp, create_app
from receiver.config import Settings, load_settings, settings_from_mapping
from receiver.events import EVENT_NAMES, Event
from receiver.registry import HandlerRegistry

__all__ = [
    "EVENT_NAMES",
    "Event",
    "HandlerRegistry",
    "Settings",
    "TaskhookApp",
    "create_app",
    "load_settings",
    "settings_from_mapping",
]
