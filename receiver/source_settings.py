"""Settings of one source (``[sources.NAME]``) and of its vendor poller (``.reconcile``).

Part of `receiver.config`, which re-exports everything here; kept apart for size.
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationInfo,
    field_validator,
    model_validator,
)

from receiver.signing import standard_webhooks_key_size

SourceKind = Literal[
    "refonte", "cloudfactory", "standard-webhooks", "document-review", "clarifai", "taskmonk",
    "labelbox", "label-studio",
]  # fmt: skip
# Kinds whose vendor never calls back: their deliveries come only from the poller.
POLLED_KINDS = frozenset({"clarifai", "taskmonk"})
TASKMONK_URLS = {"staging": "https://preprod.taskmonk.io", "production": "https://api.taskmonk.io"}
DEFAULT_API_URLS = {"refonte": "https://api.refonte.com", "clarifai": "https://api.clarifai.com"}
VerifyScheme = Literal["header-token", "hmac-sha256", "hmac-sha1", "standard-webhooks", "none"]

DEFAULT_MAX_BODY = 10 * 1024 * 1024
EVENT_NAME = re.compile(r"[a-z0-9_-]+(\.[a-z0-9_-]+)+")
DEFAULT_HEADERS: dict[str, str] = {
    "header-token": "refonte-callback-auth",
    "hmac-sha256": "x-signature-sha256",
    "hmac-sha1": "x-hub-signature",  # GitHub's legacy header, as Labelbox signs
}


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ReconcileSettings(StrictModel):
    """How to poll a source's vendor API (``[sources.NAME.reconcile]``)."""

    # `base_url` wins; TaskMonk otherwise picks its staging or production API by `environment`.
    base_url: str | None = None
    environment: Literal["staging", "production"] = "production"
    # refonte: HTTP basic with the key as user name; clarifai: ``Authorization: Key ...``
    api_key: SecretStr | None = None
    api_key_env: str | None = None
    # taskmonk: OAuth2 client credentials
    client_id: str | None = None
    client_secret: SecretStr | None = None
    client_secret_env: str | None = None
    token_url: str | None = None
    project_id: str | None = None
    # clarifai: tasks of one app (``/v2/users/{user_id}/apps/{app_id}/tasks``), else ``/v2/tasks``
    user_id: str | None = None
    app_id: str | None = None
    # taskmonk: the output fields to ask for (empty: every field)
    output_fields: tuple[str, ...] = ()
    # taskmonk: the output file's format (the SDK's `output_format`; CSV is its default)
    output_format: Literal["CSV", "JSON"] = "CSV"
    # taskmonk: how long to follow an output job before the pass fails, naming the job
    job_wait_seconds: float = Field(default=600.0, gt=0)
    # Run the poller inside `taskhook serve` every `interval_seconds`.
    enabled: bool = False
    interval_seconds: float = Field(default=300.0, gt=0)
    # refonte: poll `updated_after` this long before the last pass began (clock skew, and
    # tasks committed while the previous pass ran).
    overlap_seconds: float = Field(default=300.0, ge=0)
    page_size: int = Field(default=100, ge=1, le=1000)
    timeout_seconds: float = Field(default=30.0, gt=0)
    max_retries: int = Field(default=5, ge=0)
    backoff_base_seconds: float = Field(default=1.0, ge=0)
    backoff_max_seconds: float = Field(default=60.0, ge=0)

    def secret(self) -> str:
        return self.api_key.get_secret_value() if self.api_key else ""


