"""The dashboard at ``/ui/`` (being built)."""

from __future__ import annotations

from typing import Any


def ui_routes(app: Any) -> list[Any]:
    return []
