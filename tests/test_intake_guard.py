"""The intake spends nothing on a request before it can: credentials checked before the body
where the scheme allows, unverified bodies held within a budget, compressed bodies inflated
only up to the limit, and secrets kept out of what is stored."""

from __future__ import annotations

import asyncio
import base64
import gzip
import json
import sqlite3
import zlib
from pathlib import Path
from typing import Any

import httpx
import pytest

from receiver.app import TaskhookApp
from receiver.config import settings_from_mapping
from receiver.errors import ConfigError
from receiver.verify import sign_hmac_sha256
from tests.conftest import SECRET, AppFactory, client_for, sample, signed

COMPLETED = sample("01-completed.json")
HMAC_SECRET = "hmac-secret-for-the-guard-tests"
HMAC = {"kind": "refonte", "verify": "hmac-sha256", "header": "x-sig", "secrets": [HMAC_SECRET]}


def rows(db: Path, sql: str) -> list[Any]:
    with sqlite3.connect(db) as conn:
        return conn.execute(sql).fetchall()


async def call(app: TaskhookApp, path: str, headers: dict[str, str], chunks: list[bytes]) -> Any:
    """One request straight to the ASGI app, counting how many body chunks it read."""
    read: list[int] = []
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        read.append(1)
        index = len(read) - 1
        if index >= len(chunks):
            await asyncio.sleep(3600)  # never: a test that waits here fails by its timeout
        return {"type": "http.request", "body": chunks[index], "more_body": index < len(chunks) - 1}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http", "method": "POST", "path": path, "headers": [
            (k.encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()
        ],
    }  # fmt: skip
    await asyncio.wait_for(app(scope, receive, send), 5)
    start = sent[0]
    return start["status"], dict(start["headers"]), json.loads(sent[1]["body"]), len(read)


async def test_a_wrong_header_token_is_refused_before_the_body_is_read(app: TaskhookApp) -> None:
    status, headers, body, chunks_read = await call(
        app, "/callbacks/refonte", {"refonte-callback-auth": "wrong"}, [b"x" * 1000] * 50
    )
    assert (status, chunks_read) == (401, 0)
    assert body["reason"] == "invalid token in header refonte-callback-auth"
    assert headers[b"connection"] == b"close"  # the unread body cannot precede a next request


async def test_a_signed_scheme_missing_its_header_is_refused_before_the_body(
    build_app: AppFactory,
) -> None:
    app = build_app(sources={"h": HMAC})
    async with app.started():
        status, _, body, chunks_read = await call(app, "/callbacks/h", {}, [b"{}"] * 10)
        long_sig = {"x-sig": "a" * 5000}
        too_long = await call(app, "/callbacks/h", long_sig, [b"{}"])
    assert (status, chunks_read, body["reason"]) == (401, 0, "missing header x-sig")
    assert (too_long[0], too_long[3]) == (401, 0)
    assert "longer than 4096" in too_long[2]["reason"]


async def test_unverified_bodies_are_held_within_the_budget(
    build_app: AppFactory, db_path: Path
) -> None:
    """A body whose signature is still to be checked draws on the budget; one past it is
    refused with 503 at once, and the budget is whole again afterwards."""
    app = build_app(sources={"h": HMAC}, http={"max_unverified_body_bytes": 4096})
    body = json.dumps({"pad": "x" * 3000}).encode()
    signature = sign_hmac_sha256(body, HMAC_SECRET, header="x-sig")
    async with app.started(), client_for(app) as client:
        over = await call(app, "/callbacks/h", {"x-sig": "sha256=" + "0" * 64}, [body, body])
        ok = await client.post("/callbacks/h", content=body, headers=signature)
        # A verified-before-the-body source (header token) never counts.
        big = json.dumps({**json.loads(COMPLETED), "pad": "y" * 8000}).encode()
        token = await client.post("/callbacks/refonte", content=big, headers=signed())
    assert (over[0], over[1][b"retry-after"], over[1][b"connection"]) == (503, b"1", b"close")
    assert "unverified" in over[2]["error"]
    assert ok.status_code == 400  # verified, then quarantined: the body is no callback
    assert token.status_code == 200, token.text
    assert app.intake._unverified.held == 0
    assert len(rows(db_path, "SELECT id FROM deliveries")) == 2


