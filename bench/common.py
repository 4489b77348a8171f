"""What the pipeline benchmarks share: throwaway PostgreSQL databases and the results file."""

from __future__ import annotations

import asyncio
import json
import os
import platform
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import asyncpg

RESULTS = Path(__file__).resolve().parent / "results"


async def pg_admin(server: str, sql: str) -> None:
    conn = await asyncpg.connect(f"{server}/postgres")
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def create_database(server: str, prefix: str) -> str:
    """A new, uniquely named database on `server`; its name."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    asyncio.run(pg_admin(server, f'CREATE DATABASE "{name}"'))
    return name


def drop_database(server: str, name: str) -> None:
    asyncio.run(pg_admin(server, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def write_results(name: str, started: datetime, payload: dict[str, Any]) -> Path:
    """bench/results/<name>-<when>.json: the run's figures with the machine they came from."""
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"{name}-{started.strftime('%Y%m%d-%H%M%S')}.json"
    machine = {"cpus": os.cpu_count(), "python": platform.python_version(),
               "platform": platform.platform()}  # fmt: skip
    doc = {"started": started.isoformat(), "machine": machine, **payload}
    out.write_text(json.dumps(doc, indent=2, default=str) + "\n", encoding="utf-8")
    return out
