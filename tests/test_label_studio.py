"""Label Studio: its webhook payloads, the user's auth header, and end to end."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from receiver.config import settings_from_mapping
from receiver.errors import ConfigError, PayloadError, VerificationError
from receiver.events import EVENT_NAMES, Event
from receiver.records import DeliveryRecord, DeliveryStatus
from receiver.registry import HandlerRegistry
from receiver.sources.label_studio import ACTIONS, ALIASES, LabelStudioAdapter
from receiver.verify import precheck, verify
from tests.conftest import BACKENDS, SAMPLES, AppFactory, client_for, ops


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


# What a user would put on the webhook in Label Studio: `{"Authorization": "Token ..."}`.
TOKEN = "Token 0c5e9a1f3b7d4e8a9f2c6b1d"
SOURCE = {"kind": "label-studio", "verify": "header-token", "header": "Authorization",
          "secrets": [TOKEN]}  # fmt: skip
DIR = SAMPLES / "label-studio"


def sample(name: str) -> bytes:
    return (DIR / name).read_bytes()


def names() -> list[str]:
    return sorted(p.name for p in DIR.glob("*.json"))


# --- the user's header: checked before the body, with a known answer ----------------------


def test_the_configured_header_carries_the_token() -> None:
    headers = {"authorization": TOKEN}
    # The whole check happens before a byte of body is read.
    assert precheck("header-token", headers, [TOKEN], header="Authorization", now=0) is not None
    assert (
        verify("header-token", b"{}", headers, [TOKEN], header="Authorization", now=0).key_index
        == 0
    )
    for wrong in ({"authorization": "Token nope"}, {"x-other": TOKEN}, {}):
        with pytest.raises(VerificationError):
            precheck("header-token", wrong, [TOKEN], header="Authorization", now=0)


def test_a_header_token_source_must_name_its_header() -> None:
    settings = settings_from_mapping({"sources": {"ls": SOURCE}}, environ={})
    assert settings.sources["ls"].header_name == "authorization"
    unnamed = {k: v for k, v in SOURCE.items() if k != "header"}
    with pytest.raises(ConfigError, match="names its `header`"):
        settings_from_mapping({"sources": {"ls": unnamed}}, environ={})


# --- the payloads and their events ------------------------------------------------------------


def delivery(body: bytes, **changes: Any) -> DeliveryRecord:
    fields: dict[str, Any] = {
        "id": "dlv_1", "seq": 1, "source": "ls", "kind": "label-studio",
        "received_at": 1_629_208_000.0, "headers": {"content-type": "application/json"},
        "body": body, "content_type": "application/json", "status": DeliveryStatus.RECEIVED,
        "task_id": None, "sender_delivery_id": None, "key_index": 0, "key_fingerprint": None,
        "attempts": 0, "next_attempt_at": 0.0, "last_error": None, "last_traceback": None,
        "duplicate_of": None, "replayed": False, "events_derived": False, "processed_at": None,
    }  # fmt: skip
    return DeliveryRecord(**(fields | changes))


def events(name: str) -> list[Event]:
    return LabelStudioAdapter().events("ls", delivery(sample(name)))


@pytest.mark.parametrize(
    ("file", "task_id", "derived"),
    [
        ("01-tasks_created.json", None, [("label-studio.tasks_created", None)]),
        ("02-annotation_created.json", "22", [("task.completed", "22")]),
        ("03-annotation_updated.json", "22", [("task.updated", "22")]),
        ("04-annotation_skipped.json", "21", [("label-studio.annotation_created", "21")]),
        ("05-annotations_created.json", None, [("task.completed", "23"), ("task.completed", "21")]),
        ("06-annotations_deleted.json", None, [("label-studio.annotations_deleted", None)]),
        ("07-tasks_deleted.json", None, [("label-studio.tasks_deleted", None)]),
        ("08-annotation_created-no-payload.json", None,
         [("label-studio.annotation_created", None)]),
    ],
)  # fmt: skip
def test_each_sample(file: str, task_id: str | None, derived: list[tuple[str, str | None]]) -> None:
    adapter = LabelStudioAdapter()
    assert adapter.parse(sample(file), "application/json").task_id == task_id
    assert [(e.name, e.task_id) for e in events(file)] == derived


def test_every_sample_is_covered() -> None:
    assert len(names()) == 8


def test_an_annotation_is_the_tasks_result() -> None:
    [done] = events("02-annotation_created.json")
    assert done.payload["status"] == "completed"
    assert done.payload["response"][0]["value"]["labels"] == ["Answer"]
    assert (done.payload["annotation_id"], done.payload["task"]["id"]) == ("17", 22)
    assert done.payload["project"] == {"id": 2, "title": "New Project #2"}
    assert done.occurred_at.isoformat() == "2021-08-17T13:52:48.536303+00:00"
    [updated] = events("03-annotation_updated.json")
    assert updated.payload["response"][0]["value"]["text"] == "Opossums"
    assert updated.occurred_at.isoformat() == "2021-08-17T13:55:03.118004+00:00"


def test_identities_follow_the_fact_not_the_bytes() -> None:
    body = sample("02-annotation_created.json")
    # The project's counters change between deliveries; the annotation's creation does not.
    recounted = body.replace(b'"finished_task_number": 1', b'"finished_task_number": 2')
    assert recounted != body
    [a] = LabelStudioAdapter().events("ls", delivery(body))
    [b] = LabelStudioAdapter().events("ls", delivery(recounted, id="dlv_2"))
    assert a.event_id == b.event_id
    update = sample("03-annotation_updated.json")
    later = update.replace(b"13:55:03.118004", b"13:58:41.000001")
    [u1] = LabelStudioAdapter().events("ls", delivery(update))
    [u2] = LabelStudioAdapter().events("ls", delivery(later))
    assert u1.event_id != u2.event_id


def test_singular_actions_read_as_their_plural() -> None:
    body = json.dumps({"action": "TASK_DELETED", "tasks": [{"id": 9}]}).encode()
    assert LabelStudioAdapter().parse(body, "application/json").task_id == "9"
    [event] = LabelStudioAdapter().events("ls", delivery(body))
    assert (event.name, event.task_id) == ("label-studio.tasks_deleted", "9")


def test_every_action_yields_a_known_event_name() -> None:
    for action in ACTIONS | set(ALIASES):
        body = json.dumps({"action": action}).encode()
        [event] = LabelStudioAdapter().events("ls", delivery(body))
        assert event.name in EVENT_NAMES, action


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b'{"action": "SOMETHING_HAPPENED"}', "not a Label Studio webhook action"),
        (b'{"tasks": []}', "action"),
        (
            b'{"action": "ANNOTATION_CREATED", "annotation": {"id": 3}}',
            "annotation.Annotation.task",
        ),
        (b"[]", "JSON object"),
    ],
)
def test_unreadable_bodies_say_why(body: bytes, reason: str) -> None:
    with pytest.raises(PayloadError, match=reason):
        LabelStudioAdapter().parse(body, "application/json")


# --- end to end: Label Studio's wire format → intake → dispatch → events and deliveries API ---


async def post(client: httpx.AsyncClient, file: str, token: str = TOKEN) -> httpx.Response:
    # As Label Studio sends it: requests.post(url, headers=webhook.headers, json=data).
    headers = {"Authorization": token, "Content-Type": "application/json"}
    return await client.post("/callbacks/ls", content=sample(file), headers=headers)


async def test_end_to_end_from_the_wire_to_the_events_and_deliveries(
    build_app: AppFactory,
) -> None:
    seen: list[Event] = []

    def setup(registry: HandlerRegistry) -> None:
        registry.on(["task.completed", "task.updated", "label-studio.tasks_created",
                     "label-studio.annotation_created"], seen.append, name="seen")  # fmt: skip

    app = build_app(setup=setup, sources={"ls": SOURCE})
    async with app.started(), client_for(app) as client:
        answers = {name: await post(client, name) for name in names()[:5]}
        again = await post(client, "02-annotation_created.json")
        wrong = await post(client, "03-annotation_updated.json", token="Token guess")
        unknown = await client.post("/callbacks/ls", json={"action": "SOMETHING_HAPPENED"},
                                    headers={"Authorization": TOKEN})  # fmt: skip
        await app.dispatcher.drain()
        task_22 = (await client.get("/v1/deliveries?source=ls&task_id=22", headers=ops())).json()
        stored = [await app.storage.load_events(d["delivery_id"]) for d in task_22["docs"]]
        quarantined = (await client.get("/v1/deliveries?source=ls&status=quarantined",
                                        headers=ops())).json()  # fmt: skip
        first = answers["02-annotation_created.json"].json()["delivery_id"]
        detail = (await client.get(f"/v1/deliveries/{first}", headers=ops())).json()
    assert {r.json()["status"] for r in answers.values()} == {"accepted"}
    assert again.json()["status"] == "duplicate"
    assert wrong.status_code == 401
    assert unknown.status_code == 400 and "SOMETHING_HAPPENED" in unknown.json()["reason"]
    # Task 22's own lane, in receipt order: its annotation created, then updated.
    assert [(e.name, e.payload["annotation_id"]) for e in seen if e.task_id == "22"] == [
        ("task.completed", "17"), ("task.updated", "17")]  # fmt: skip
    assert sorted((e.name, e.task_id) for e in seen if e.task_id != "22") == [
        ("label-studio.annotation_created", "21"),  # the skip
        ("label-studio.tasks_created", None),
        ("task.completed", "21"), ("task.completed", "23"),  # the bulk import
    ]  # fmt: skip
    docs = [d for d in task_22["docs"] if d["status"] != "duplicate"]
    assert [d["status"] for d in docs] == ["processed", "processed"]
    assert [d["delivery_id"] for d in docs] == [
        answers["03-annotation_updated.json"].json()["delivery_id"],
        answers["02-annotation_created.json"].json()["delivery_id"]]  # fmt: skip
    assert [[e.name for e in evs] for evs in stored if evs] == [
        ["task.updated"],
        ["task.completed"],
    ]
    assert [d["last_error"] for d in quarantined["docs"]] == [
        "action 'SOMETHING_HAPPENED' is not a Label Studio webhook action"]  # fmt: skip
    # The header carrying the token is stored redacted, never as sent; the body exactly.
    assert detail["headers"]["authorization"] != TOKEN and TOKEN not in json.dumps(detail)
    assert detail["body"] == sample("02-annotation_created.json").decode()