@pytest.mark.parametrize("coding", ["gzip", "deflate", "raw-deflate"])
async def test_compressed_bodies_are_stored_as_the_payload_they_carry(
    client: httpx.AsyncClient, db_path: Path, coding: str
) -> None:
    if coding == "gzip":
        wire = gzip.compress(COMPLETED)
    elif coding == "deflate":
        wire = zlib.compress(COMPLETED)
    else:
        packer = zlib.compressobj(wbits=-zlib.MAX_WBITS)
        wire = packer.compress(COMPLETED) + packer.flush()
    encoding = "deflate" if coding == "raw-deflate" else coding
    headers = signed() | {"content-encoding": encoding}
    response = await client.post("/callbacks/refonte", content=wire, headers=headers)
    assert response.status_code == 200, response.text
    (body, stored_headers), = rows(db_path, "SELECT body, headers FROM deliveries")  # fmt: skip
    assert body == COMPLETED
    stored = json.loads(stored_headers)
    assert "content-encoding" not in stored
    assert stored["x-original-content-encoding"] == encoding


async def test_a_compression_bomb_is_refused_without_inflating_past_the_limit(
    build_app: AppFactory, db_path: Path
) -> None:
    limited = {"kind": "refonte", "verify": "header-token", "secrets": [SECRET],
               "max_body_bytes": 100_000}  # fmt: skip
    app = build_app(sources={"refonte": limited})
    bomb = gzip.compress(b"0" * 50_000_000)  # 50 MB of zeros in ~50 KB
    async with app.started(), client_for(app) as client:
        headers = signed() | {"content-encoding": "gzip"}
        response = await client.post("/callbacks/refonte", content=bomb, headers=headers)
    assert len(bomb) < 100_000
    assert (response.status_code, response.json()["limit_bytes"]) == (413, 100_000)
    assert rows(db_path, "SELECT count(*) FROM deliveries") == [(0,)]


async def test_an_unknown_encoding_is_415_naming_it(client: httpx.AsyncClient) -> None:
    for encoding in ("br", "gzip, gzip", "zstd"):
        headers = signed() | {"content-encoding": encoding}
        response = await client.post("/callbacks/refonte", content=COMPLETED, headers=headers)
        assert response.status_code == 415
        assert repr(encoding) in response.json()["error"]


async def test_corrupt_compression_is_kept_when_authenticated_refused_when_not(
    build_app: AppFactory, db_path: Path
) -> None:
    app = build_app(sources={"refonte": {"kind": "refonte", "verify": "header-token",
                                         "secrets": [SECRET]}, "h": HMAC})  # fmt: skip
    junk = b"\x1f\x8b not really gzip"
    async with app.started(), client_for(app) as client:
        kept = await client.post("/callbacks/refonte", content=junk,
                                 headers=signed() | {"content-encoding": "gzip"})  # fmt: skip
        signature = sign_hmac_sha256(junk, HMAC_SECRET, header="x-sig")
        refused = await client.post("/callbacks/h", content=junk,
                                    headers=signature | {"content-encoding": "gzip"})  # fmt: skip
    assert (kept.status_code, kept.json()["status"]) == (400, "quarantined")
    assert "not valid gzip" in kept.json()["reason"]
    assert refused.status_code == 400 and "delivery_id" not in refused.json()
    assert rows(db_path, "SELECT source, status, body FROM deliveries") == [
        ("refonte", "quarantined", junk)
    ]


