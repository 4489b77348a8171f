"""Labelbox: the hmac-sha1 `X-Hub-Signature` scheme, the body shapes, and end to end.

Known answers were computed outside this code (``openssl dgst -sha1 -hmac``, and RFC 2202's
test case 2) and are written as literals, so a bug shared by signer and verifier cannot pass.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any

import httpx
import pytest

from receiver.config import settings_from_mapping
from receiver.errors import ConfigError, PayloadError, VerificationError
from receiver.events import EVENT_NAMES, Event
from receiver.records import DeliveryRecord, DeliveryStatus
from receiver.registry import HandlerRegistry
from receiver.signing import sign, sign_hmac_sha1
from receiver.sources.labelbox import TOPICS, LabelboxAdapter
from receiver.verify import MAX_CREDENTIAL_HEADER, precheck, verify, verify_hmac_sha1
from tests.conftest import BACKENDS, SAMPLES, AppFactory, client_for, ops


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


# RFC 2202, HMAC-SHA1 test case 2.
RFC_KEY = "Jefe"
RFC_BODY = b"what do ya want for nothing?"
RFC_HEX = "effcdf6ae5eb2fa2d27416d5f184df9c259a7c79"

# `printf %s BODY | openssl dgst -sha1 -hmac example_secret` (and rotated_secret); the
# SHA-256 one is the same body under `-sha256`, to show it is refused in a SHA-1 header.
SECRET = "example_secret"  # the secret of Labelbox's own receiving example
ROTATED = "rotated_secret"
BODY = b'{"id":"clur5tlda1n2a07dc0i0zdd4k","dataRow":{"id":"clf9spzxq029m071nehy60a6v"}}'
BODY_SHA1 = "2a359fe67d2b3e264f6b3d100738fd25c277d38d"
BODY_SHA1_ROTATED = "da13a123ee80f18d2d03ce784b587af3835526f9"
BODY_SHA256 = "dd7f26f3ee298ee0794284cc66a3a8f662b922a97b6b4cf1a87246b50a238ed3"
HEADER = "X-Hub-Signature"
DATA_ROW = "clf9spzxq029m071nehy60a6v"
LABEL = "clur5tlda1n2a07dc0i0zdd4k"


def hub(value: str) -> dict[str, str]:
    return {"x-hub-signature": value}


# --- the scheme: known answers -----------------------------------------------------------


def test_rfc2202_known_answer() -> None:
    assert sign_hmac_sha1(RFC_BODY, RFC_KEY, header=HEADER) == hub("sha1=" + RFC_HEX)
    assert (
        verify_hmac_sha1(RFC_BODY, hub("sha1=" + RFC_HEX), [RFC_KEY], header=HEADER).key_index == 0
    )


@pytest.mark.parametrize(
    "value",
    [
        "sha1=" + BODY_SHA1,
        BODY_SHA1,
        "SHA1=" + BODY_SHA1.upper(),
        f"sha1=deadbeef, sha1={BODY_SHA1}",
    ],
)
def test_known_answer_forms(value: str) -> None:
    assert verify("hmac-sha1", BODY, hub(value), [SECRET], header=HEADER, now=0).key_index == 0


def test_rotation_reports_which_secret_matched() -> None:
    verified = verify_hmac_sha1(BODY, hub("sha1=" + BODY_SHA1_ROTATED), [SECRET, ROTATED],
                                header=HEADER)  # fmt: skip
    assert verified.key_index == 1 and verified.delivery_id is None


def test_labelbox_documented_check_accepts_what_we_sign() -> None:
    """Labelbox's receiving example, verbatim in substance, as the reference verifier."""
    headers = sign("hmac-sha1", BODY, SECRET, header=HEADER)
    computed = hmac.new(SECRET.encode(), msg=BODY, digestmod=hashlib.sha1).hexdigest()
    assert headers["x-hub-signature"] == "sha1=" + computed == "sha1=" + BODY_SHA1


# --- the scheme: refusals ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "secrets", "reason"),
    [
        ({}, [SECRET], "missing header x-hub-signature"),
        (hub(""), [SECRET], "missing header x-hub-signature"),
        (hub("sha1=" + BODY_SHA1), ["wrong"], "invalid signature in header x-hub-signature"),
        (hub("sha256=" + BODY_SHA256), [SECRET], "malformed signature"),
        (hub("sha1=KjWf5n0rPiZPaz0QBzj9JcJ3040="), [SECRET], "malformed signature"),  # base64
        (hub("sha1=" + BODY_SHA1[:-1]), [SECRET], "malformed signature"),
        (hub("sha1=" + BODY_SHA1), [""], "no secret configured"),
    ],
)
def test_refusals(headers: dict[str, str], secrets: list[str], reason: str) -> None:
    with pytest.raises(VerificationError, match=reason):
        verify("hmac-sha1", BODY, headers, secrets, header=HEADER, now=0)


