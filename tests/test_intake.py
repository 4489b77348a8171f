"""Every ``POST /callbacks/{source}`` row of the contract, against a real SQLite file."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from receiver.app import TaskhookApp
from receiver.errors import StorageUnavailable
from receiver.records import NewDelivery, StoreResult
from receiver.verify import sign_hmac_sha256, sign_standard_webhooks
from tests.conftest import SECRET, AppFactory, client_for, ops, sample, signed

COMPLETED = sample("01-completed.json")


def rows(
    db: Path, sql: str = "SELECT id, status, duplicate_of FROM deliveries ORDER BY seq"
) -> list[Any]:
    with sqlite3.connect(db) as conn:
        return conn.execute(sql).fetchall()


async def test_accepted_is_committed_before_the_ack(
    client: httpx.AsyncClient, db_path: Path
) -> None:
    response = await client.post("/callbacks/refonte", content=COMPLETED, headers=signed())
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "accepted"
    # A fresh connection sees the row the moment the 200 is in hand: it was committed first.
    stored = rows(db_path, "SELECT id, status, body, task_id, key_index FROM deliveries")
    assert stored == [(body["delivery_id"], "received", COMPLETED, "576c41bf13e36b0600b02b34", 0)]


async def test_exact_retry_is_a_duplicate_of_the_first(
    client: httpx.AsyncClient, db_path: Path
) -> None:
    first = (await client.post("/callbacks/refonte", content=COMPLETED, headers=signed())).json()
    again = await client.post("/callbacks/refonte", content=COMPLETED, headers=signed())
    assert again.status_code == 200
    assert again.json() == {"status": "duplicate", "delivery_id": first["delivery_id"]}
    stored = rows(db_path)
    assert [r[1] for r in stored] == ["received", "duplicate"]
    assert stored[1][2] == first["delivery_id"]


async def test_a_different_body_is_a_new_delivery(client: httpx.AsyncClient) -> None:
    a = await client.post("/callbacks/refonte", content=COMPLETED, headers=signed())
    b = await client.post("/callbacks/refonte", content=COMPLETED + b"\n", headers=signed())
    assert a.json()["status"] == b.json()["status"] == "accepted"
    assert a.json()["delivery_id"] != b.json()["delivery_id"]


async def test_rotated_secret_is_accepted_and_recorded_by_position(
    client: httpx.AsyncClient, db_path: Path
) -> None:
    response = await client.post(
        "/callbacks/refonte", content=COMPLETED, headers=signed("older-secret")
    )
    assert response.status_code == 200
    key_index, fingerprint, headers = rows(
        db_path, "SELECT key_index, key_fingerprint, headers FROM deliveries"
    )[0]
    assert key_index == 1
    assert fingerprint.startswith("hmac-sha256:")
    assert "older-secret" not in fingerprint
    assert "older-secret" not in headers  # the token header is redacted before storing
    assert json.loads(headers)["refonte-callback-auth"] == "[redacted]"


@pytest.mark.parametrize(
    "headers",
    [
        {"content-type": "application/json"},
        {"content-type": "application/json", "refonte-callback-auth": "wrong"},
        {"content-type": "application/json", "refonte-callback-auth": SECRET + "x"},
    ],
)
async def test_failed_verification_is_401_and_stores_nothing(
    client: httpx.AsyncClient, db_path: Path, headers: dict[str, str]
) -> None:
    response = await client.post("/callbacks/refonte", content=COMPLETED, headers=headers)
    assert response.status_code == 401
    assert response.json()["error"] == "verification failed"
    assert "refonte-callback-auth" in response.json()["reason"]
    assert rows(db_path) == []


async def test_unknown_source_is_404(client: httpx.AsyncClient) -> None:
    response = await client.post("/callbacks/nope", content=COMPLETED, headers=signed())
    assert response.status_code == 404
    assert response.json() == {"error": "unknown source", "source": "nope"}


async def test_get_on_a_callback_route_is_405(client: httpx.AsyncClient) -> None:
    response = await client.get("/callbacks/refonte")
    assert response.status_code == 405
    assert response.headers["allow"] == "POST"


async def test_body_over_the_limit_is_413_by_declared_length(
    build_app: AppFactory, db_path: Path
) -> None:
    app = build_app(
        sources={
            "refonte": {
                "kind": "refonte",
                "verify": "header-token",
                "secrets": [SECRET],
                "max_body_bytes": 200,
            }
        }
    )
    async with app.started(), client_for(app) as client:
        response = await client.post("/callbacks/refonte", content=COMPLETED, headers=signed())
    assert response.status_code == 413
    assert response.json() == {"error": "body too large", "limit_bytes": 200}
    assert rows(db_path) == []


async def test_body_over_the_limit_is_refused_while_streaming(build_app: AppFactory) -> None:
    app = build_app(
        sources={
            "refonte": {
                "kind": "refonte",
                "verify": "header-token",
                "secrets": [SECRET],
                "max_body_bytes": 200,
            }
        }
    )
    sent = 0

    async def chunks() -> AsyncIterator[bytes]:
        nonlocal sent
        for _ in range(1000):  # would be 500 KB if the receiver kept reading
            sent += 1
            yield b"x" * 100

    async with app.started(), client_for(app) as client:
        response = await client.post("/callbacks/refonte", content=chunks(), headers=signed())
    assert response.status_code == 413
    assert sent < 10  # it stopped reading right after the limit, not at the end


@pytest.mark.parametrize("content_type", ["application/xml", "multipart/form-data; boundary=x"])
async def test_unreadable_content_type_is_415_and_quarantined(
    client: httpx.AsyncClient, db_path: Path, content_type: str
) -> None:
    headers = signed() | {"content-type": content_type}
    response = await client.post("/callbacks/refonte", content=COMPLETED, headers=headers)
    assert response.status_code == 415
    body = response.json()
    assert body["status"] == "quarantined"
    assert content_type.split(";")[0] in body["reason"]
    stored = rows(db_path, "SELECT id, status, body FROM deliveries")
    assert stored == [(body["delivery_id"], "quarantined", COMPLETED)]


async def test_same_bytes_with_a_readable_type_after_a_415_are_accepted(
    client: httpx.AsyncClient,
) -> None:
    bad = await client.post(
        "/callbacks/refonte", content=COMPLETED, headers=signed() | {"content-type": "text/xml"}
    )
    good = await client.post("/callbacks/refonte", content=COMPLETED, headers=signed())
    assert (bad.status_code, good.status_code) == (415, 200)
    assert good.json()["status"] == "accepted"


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"{not json", "not valid JSON"),
        (b'{"task_id": "x"}', "task: Field required"),
        (b"[1, 2]", "JSON object"),
        (b'{"task_id": "a", "task": {"task_id": "b"}}', "does not match"),
    ],
)
async def test_authenticated_but_unparseable_is_400_quarantined_and_visible(
    client: httpx.AsyncClient, body: bytes, reason: str
) -> None:
    response = await client.post("/callbacks/refonte", content=body, headers=signed())
    assert response.status_code == 400
    answer = response.json()
    assert answer["status"] == "quarantined"
    assert reason in answer["reason"]
    listed = await client.get("/v1/deliveries?status=quarantined", headers=ops())
    assert [d["delivery_id"] for d in listed.json()["docs"]] == [answer["delivery_id"]]
    shown = (await client.get(f"/v1/deliveries/{answer['delivery_id']}", headers=ops())).json()
    assert shown["body"] == body.decode()
    assert reason in shown["last_error"]


async def test_retries_of_a_bad_body_collapse_into_one_quarantined_row(
    client: httpx.AsyncClient, db_path: Path
) -> None:
    a = await client.post("/callbacks/refonte", content=b"{oops", headers=signed())
    b = await client.post("/callbacks/refonte", content=b"{oops", headers=signed())
    assert a.status_code == b.status_code == 400
    assert a.json()["delivery_id"] == b.json()["delivery_id"]
    assert [r[1] for r in rows(db_path)] == ["quarantined", "duplicate"]


@pytest.mark.parametrize("content_type", ["text/plain", "application/json; charset=utf-8", None])
async def test_json_as_text_plain_or_without_type_is_read(
    client: httpx.AsyncClient, content_type: str | None
) -> None:
    headers = {"refonte-callback-auth": SECRET}
    if content_type:
        headers["content-type"] = content_type
    response = await client.post("/callbacks/refonte", content=COMPLETED, headers=headers)
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "accepted"


async def test_old_form_encoded_senders_are_read(client: httpx.AsyncClient, db_path: Path) -> None:
    task = json.loads(COMPLETED)
    form = {
        "task_id": task["task_id"],
        "response": json.dumps(task["response"]),
        "task": json.dumps(task["task"]),
    }
    response = await client.post(
        "/callbacks/refonte", data=form, headers={"refonte-callback-auth": SECRET}
    )
    assert response.status_code == 200, response.text
    assert rows(db_path, "SELECT task_id FROM deliveries") == [(task["task_id"],)]


async def test_json_sent_as_curl_sends_it_without_a_type_is_read(
    client: httpx.AsyncClient,
) -> None:
    """`curl --data-binary @file.json` without `-H content-type` says form-urlencoded."""
    form = {"refonte-callback-auth": SECRET, "content-type": "application/x-www-form-urlencoded"}
    response = await client.post("/callbacks/refonte", content=COMPLETED, headers=form)
    assert response.status_code == 200, response.text
    junk = b"not json, not a form: %zz" + b"x" * 200
    refused = await client.post("/callbacks/refonte", content=junk, headers=form)
    assert refused.status_code == 400
    assert "content-type: application/json" in refused.json()["reason"]
    assert "xxxx" not in refused.text  # the body is not echoed back


async def test_a_hundred_identical_posts_at_once_store_one(
    client: httpx.AsyncClient, db_path: Path
) -> None:
    responses = await asyncio.gather(
        *(
            client.post("/callbacks/refonte", content=COMPLETED, headers=signed())
            for _ in range(100)
        )
    )
    answers = [r.json() for r in responses]
    assert all(r.status_code == 200 for r in responses)
    assert sorted(a["status"] for a in answers).count("accepted") == 1
    assert len({a["delivery_id"] for a in answers}) == 1
    stored = rows(db_path)
    assert [r[1] for r in stored].count("received") == 1
    # The receipts are all counted on the original; only the first ten keep a row.
    assert [r[1] for r in stored].count("duplicate") == 10
    counted = rows(db_path, "SELECT duplicate_count FROM deliveries WHERE duplicate_of IS NULL")
    assert counted == [(99,)]


class BrokenStorage:
    """Wraps the real storage and fails every store, as a full disk would."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def store_delivery(self, delivery: NewDelivery) -> StoreResult:
        raise StorageUnavailable("database write failed: database or disk is full")


