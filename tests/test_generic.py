"""A generic Standard Webhooks source: the payload's `type` is the event handlers get."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime

import pytest

from receiver.config import settings_from_mapping
from receiver.errors import ConfigError, RegistryError
from receiver.events import Event
from receiver.registry import HandlerRegistry
from receiver.verify import sign_standard_webhooks
from tests.conftest import BACKENDS, AppFactory, client_for


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
BILLING = {
    "billing": {"kind": "standard-webhooks", "verify": "standard-webhooks", "secrets": [SECRET],
                "events": ["invoice.paid", "invoice.voided"]},
}  # fmt: skip


def signed(payload: dict[str, object], msg_id: str) -> tuple[bytes, dict[str, str]]:
    body = json.dumps(payload).encode()
    headers = sign_standard_webhooks(body, SECRET, msg_id=msg_id, timestamp=int(time.time()))
    return body, headers | {"content-type": "application/json"}


async def test_declared_types_reach_the_handlers_registered_for_them(
    build_app: AppFactory,
) -> None:
    paid: list[Event] = []

    def setup(registry: HandlerRegistry) -> None:
        registry.on("invoice.paid", paid.append, name="paid")

    app = build_app(setup=setup, sources=BILLING)
    payload = {"type": "invoice.paid", "timestamp": "2026-11-01T10:00:00Z",
               "data": {"id": "inv_1", "amount": 420}}  # fmt: skip
    async with app.started(), client_for(app) as client:
        body, headers = signed(payload, "msg_1")
        assert (await client.post("/callbacks/billing", content=body, headers=headers)).json()[
            "status"
        ] == "accepted"
        voided, headers = signed({"type": "invoice.voided", "data": {"id": "inv_2"}}, "msg_2")
        await client.post("/callbacks/billing", content=voided, headers=headers)
        await app.dispatcher.drain()
    assert [(e.name, e.task_id, e.payload) for e in paid] == [
        ("invoice.paid", "inv_1", {"id": "inv_1", "amount": 420})
    ]
    assert paid[0].occurred_at == datetime(2026, 11, 1, 10, tzinfo=UTC)


async def test_an_undeclared_type_is_quarantined_with_the_reason(build_app: AppFactory) -> None:
    app = build_app(sources=BILLING)
    async with app.started(), client_for(app) as client:
        body, headers = signed({"type": "invoice.refunded", "data": {}}, "msg_3")
        response = await client.post("/callbacks/billing", content=body, headers=headers)
        missing, headers = signed({"data": {}}, "msg_4")
        no_type = await client.post("/callbacks/billing", content=missing, headers=headers)
    assert response.status_code == 400
    assert "invoice.refunded" in response.json()["reason"]
    assert no_type.status_code == 400 and "type" in no_type.json()["reason"]


def test_handlers_for_undeclared_names_fail_at_registration(build_app: AppFactory) -> None:
    def setup(registry: HandlerRegistry) -> None:
        registry.on("invoice.refunded", lambda e: None, name="x")

    with pytest.raises(RegistryError, match=r"invoice\.refunded"):
        build_app(setup=setup, sources=BILLING)


@pytest.mark.parametrize(
    ("events", "words"), [([], "lists the event"), (["Invoice Paid"], "must look like")]
)
def test_event_declarations_are_checked(events: list[str], words: str) -> None:
    source = BILLING["billing"] | {"events": events}
    with pytest.raises(ConfigError, match=words):
        settings_from_mapping({"sources": {"billing": source}}, environ={})