def test_one_byte_changed_fails() -> None:
    tampered = BODY.replace(b"clur5", b"clur6")
    with pytest.raises(VerificationError, match="invalid signature"):
        verify_hmac_sha1(tampered, hub("sha1=" + BODY_SHA1), [SECRET], header=HEADER)


def test_an_empty_secret_never_matches_the_empty_body() -> None:
    empty_sig = "sha1=fbdb1d1b18aa6c08324b7d64b71fb76370690e1d"  # HMAC-SHA1("", "")
    with pytest.raises(VerificationError, match="invalid signature"):
        verify_hmac_sha1(b"", hub(empty_sig), ["", SECRET], header=HEADER)


def test_precheck_needs_the_header_before_the_body() -> None:
    with pytest.raises(VerificationError, match="missing header x-hub-signature"):
        precheck("hmac-sha1", {}, [SECRET], header=HEADER, now=0)
    with pytest.raises(VerificationError, match="longer than"):
        precheck("hmac-sha1", hub("a" * (MAX_CREDENTIAL_HEADER + 1)), [SECRET], header=HEADER,
                 now=0)  # fmt: skip
    assert precheck("hmac-sha1", hub("sha1=" + BODY_SHA1), [SECRET], header=HEADER, now=0) is None


def test_config_defaults_the_header_for_the_scheme() -> None:
    source = {"kind": "labelbox", "verify": "hmac-sha1", "secrets": [SECRET]}
    settings = settings_from_mapping({"sources": {"labelbox": source}}, environ={})
    assert settings.sources["labelbox"].header_name == "x-hub-signature"
    with pytest.raises(ConfigError, match="needs `secrets`"):
        settings_from_mapping({"sources": {"labelbox": source | {"secrets": []}}}, environ={})


# --- the body shapes and their events ------------------------------------------------------


def sample(name: str) -> bytes:
    return (SAMPLES / "labelbox" / name).read_bytes()


def delivery(body: bytes, topic: str | None, **changes: Any) -> DeliveryRecord:
    headers = {"content-type": "application/json"} | ({"x-labelbox-event": topic} if topic else {})
    fields: dict[str, Any] = {
        "id": "dlv_1", "seq": 1, "source": "labelbox", "kind": "labelbox",
        "received_at": 1_712_600_000.0, "headers": headers, "body": body,
        "content_type": "application/json", "status": DeliveryStatus.RECEIVED,
        "task_id": DATA_ROW, "sender_delivery_id": None, "key_index": 0,
        "key_fingerprint": None, "attempts": 0, "next_attempt_at": 0.0, "last_error": None,
        "last_traceback": None, "duplicate_of": None, "replayed": False,
        "events_derived": False, "processed_at": None,
    }  # fmt: skip
    return DeliveryRecord(**(fields | changes))


def test_v1_label_created_is_the_data_rows_completion() -> None:
    adapter = LabelboxAdapter()
    assert adapter.parse(sample("label_created.v1.json"), "application/json").task_id == DATA_ROW
    [event] = adapter.events("labelbox", delivery(sample("label_created.v1.json"), "LABEL_CREATED"))
    assert (event.name, event.task_id) == ("task.completed", DATA_ROW)
    assert event.payload["label_id"] == LABEL
    assert event.payload["project_id"] == "cltd3vkju021907u63w2odj69"
    # v1 carries the label as JSON text: handlers get it decoded.
    assert event.payload["response"]["objects"][0]["title"] == "Blue bird"
    assert event.occurred_at.isoformat() == "2024-04-08T16:21:26+00:00"


def test_the_same_label_in_either_shape_is_one_completion() -> None:
    adapter = LabelboxAdapter()
    [v1] = adapter.events("labelbox", delivery(sample("label_created.v1.json"), "LABEL_CREATED"))
    [v2] = adapter.events("labelbox", delivery(sample("label_created.v2.json"), "LABEL_CREATED",
                                               id="dlv_2"))  # fmt: skip
    assert v1.event_id == v2.event_id and v2.delivery_id == "dlv_2"
    assert v2.payload["response"]["objects"][0]["name"] == "bounding_box"
    assert v2.payload["data_row"]["global_key"] == "2560px-Kitano_Street_Kobe01s5s4110.jpeg"


def test_each_update_is_its_own_fact() -> None:
    adapter = LabelboxAdapter()
    body = sample("label_updated.v1.json")
    [updated] = adapter.events("labelbox", delivery(body, "label_updated"))  # any case
    assert (updated.name, updated.task_id) == ("task.updated", DATA_ROW)
    assert updated.payload["response"]["objects"][0]["bbox"]["top"] == 180
    later = body.replace(b"16:34:02", b"16:35:00")
    [again] = adapter.events("labelbox", delivery(later, "LABEL_UPDATED"))
    assert again.event_id != updated.event_id