async def test_storage_unavailable_is_503_never_200(app: TaskhookApp) -> None:
    app.intake._storage = BrokenStorage(app.storage)  # type: ignore[assignment]
    async with client_for(app) as client:
        response = await client.post("/callbacks/refonte", content=COMPLETED, headers=signed())
    assert response.status_code == 503
    assert response.headers["retry-after"] == "5"
    assert response.json() == {"error": "storage unavailable, retry later"}


async def test_real_write_failure_is_503_and_recovers_without_restart(
    app: TaskhookApp, db_path: Path
) -> None:
    # Hold the SQLite write lock from another connection: the writer's transaction cannot
    # begin, exactly as when the database is unavailable; release it and writes resume.
    writer = app.storage._writer  # type: ignore[attr-defined]
    writer.lock_timeout = 0.2  # fail fast in this test
    blocker = sqlite3.connect(db_path, timeout=0)
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        async with client_for(app) as client:
            blocked = await client.post("/callbacks/refonte", content=COMPLETED, headers=signed())
            blocker.rollback()
            recovered = await client.post("/callbacks/refonte", content=COMPLETED, headers=signed())
    finally:
        blocker.close()
    assert blocked.status_code == 503
    assert recovered.status_code == 200
    assert recovered.json()["status"] == "accepted"