class SourceSettings(StrictModel):
    kind: SourceKind
    # Required, except for polled kinds (nothing calls them back, so nothing to verify).
    verify: VerifyScheme | None = Field(default=None, validate_default=True)
    header: str = ""
    secrets: tuple[SecretStr, ...] = ()
    secrets_env: str | None = None
    tolerance_seconds: int = Field(default=300, ge=0)
    max_body_bytes: int = Field(default=DEFAULT_MAX_BODY, gt=0)
    # cloudfactory: POST /v1/workstreams/{workstream_id}/task_completed (default: the name),
    # and the use cases / task definitions the workstream accepts (empty: any).
    workstream_id: str | None = None
    use_case_ids: tuple[str, ...] = ()
    task_definition_ids: tuple[str, ...] = ()
    # standard-webhooks kind: the payload `type`s this source sends; each becomes an event
    # name handlers can register for.
    events: tuple[str, ...] = ()
    reconcile: ReconcileSettings | None = None

    @field_validator("verify")
    @classmethod
    def _verify_unless_polled(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None and info.data.get("kind") not in POLLED_KINDS:
            raise ValueError("Field required")
        return value

    @model_validator(mode="after")
    def _event_names(self) -> SourceSettings:
        for name in self.events:
            if not EVENT_NAME.fullmatch(name):
                raise ValueError(f"event name {name!r} must look like 'invoice.paid'")
        if self.kind == "standard-webhooks" and not self.events:
            raise ValueError("a standard-webhooks source lists the event `events` it sends")
        return self

    @model_validator(mode="after")
    def _complete(self) -> SourceSettings:
        if self.kind in POLLED_KINDS:
            if self.verify is not None:
                raise ValueError(f"a {self.kind} source is polled, not called back: no `verify`")
            if self.reconcile is None:
                raise ValueError(f"a {self.kind} source needs a [reconcile] table")
        elif self.verify != "none" and not self.secrets:
            raise ValueError(f"verify = {self.verify!r} needs `secrets` or `secrets_env`")
        if self.kind == "label-studio" and self.verify == "header-token" and not self.header:
            # The user picks the header on the webhook in Label Studio: no default can guess it.
            raise ValueError("a label-studio header-token source names its `header`")
        if self.verify == "standard-webhooks":
            for n, secret in enumerate(self.secret_values(), start=1):
                _check_whsec(secret, n)
        if self.reconcile is not None:
            self._check_reconcile(self.reconcile)
        return self

    def _check_reconcile(self, rc: ReconcileSettings) -> None:
        if self.kind not in ("refonte", "clarifai", "taskmonk"):
            raise ValueError(f"a {self.kind} source has no vendor API to reconcile against")
        if self.kind == "taskmonk":
            if not (rc.client_id and rc.client_secret and rc.project_id):
                raise ValueError("reconcile needs client_id, client_secret and project_id")
        elif rc.api_key is None:
            raise ValueError("reconcile needs `api_key` or `api_key_env`")

    @property
    def scheme(self) -> VerifyScheme:
        """The verification scheme; a polled source's synthesized deliveries carry none."""
        return self.verify or "none"

    @property
    def polled(self) -> bool:
        return self.kind in POLLED_KINDS

    @property
    def api_url(self) -> str:
        rc = self.reconcile
        if rc is not None and rc.base_url:
            return rc.base_url.rstrip("/")
        if self.kind == "taskmonk":
            return TASKMONK_URLS[rc.environment if rc else "production"]
        return DEFAULT_API_URLS.get(self.kind, "")

    @property
    def header_name(self) -> str:
        if not self.header and self.kind == "cloudfactory" and self.verify == "header-token":
            return "x-api-key"  # the Throughput API's per-workstream key
        return (self.header or DEFAULT_HEADERS.get(self.scheme, "")).lower()

    def secret_values(self) -> tuple[str, ...]:
        return tuple(s.get_secret_value() for s in self.secrets)


# The Standard Webhooks specification's key sizes: shorter keys can be guessed.
WHSEC_MIN_KEY, WHSEC_MAX_KEY = 24, 64


def _check_whsec(secret: str, n: int) -> None:
    encoded = secret.removeprefix("whsec_")
    if secret.startswith("whsec_"):
        try:
            size = len(base64.b64decode(encoded, validate=True)) if encoded else 0
        except (binascii.Error, ValueError):
            raise ValueError(f"secret {n}: whsec_ must be followed by base64") from None
    else:
        size = standard_webhooks_key_size(secret)
    if not WHSEC_MIN_KEY <= size <= WHSEC_MAX_KEY:
        raise ValueError(
            f"secret {n}: a Standard Webhooks key must be {WHSEC_MIN_KEY} to {WHSEC_MAX_KEY} "
            f"bytes, this one is {size}"
        )
