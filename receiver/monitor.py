"""The receiver watching itself (being built)."""

from __future__ import annotations

import asyncio
from typing import Any


class Monitor:
    def __init__(self, app: Any) -> None:
        self._app = app

    async def forever(self) -> None:
        await asyncio.Event().wait()