async def test_hmac_source(build_app: AppFactory, db_path: Path) -> None:
    app = build_app(
        sources={
            "vendor": {
                "kind": "refonte",
                "verify": "hmac-sha256",
                "header": "X-Vendor-Signature",
                "secrets": ["k1"],
            }
        }
    )
    good = sign_hmac_sha256(COMPLETED, "k1", header="x-vendor-signature")
    async with app.started(), client_for(app) as client:
        ok = await client.post("/callbacks/vendor", content=COMPLETED, headers=good)
        tampered = await client.post(
            "/callbacks/vendor", content=COMPLETED[:-2] + b"}}", headers=good
        )
    assert ok.status_code == 200
    assert tampered.status_code == 401
    # The signature is not a secret: it stays on the record so the delivery can be re-verified.
    assert (
        json.loads(rows(db_path, "SELECT headers FROM deliveries")[0][0])["x-vendor-signature"]
        == good["x-vendor-signature"]
    )


async def test_standard_webhooks_dedup_by_webhook_id(build_app: AppFactory) -> None:
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    app = build_app(
        sources={"sw": {"kind": "refonte", "verify": "standard-webhooks", "secrets": [secret]}}
    )
    now = int(time.time())
    first = sign_standard_webhooks(COMPLETED, secret, msg_id="msg_1", timestamp=now)
    # A retry re-signs with a new timestamp; the webhook-id makes it the same delivery.
    retry = sign_standard_webhooks(COMPLETED, secret, msg_id="msg_1", timestamp=now + 1)
    other = sign_standard_webhooks(COMPLETED, secret, msg_id="msg_2", timestamp=now)
    stale = sign_standard_webhooks(COMPLETED, secret, msg_id="msg_3", timestamp=now - 3600)
    async with app.started(), client_for(app) as client:
        a = (await client.post("/callbacks/sw", content=COMPLETED, headers=first)).json()
        b = (await client.post("/callbacks/sw", content=COMPLETED, headers=retry)).json()
        c = (await client.post("/callbacks/sw", content=COMPLETED, headers=other)).json()
        d = await client.post("/callbacks/sw", content=COMPLETED, headers=stale)
    assert a["status"] == "accepted"
    assert b == {"status": "duplicate", "delivery_id": a["delivery_id"]}
    assert c["status"] == "accepted"
    assert d.status_code == 401
    assert d.json()["reason"] == "timestamp too old"


