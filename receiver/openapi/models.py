"""The JSON answers of the HTTP routes, as pydantic models: the OpenAPI document's schemas.

Kept to what the routes return (`receiver.api`, `receiver.intake`, the ledger's and the
throughput report's routes); the document refers to each by its class name.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from receiver.records import DeliveryStatus


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class ErrorAnswer(_Open):
    """A refusal: what went wrong, sometimes with the id or limit it concerns."""

    error: str


class CallbackAnswer(BaseModel):
    status: Literal["accepted", "duplicate"] = Field(
        description="accepted: stored now; duplicate: stored before (the first one's id)"
    )
    delivery_id: str


class CallbackRefusal(ErrorAnswer):
    """400/415: an authenticated delivery stored as quarantined (or, unverified and
    unreadable, refused without storing)."""

    reason: str | None = None
    status: Literal["quarantined"] | None = None
    delivery_id: str | None = None


class VerificationFailed(ErrorAnswer):
    reason: str


class TooLarge(ErrorAnswer):
    limit_bytes: int


class WorkstreamAnswer(_Open):
    """The Throughput API's own answers: 202 ``Data successfully received.``; 400/415/422
    with the fields refused; 404 an unknown workstream."""

    message: str


class Health(BaseModel):
    status: Literal["ok", "ready", "not ready"]
    reason: str | None = None


class Duplicates(BaseModel):
    count: int
    last_seen: str | None


class VerifiedBy(BaseModel):
    key_index: int
    key_fingerprint: str | None


class DeliverySummary(BaseModel):
    delivery_id: str
    source: str
    kind: str
    status: DeliveryStatus
    task_id: str | None
    received_at: str | None
    attempts: int
    next_attempt_at: str | None
    last_error: str | None
    duplicate_of: str | None
    duplicates: Duplicates
    sender_delivery_id: str | None
    verified_by: VerifiedBy | None
    replayed: bool
    reconciled: bool
    operator: str | None
    processed_at: str | None


class DeliveryDetail(DeliverySummary):
    headers: dict[str, str] = Field(description="as received, secrets redacted")
    content_type: str | None
    body: str | None = Field(None, description="the exact body, when UTF-8 (or pruned: null)")
    body_b64: str | None = Field(None, description="the exact body in base64, when not UTF-8")
    last_traceback: str | None


class DeliveryPage(BaseModel):
    docs: list[DeliverySummary]
    total: int
    limit: int
    has_more: bool
    next_token: str | None


class RetryAnswer(BaseModel):
    status: Literal["received"]
    delivery_id: str


class Task(_Open):
    """The task as the vendor's API shows it, with the ledger's status and response."""

    task_id: str
    status: str


class TaskPage(BaseModel):
    docs: list[Task]
    total: int
    limit: int
    offset: int
    has_more: bool
    next_token: str | None


class ReviewAnswer(_Open):
    task_id: str
    delivery_id: str | None = None
    status: str | None = None


class ReviewResult(BaseModel):
    task_id: str
    status: int
    body: ReviewAnswer


class ReviewResults(BaseModel):
    results: list[ReviewResult]


class ThroughputRow(BaseModel):
    worker_id: str
    use_case_id: str
    day: str
    tasks: float
    subtasks: float
    duration_seconds: float
    records: int


class ThroughputReport(BaseModel):
    rows: list[ThroughputRow]


MODELS: tuple[type[BaseModel], ...] = (
    ErrorAnswer, CallbackAnswer, CallbackRefusal, VerificationFailed, TooLarge,
    WorkstreamAnswer, Health, DeliverySummary, DeliveryDetail, DeliveryPage, RetryAnswer,
    Task, TaskPage, ReviewAnswer, ReviewResults, ThroughputReport,
)  # fmt: skip
