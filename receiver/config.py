"""Settings: one object built from a mapping (a TOML file) plus the environment.

`load_settings` is the only place that reads files or ``os.environ``; everything else takes a
`Settings`. Secrets are `SecretStr` so a settings object can be logged or printed safely.
A bad configuration raises `ConfigError` naming where it came from (file or variable) and the
dotted key at fault.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qsl, urlsplit

from pydantic import (
    Field,
    SecretStr,
    ValidationError,
    model_validator,
)

from receiver.errors import ConfigError
from receiver.ops_settings import AlertsSettings, UiSettings, WatchdogSettings, resolve_alerts
from receiver.secret_needs import (
    ALL_SECRETS,
    NO_SECRETS,
    SecretNeeds,
    env_value,
    unknowable_key,
)
from receiver.source_settings import (
    DEFAULT_API_URLS,
    DEFAULT_HEADERS,
    DEFAULT_MAX_BODY,
    EVENT_NAME,
    POLLED_KINDS,
    TASKMONK_URLS,
    WHSEC_MAX_KEY,
    WHSEC_MIN_KEY,
    ReconcileSettings,
    SourceKind,
    SourceSettings,
    StrictModel,
    VerifyScheme,
)

__all__ = [
    "ALL_SECRETS",
    "DEFAULT_API_URLS",
    "DEFAULT_HEADERS",
    "DEFAULT_MAX_BODY",
    "EVENT_NAME",
    "NO_SECRETS",
    "POLLED_KINDS",
    "TASKMONK_URLS",
    "WHSEC_MAX_KEY",
    "WHSEC_MIN_KEY",
    "AlertsSettings",
    "ApiKey",
    "ApiSettings",
    "DatabaseSettings",
    "DispatchSettings",
    "HttpSettings",
    "LogSettings",
    "ReconcileSettings",
    "RetentionSettings",
    "SecretNeeds",
    "Settings",
    "SourceKind",
    "SourceSettings",
    "UiSettings",
    "VerifyScheme",
    "WatchdogSettings",
    "load_settings",
    "local_default",
    "settings_from_mapping",
]


class DatabaseSettings(StrictModel):
    url: str = "sqlite:///taskhook.db"
    # New deliveries waiting for their commit; past it the intake answers 503 + Retry-After.
    max_queued_writes: int = Field(default=10_000, ge=1)

    @model_validator(mode="after")
    def _known_scheme(self) -> DatabaseSettings:
        if not self.url.startswith(("sqlite:", "postgresql:", "postgres:")):
            raise ValueError("url must start with sqlite:/// or postgresql://")
        return self


class ApiKey(StrictModel):
    key: SecretStr | None = None
    key_env: str | None = None
    scopes: tuple[str, ...] = ()


class ApiSettings(StrictModel):
    keys: dict[str, ApiKey] = Field(default_factory=dict)


class DispatchSettings(StrictModel):
    max_attempts: int = Field(default=8, ge=1)
    backoff_base_seconds: float = Field(default=1.0, gt=0)
    backoff_max_seconds: float = Field(default=600.0, gt=0)
    concurrency: int = Field(default=16, ge=1)
    batch_size: int = Field(default=200, ge=1)
    poll_interval_seconds: float = Field(default=1.0, gt=0)
    # A claim's lease; renewed by every heartbeat while its delivery is in flight, so it only
    # runs out for a process that stopped beating.
    lease_seconds: float = Field(default=60.0, gt=0)
    # How often a process says it is alive (and renews its leases), and how long another
    # process waits after the last word before it takes the silent one's claims over: the
    # others beat every `heartbeat_seconds` too, so claims move at most 8 + 2 = 10 s after
    # the last beat.
    heartbeat_seconds: float = Field(default=2.0, gt=0)
    takeover_seconds: float = Field(default=8.0, gt=0)
    # One handler run's limit, and how many runs of one handler may be going at once (a
    # handler's own `timeout=` / `concurrency=` wins): a synchronous handler's runs each
    # have a thread of their own, so this also bounds its threads.
    handler_timeout_seconds: float = Field(default=30.0, gt=0)
    handler_concurrency: int = Field(default=8, ge=1)
    enabled: bool = True

    @model_validator(mode="after")
    def _renewable(self) -> DispatchSettings:
        # Two heartbeats may be lost (a slow commit, a busy loop) before a claim is in doubt.
        for key in ("lease_seconds", "takeover_seconds"):
            if self.heartbeat_seconds * 3 > getattr(self, key):
                raise ValueError(
                    f"dispatch.heartbeat_seconds ({self.heartbeat_seconds:g}) must be at most "
                    f"a third of dispatch.{key} ({getattr(self, key):g}): leases could not be "
                    "renewed in time and a live process would lose its claims"
                )
        return self


class HttpSettings(StrictModel):
    """Limits of the public front door, enforced before any work is spent on a request."""

    # A sender that has not delivered its whole body this long after the request began gets
    # 408 and its connection closed: slow or stalled clients cannot hold workers forever.
    body_timeout_seconds: float = Field(default=30.0, gt=0)
    # The request line and headers must arrive complete within this (a trickle of bytes
    # does not extend it); otherwise the connection is closed.
    header_timeout_seconds: float = Field(default=10.0, gt=0)
    # An idle kept-alive connection is closed after this.
    keep_alive_seconds: float = Field(default=5.0, gt=0)
    # Request line plus headers, in bytes, and the number of headers: 431 above either.
    max_header_bytes: int = Field(default=16 * 1024, ge=1024)
    max_headers: int = Field(default=100, ge=8)
    # Open connections: past it, only /healthz and /readyz are served; others get 503.
    max_connections: int = Field(default=1000, ge=1)
    # Requests in flight: past it, 503 with Retry-After (health checks excepted).
    max_concurrency: int = Field(default=1000, ge=1)
    # Bytes of bodies held for requests not yet verified, all requests together: past it,
    # 503 with Retry-After, so wrong-token uploads cannot grow memory without bound.
    max_unverified_body_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)


class RetentionSettings(StrictModel):
    """What is kept, how long (``taskhook prune`` and the pruner inside ``serve``)."""

    enabled: bool = True  # prune inside `taskhook serve` every `interval_seconds`
    interval_seconds: float = Field(default=3600.0, gt=0)
    # Raw bodies and headers of processed deliveries (the row, its status and events stay).
    processed_days: float = Field(default=30.0, gt=0)
    # Duplicate receipt records (their count stays on the original).
    duplicate_days: float = Field(default=7.0, gt=0)
    # Raw bodies of dead and quarantined deliveries: kept longer, to be retried or read.
    dead_days: float = Field(default=90.0, gt=0)
    # Duplicate receipts kept as rows per original; later ones are only counted on it.
    max_duplicate_rows: int = Field(default=10, ge=0)


class LogSettings(StrictModel):
    format: Literal["auto", "json", "console"] = "auto"
    level: Literal["debug", "info", "warning", "error"] = "info"


class Settings(StrictModel):
    def secret_values(self) -> tuple[str, ...]:
        """Every secret this configuration holds: redacted wherever it shows up."""
        found: list[str] = []
        for src in self.sources.values():
            found += src.secret_values()
            if (rc := src.reconcile) is not None:
                found += [s.get_secret_value() for s in (rc.api_key, rc.client_secret) if s]
        found += [k.key.get_secret_value() for k in self.api.keys.values() if k.key]
        if self.alerts.secret is not None:
            found.append(self.alerts.secret.get_secret_value())
        if password := _url_password(self.database.url):
            found.append(password)
        return tuple(found)

    database: DatabaseSettings = Field(default_factory=DatabaseSettings)
    sources: dict[str, SourceSettings] = Field(default_factory=dict)
    api: ApiSettings = Field(default_factory=ApiSettings)
    handlers: tuple[str, ...] = ()
    entry_points: bool = True
    dispatch: DispatchSettings = Field(default_factory=DispatchSettings)
    log: LogSettings = Field(default_factory=LogSettings)
    http: HttpSettings = Field(default_factory=HttpSettings)
    retention: RetentionSettings = Field(default_factory=RetentionSettings)
    ui: UiSettings = Field(default_factory=UiSettings)
    alerts: AlertsSettings = Field(default_factory=AlertsSettings)
    watchdog: WatchdogSettings = Field(default_factory=WatchdogSettings)
    insecure_dev: bool = False
    # The ``*_env`` keys (or variables) a command did not resolve (see `SecretNeeds`).
    unresolved: tuple[str, ...] = ()


def _url_password(url: str) -> str:
    parsed = urlsplit(url)
    return parsed.password or dict(parse_qsl(parsed.query)).get("password", "")


def _loc(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(p) for p in loc)


def settings_from_mapping(
    data: Mapping[str, Any],
    *,
    where: str = "settings",
    environ: Mapping[str, str] | None = None,
    needs: SecretNeeds = ALL_SECRETS,
) -> Settings:
    """Validate `data` (the TOML document's shape), resolving the ``*_env`` indirections
    `needs` asks for (the others only when their variable is set)."""
    env = os.environ if environ is None else environ
    doc: dict[str, Any] = {k: v for k, v in data.items()}
    unresolved: list[str] = list(doc.pop("unresolved", ()))

    if url := env.get("TASKHOOK_DATABASE_URL"):
        doc["database"] = {**dict(doc.get("database") or {}), "url": url}

    sources = dict(doc.get("sources") or {})
    for name, raw in sources.items():
        if not isinstance(raw, Mapping):
            raise ConfigError("must be a table", where=where, key=f"sources.{name}")
        src = dict(raw)
        if (var := src.get("secrets_env")) and not needs.source(name) and not env.get(str(var)):
            unresolved.append(f"sources.{name}.secrets_env")
            src["secrets"] = [*src.get("secrets", []), unknowable_key()]
        elif var:
            value = env_value(env, var, where=where, key=f"sources.{name}.secrets_env")
            found = [s.strip() for s in value.split(",") if s.strip()]
            if not found:
                raise ConfigError(
                    f"environment variable {var} is empty or unset",
                    where=where,
                    key=f"sources.{name}.secrets_env",
                )
            src["secrets"] = [*src.get("secrets", []), *found]
        if isinstance(rc := src.get("reconcile"), Mapping):
            rc = dict(rc)
            for field in ("api_key", "client_secret"):
                if var := rc.get(f"{field}_env"):
                    key = f"sources.{name}.reconcile.{field}_env"
                    if not needs.poller(name) and not env.get(str(var)):
                        unresolved.append(key)
                        rc[field] = unknowable_key()
                    else:
                        rc[field] = env_value(env, var, where=where, key=key)
            src["reconcile"] = rc
        sources[name] = src
    if sources:
        doc["sources"] = sources

    api = dict(doc.get("api") or {})
    keys = dict(api.get("keys") or {})
    for name, raw in keys.items():
        if isinstance(raw, Mapping) and (var := raw.get("key_env")):
            if not needs.api_keys and not env.get(str(var)):
                unresolved.append(f"api.keys.{name}.key_env")  # no key: nobody gets in
                continue
            value = env_value(env, var, where=where, key=f"api.keys.{name}.key_env")
            keys[name] = {**raw, "key": value}
    if keys:
        doc["api"] = {**api, "keys": keys}

    resolve_alerts(doc, env, needs, where=where, unresolved=unresolved)
    if unresolved:
        doc["unresolved"] = tuple(unresolved)
    try:
        settings = Settings.model_validate(doc)
    except ValidationError as exc:
        first = exc.errors()[0]
        message = str(first["msg"]).removeprefix("Value error, ")  # pydantic's prefix
        raise ConfigError(message, where=where, key=_loc(first["loc"])) from None
    for name in settings.sources:
        if not name or "/" in name or name != name.strip():
            raise ConfigError("source names must be URL path segments", where=where, key=name)
    return settings


def load_settings(
    path: str | Path | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    insecure_dev: bool = False,
    needs: SecretNeeds = ALL_SECRETS,
) -> Settings:
    """Settings from `path`, else ``$TASKHOOK_CONFIG``, else ``./taskhook.toml``, else the
    built-in local default (SQLite ``./taskhook.db`` and one ``refonte`` source). Secrets
    in the environment are resolved as `needs` says."""
    env = os.environ if environ is None else environ
    chosen = path or env.get("TASKHOOK_CONFIG")
    if chosen is None and Path("taskhook.toml").is_file():
        chosen = "taskhook.toml"
    if chosen is None:
        return local_default(environ=env, insecure_dev=insecure_dev, needs=needs)
    where = str(chosen)
    try:
        data = tomllib.loads(Path(chosen).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError("file not found", where=where) from None
    except (OSError, UnicodeDecodeError) as exc:  # a directory, no permission, not text
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigError(f"cannot be read: {reason}", where=where) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"not valid TOML: {exc}", where=where) from None
    settings = settings_from_mapping(data, where=where, environ=env, needs=needs)
    if insecure_dev:
        settings = settings.model_copy(update={"insecure_dev": True})
    return settings


def local_default(
    *, environ: Mapping[str, str], insecure_dev: bool = False, needs: SecretNeeds = ALL_SECRETS
) -> Settings:
    """The zero-config setup: `refonte` source keyed by ``$TASKHOOK_REFONTE_SECRET``, and an
    all-scopes API key from ``$TASKHOOK_OPS_KEY`` when that is set.

    Without a secret it refuses unless `insecure_dev`, in which case the source accepts anything.
    """
    secret = environ.get("TASKHOOK_REFONTE_SECRET", "")
    source: dict[str, Any] = {"kind": "refonte"}
    pending: tuple[str, ...] = ()
    if secret:
        source |= {"verify": "header-token", "secrets": [secret]}
    elif insecure_dev:
        source |= {"verify": "none"}
    elif not needs.source("refonte"):
        # A command that never verifies: the source keeps its scheme, with a key nobody holds.
        source |= {"verify": "header-token", "secrets": [unknowable_key()]}
        pending = ("TASKHOOK_REFONTE_SECRET",)
    else:
        raise ConfigError(
            "no configuration file and no secret: set TASKHOOK_REFONTE_SECRET, pass --config, "
            "or pass --insecure-dev to accept unauthenticated deliveries",
            where="built-in default",
            key="sources.refonte.secrets",
        )
    doc: dict[str, Any] = {
        "database": {"url": "sqlite:///taskhook.db"},
        "sources": {"refonte": source},
        "insecure_dev": insecure_dev and not secret,
        "unresolved": pending,
    }
    if environ.get("TASKHOOK_OPS_KEY"):
        # One key with every scope, so the read/admin API works without a config file.
        scopes = ["tasks.read", "deliveries.read", "deliveries.write", "task.read", "task.edit"]
        doc["api"] = {"keys": {"ops": {"key_env": "TASKHOOK_OPS_KEY", "scopes": scopes}}}
    return settings_from_mapping(doc, where="built-in default", environ=environ, needs=needs)