async def test_a_secret_in_any_header_is_redacted_by_value(
    build_app: AppFactory, db_path: Path
) -> None:
    """The header token of one source sent to another source, or a key pasted into a
    custom header, is never stored."""
    app = build_app(sources={"refonte": {"kind": "refonte", "verify": "header-token",
                                         "secrets": [SECRET]}, "h": HMAC})  # fmt: skip
    body = COMPLETED
    headers = sign_hmac_sha256(body, HMAC_SECRET, header="x-sig") | {
        "content-type": "application/json",
        "refonte-callback-auth": SECRET,  # another source's credential
        "x-debug": f"forwarded key={HMAC_SECRET};",  # this source's own secret, inside text
        "x-harmless": "hello",
    }
    async with app.started(), client_for(app) as client:
        response = await client.post("/callbacks/h", content=body, headers=headers)
    assert response.status_code == 200, response.text
    (stored,) = rows(db_path, "SELECT headers FROM deliveries")[0]
    assert SECRET not in stored and HMAC_SECRET not in stored
    kept = json.loads(stored)
    assert kept["refonte-callback-auth"] == kept["x-debug"] == "[redacted]"
    assert kept["x-harmless"] == "hello"


async def test_a_utf8_header_token_matches(build_app: AppFactory) -> None:
    token = "clé-secrète-ünïcode"
    app = build_app(sources={"u": {"kind": "refonte", "verify": "header-token",
                                   "header": "x-token", "secrets": [token]}})  # fmt: skip
    async with app.started():
        # What a server hands over for UTF-8 bytes on the wire: the bytes as latin-1.
        wire = token.encode("utf-8").decode("latin-1")
        status, *_ = await call(app, "/callbacks/u", {"x-token": wire, "content-type":
                                "application/json"}, [COMPLETED])  # fmt: skip
        wrong, *_ = await call(app, "/callbacks/u", {"x-token": "cle-secrete-unicode"}, [b""])
    assert (status, wrong) == (200, 401)


async def test_fingerprints_are_keyed_by_the_installation(
    build_app: AppFactory, db_path: Path
) -> None:
    app = build_app()
    app.intake.fingerprint_key = b"installation one"
    async with app.started(), client_for(app) as client:
        await client.post("/callbacks/refonte", content=COMPLETED, headers=signed())
        app.intake.fingerprint_key = b"installation two"
        await client.post("/callbacks/refonte", content=COMPLETED + b" ", headers=signed())
    one, two = (r[0] for r in rows(db_path, "SELECT key_fingerprint FROM deliveries ORDER BY seq"))
    assert one.startswith("hmac-sha256:") and two.startswith("hmac-sha256:")
    assert one != two  # the same secret, other keys: nothing to confirm a guess offline with


@pytest.mark.parametrize(
    ("secret", "why"),
    [
        ("whsec_", "this one is 0"),
        ("whsec_" + base64.b64encode(b"too short").decode(), "this one is 9"),
        ("whsec_not base64!", "must be followed by base64"),
        ("a-short-password", "this one is 16"),
    ],
)
def test_a_weak_standard_webhooks_secret_is_a_configuration_error(secret: str, why: str) -> None:
    doc = {"sources": {"sw": {"kind": "refonte", "verify": "standard-webhooks",
                              "secrets": [secret]}}}  # fmt: skip
    with pytest.raises(ConfigError, match=why) as info:
        settings_from_mapping(doc, environ={})
    assert "sources.sw" in str(info.value) and secret not in str(info.value)


def test_every_configured_secret_is_known_for_redaction() -> None:
    settings = settings_from_mapping(
        {
            "database": {"url": "postgresql://app:db-password@db/x"},
            "sources": {
                "r": {"kind": "refonte", "verify": "header-token", "secrets": ["s-one", "s-two"],
                      "reconcile": {"api_key": "vendor-key"}},
            },
            "api": {"keys": {"ops": {"key": "ops-key", "scopes": ["tasks.read"]}}},
        },
        environ={},
    )  # fmt: skip
    assert set(settings.secret_values()) == {
        "s-one", "s-two", "vendor-key", "ops-key", "db-password"
    }  # fmt: skip
