"""The operator-facing sections of the configuration: ``[ui]``, ``[alerts]``, ``[watchdog]``.

Kept apart from `receiver.config` (the intake's sections) so each stays readable; `Settings`
carries them like any other section and plugins read theirs through `registry.settings`.
"""

from __future__ import annotations

from collections.abc import Mapping, MutableSequence
from typing import Any, Literal

from pydantic import Field, SecretStr, model_validator

from receiver.errors import ConfigError
from receiver.secret_needs import SecretNeeds, env_value, unknowable_key
from receiver.source_settings import StrictModel


class UiSettings(StrictModel):
    """The dashboard at ``/ui/``."""

    enabled: bool = True
    # How long a sign-in lasts; the cookie is signed with this installation's own key.
    session_hours: float = Field(default=12.0, gt=0, le=24 * 30)
    # How often the overview's live counters refresh in the browser,
    refresh_seconds: float = Field(default=5.0, ge=1, le=3600)
    # and how often each process adds its counters to the series behind them and the charts.
    sample_seconds: float = Field(default=10.0, ge=1, le=60)
    # Mark the session cookie `Secure`: "auto" when the request came over https (behind a
    # proxy, with `serve --proxy-headers`), or always / never.
    secure_cookie: Literal["auto", "always", "never"] = "auto"


class AlertsSettings(StrictModel):
    """The built-in ``alerts`` handler: where it posts, and what it posts about."""

    # Where alerts are POSTed; no URL, no alerts.
    url: str | None = None
    # The receiver's public address (https://taskhook.example.com): links to the dashboard
    # in alerts are made absolute with it; without it they are paths.
    public_url: str | None = None
    # "slack": ``{"text": ...}`` (Slack, Mattermost, Discord's /slack endpoint);
    # "json": the signal as a JSON object.
    format: Literal["slack", "json"] = "slack"
    # With a secret (``whsec_...``, or ``secret_env``), bodies are signed as Standard Webhooks.
    secret: SecretStr | None = None
    secret_env: str | None = None
    dead: bool = True  # a delivery went dead
    # Verification failures of one source within `window_seconds` that raise an alert.
    verification_failures: int = Field(default=20, ge=1)
    window_seconds: float = Field(default=300.0, gt=0)
    # The oldest delivery waiting, past this many seconds, raises an alert (0: never).
    backlog_age_seconds: float = Field(default=600.0, ge=0)
    late_tasks: bool = True  # an expected task's callback did not come by its deadline
    # The same alert (kind and subject) is posted at most once in this many seconds,
    repeat_seconds: float = Field(default=3600.0, ge=0)
    # and no more than this many alerts in any hour, whatever they are about.
    max_per_hour: int = Field(default=60, ge=1)
    # How often the receiver checks the rates and ages above.
    check_seconds: float = Field(default=15.0, gt=0)
    timeout_seconds: float = Field(default=5.0, gt=0)

    @model_validator(mode="after")
    def _url_scheme(self) -> AlertsSettings:
        for name in ("url", "public_url"):
            value = getattr(self, name)
            if value is not None and not value.startswith(("http://", "https://")):
                raise ValueError(f"alerts.{name} must be an http:// or https:// URL")
        return self


class WatchdogSettings(StrictModel):
    """Tasks whose callbacks are expected (``POST /v1/tasks/expected``, ``taskhook expect``)."""

    enabled: bool = True
    # How often overdue expectations are looked for.
    check_seconds: float = Field(default=30.0, gt=0)
    # An overdue task of a source with a ``[reconcile]`` section is asked for from the
    # vendor's API (once per expectation), and what it says goes through the intake.
    reconcile_overdue: bool = True


def resolve_alerts(
    doc: dict[str, Any],
    env: Mapping[str, str],
    needs: SecretNeeds,
    *,
    where: str,
    unresolved: MutableSequence[str],
) -> None:
    """Resolve ``[alerts] secret_env`` in `doc` as the other ``*_env`` keys are: only commands
    that send (those that need API keys: serve) must have it set."""
    alerts = doc.get("alerts")
    if alerts is None:
        return
    if not isinstance(alerts, Mapping):
        raise ConfigError("must be a table", where=where, key="alerts")
    alerts = dict(alerts)
    if var := alerts.get("secret_env"):
        if not needs.api_keys and not env.get(str(var)):
            unresolved.append("alerts.secret_env")
            alerts["secret"] = unknowable_key()
        else:
            alerts["secret"] = env_value(env, var, where=where, key="alerts.secret_env")
    doc["alerts"] = alerts
