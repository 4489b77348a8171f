"""The built-in watchdog plugin (being built)."""

from __future__ import annotations

from receiver.registry import HandlerRegistry


def register(registry: HandlerRegistry) -> None:
    return None