@pytest.mark.parametrize(
    ("file", "topic", "task_id"),
    [("label_deleted.v1.json", "LABEL_DELETED", DATA_ROW),
     ("review_created.json", "REVIEW_CREATED", None),
     ("review_created.json", "REVIEW_UPDATED", None)],
)  # fmt: skip
def test_other_topics_keep_their_name(file: str, topic: str, task_id: str | None) -> None:
    body = sample(file)
    [event] = LabelboxAdapter().events("labelbox", delivery(body, topic, task_id=task_id))
    assert (event.name, event.task_id) == (f"labelbox.{topic.lower()}", task_id)
    assert event.payload == json.loads(body)


def test_every_topic_yields_a_known_event_name() -> None:
    adapter = LabelboxAdapter()
    for topic in TOPICS:
        [event] = adapter.events("labelbox", delivery(sample("label_created.v1.json"), topic))
        assert event.name in EVENT_NAMES, topic


@pytest.mark.parametrize(
    ("body", "topic", "reason"),
    [
        (sample("label_created.v1.json"), None, "names no Labelbox topic"),
        (sample("label_created.v1.json"), "LABEL_EXPLODED", "names no Labelbox topic"),
        (sample("review_created.json"), "LABEL_CREATED", "names no label"),
        (b'{"dataRow": {"id": ""}, "id": "x"}', "LABEL_CREATED", "dataRow.id"),
        (b"[1, 2]", "LABEL_CREATED", "JSON object"),
    ],
)
def test_unreadable_deliveries_say_why(body: bytes, topic: str | None, reason: str) -> None:
    with pytest.raises(PayloadError, match=reason):
        LabelboxAdapter().events("labelbox", delivery(body, topic))


# --- end to end: Labelbox's wire format → intake → dispatch → events and deliveries API -----

SOURCES = {"labelbox": {"kind": "labelbox", "verify": "hmac-sha1", "secrets": [SECRET, ROTATED]}}


async def post(
    client: httpx.AsyncClient, file: str, topic: str | None, secret: str = SECRET
) -> httpx.Response:
    body = sample(file)
    headers = sign("hmac-sha1", body, secret, header="x-hub-signature") | {
        "content-type": "application/json", "x-labelbox-id": f"lb-{file}-{topic}"}  # fmt: skip
    if topic:
        headers["x-labelbox-event"] = topic
    return await client.post("/callbacks/labelbox", content=body, headers=headers)


async def test_end_to_end_from_the_wire_to_the_events_and_deliveries(
    build_app: AppFactory,
) -> None:
    seen: list[Event] = []

    def setup(registry: HandlerRegistry) -> None:
        registry.on(["task.completed", "task.updated", "labelbox.review_created"], seen.append,
                    name="seen")  # fmt: skip

    app = build_app(setup=setup, sources=SOURCES)
    async with app.started(), client_for(app) as client:
        created = await post(client, "label_created.v1.json", "LABEL_CREATED")
        again = await post(client, "label_created.v1.json", "LABEL_CREATED")
        forged = await post(client, "label_updated.v1.json", "LABEL_UPDATED", secret="nope")
        updated = await post(client, "label_updated.v1.json", "LABEL_UPDATED", secret=ROTATED)
        review = await post(client, "review_created.json", "REVIEW_CREATED")
        headless = await post(client, "label_deleted.v1.json", None)
        await app.dispatcher.drain()
        listed = (await client.get(f"/v1/deliveries?source=labelbox&task_id={DATA_ROW}",
                                   headers=ops())).json()  # fmt: skip
        stored = {d["delivery_id"]: await app.storage.load_events(d["delivery_id"])
                  for d in listed["docs"]}  # fmt: skip
    assert created.json()["status"] == "accepted" and review.json()["status"] == "accepted"
    assert again.json() == {"status": "duplicate", "delivery_id": created.json()["delivery_id"]}
    assert forged.status_code == 401
    # In receipt order for the data row; the review names no data row, so it is a lane apart.
    row = [e for e in seen if e.task_id == DATA_ROW]
    assert [e.name for e in row] == ["task.completed", "task.updated"]
    assert row[1].payload["response"]["objects"][0]["bbox"]["width"] == 522
    assert [e.name for e in seen if e.task_id is None] == ["labelbox.review_created"]
    # The data row's deliveries, newest first: the topic-less one is quarantined, saying why;
    # the repeated one is a receipt of the first.
    docs = [d for d in listed["docs"] if d["status"] != "duplicate"]
    assert [d["delivery_id"] for d in docs] == [headless.json()["delivery_id"],
        updated.json()["delivery_id"], created.json()["delivery_id"]]  # fmt: skip
    assert [d["status"] for d in docs] == ["quarantined", "processed", "processed"]
    assert "x-labelbox-event" in docs[0]["last_error"]
    assert docs[1]["verified_by"]["key_index"] == 1  # the rotated secret
    assert [d["duplicate_of"] for d in listed["docs"] if d["status"] == "duplicate"] == [
        created.json()["delivery_id"]
    ]
    assert [e.name for e in stored[created.json()["delivery_id"]]] == ["task.completed"]
    assert [e.name for e in stored[updated.json()["delivery_id"]]] == ["task.updated"]
