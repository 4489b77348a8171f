from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import structlog

from receiver.app import TaskhookApp, create_app
from receiver.config import Settings, settings_from_mapping
from receiver.registry import HandlerRegistry

SAMPLES = Path(__file__).resolve().parents[1] / "samples"

SECRET = "test-secret"
OPS_KEY = "ops-key"
READ_KEY = "read-only-key"


def sample(name: str) -> bytes:
    return (SAMPLES / "refonte" / name).read_bytes()


def sample_json(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(sample(name))
    return loaded


@pytest.fixture(autouse=True)
def _reset_structlog() -> None:
    structlog.reset_defaults()


def make_settings(db: Path, **overrides: Any) -> Settings:
    doc: dict[str, Any] = {
        "database": {"url": f"sqlite:///{db}"},
        "sources": {
            "refonte": {
                "kind": "refonte",
                "verify": "header-token",
                "header": "refonte-callback-auth",
                "secrets": [SECRET, "older-secret"],
            },
        },
        "api": {
            "keys": {
                "ops": {
                    "key": OPS_KEY,
                    "scopes": ["tasks.read", "deliveries.read", "deliveries.write"],
                },
                "reader": {"key": READ_KEY, "scopes": ["tasks.read"]},
            }
        },
        "entry_points": False,
        "dispatch": {"enabled": False, "backoff_base_seconds": 0.01, "backoff_max_seconds": 0.02},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(doc.get(key), dict):
            doc[key] = {**doc[key], **value}
        else:
            doc[key] = value
    return settings_from_mapping(doc, environ={})


AppFactory = Callable[..., TaskhookApp]


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "taskhook.db"


@pytest.fixture
def backend() -> str:
    """The storage backend of `build_app`; modules that run on both override this fixture
    with ``params=BACKENDS``."""
    return "sqlite"


BACKENDS = ["sqlite", "postgres"]


@pytest.fixture
def db_url(backend: str, db_path: Path) -> Iterator[str]:
    if backend == "postgres":
        from tests.pg import fresh_database

        with fresh_database() as url:
            yield url
    else:
        yield f"sqlite:///{db_path}"


@pytest.fixture
def build_app(db_url: str, db_path: Path) -> AppFactory:
    def build(
        setup: Callable[[HandlerRegistry], None] | None = None,
        clock: Callable[[], float] | None = None,
        **overrides: Any,
    ) -> TaskhookApp:
        overrides.setdefault("database", {"url": db_url})
        settings = make_settings(db_path, **overrides)
        if clock is None:
            return create_app(settings, setup=setup)
        return create_app(settings, setup=setup, clock=clock)

    return build


def client_for(app: TaskhookApp) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://taskhook")


@pytest.fixture
async def app(build_app: AppFactory) -> AsyncIterator[TaskhookApp]:
    instance = build_app()
    async with instance.started():
        yield instance


@pytest.fixture
async def client(app: TaskhookApp) -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(app) as c:
        yield c


def signed(secret: str = SECRET) -> dict[str, str]:
    return {"content-type": "application/json", "refonte-callback-auth": secret}


def ops(key: str = OPS_KEY) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A PostgreSQL database of this test's own."""
    from tests.pg import fresh_database

    with fresh_database() as url:
        yield url
