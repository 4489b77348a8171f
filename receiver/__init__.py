"""taskhook's intake: verification, durable storage, deduplication and dispatch.

Build an app with `create_app(load_settings(...))`; nothing is created at import. The names
below are imported when first used, so `taskhook --help` does not load the whole app.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from receiver.app import TaskhookApp, create_app
    from receiver.config import Settings, load_settings, settings_from_mapping
    from receiver.events import EVENT_NAMES, Event
    from receiver.registry import HandlerRegistry

_WHERE = {
    "TaskhookApp": "receiver.app", "create_app": "receiver.app",
    "Settings": "receiver.config", "load_settings": "receiver.config",
    "settings_from_mapping": "receiver.config",
    "EVENT_NAMES": "receiver.events", "Event": "receiver.events",
    "HandlerRegistry": "receiver.registry",
}  # fmt: skip


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'receiver' has no attribute {name!r}")


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