async def test_verify_none_accepts_anything(build_app: AppFactory) -> None:
    app = build_app(sources={"open": {"kind": "refonte", "verify": "none"}})
    async with app.started(), client_for(app) as client:
        response = await client.post("/callbacks/open", content=COMPLETED)
    assert response.status_code == 200


async def test_one_failing_op_does_not_sink_its_batch_or_the_writer(app: TaskhookApp) -> None:
    writer = app.storage._writer  # type: ignore[attr-defined]

    def broken(conn: sqlite3.Connection) -> None:
        conn.execute(
            "INSERT INTO events (event_id, name, delivery_id, payload) VALUES "
            "('e1', 'n', 'd', '{}')"
        )
        raise RuntimeError("bug in an op")

    bad = writer.submit(broken)
    good = writer.submit(lambda conn: conn.execute("SELECT 1").fetchone()[0])
    assert await good == 1
    with pytest.raises(RuntimeError):
        await bad
    # The failed op's own write was rolled back; the writer keeps working.
    assert await writer.run(lambda c: c.execute("SELECT count(*) FROM events").fetchone()[0]) == 0
    async with client_for(app) as client:
        response = await client.post("/callbacks/refonte", content=COMPLETED, headers=signed())
    assert response.status_code == 200


async def test_a_client_that_disconnects_mid_body_gets_no_answer_and_stores_nothing(
    app: TaskhookApp, db_path: Path
) -> None:
    messages = iter(
        [
            {"type": "http.request", "body": COMPLETED[:100], "more_body": True},
            {"type": "http.disconnect"},
        ]
    )
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return next(messages)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/callbacks/refonte",
        "headers": [(b"refonte-callback-auth", SECRET.encode())],
    }
    await app(scope, receive, send)
    assert sent == []
    assert rows(db_path) == []
