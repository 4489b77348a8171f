"""Tests for receiver.verify.

Known-answer values were computed outside this code (``openssl dgst -sha256 -hmac``,
``sha256sum``, RFC 4231 and the Standard Webhooks specification's own example, which was
cross-checked against the ``standardwebhooks`` package) and are written here as literals, so
a bug shared by the signer and the verifier cannot make these tests pass.
"""

from __future__ import annotations

import base64
import dataclasses
import hmac
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from standardwebhooks.webhooks import Webhook

from receiver.errors import VerificationError
from receiver.verify import (
    MAX_CREDENTIAL_HEADER,
    Verified,
    fingerprint,
    precheck,
    sign,
    sign_header_token,
    sign_hmac_sha256,
    sign_standard_webhooks,
    verify,
    verify_header_token,
    verify_hmac_sha256,
    verify_none,
    verify_standard_webhooks,
)

# --- known answers ------------------------------------------------------------------------

# RFC 4231 test case 2.
RFC_KEY = "Jefe"
RFC_BODY = b"what do ya want for nothing?"
RFC_HEX = "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
RFC_B64 = "W9zBRr9gdU5qBCQmCJV1x1oAPwidJzmDnexYuWTsOEM="

# openssl dgst -sha256 -hmac taskhook-secret-{1,2} over TASK_BODY.
TASK_BODY = b'{"task_id":"t-1","status":"completed"}'
SECRET_1 = "taskhook-secret-1"
SECRET_2 = "taskhook-secret-2"
TASK_HEX_1 = "9f2d1aefb779db086d173b886dbd0f04b32d8da5dd83ec411898def149b89beb"
TASK_HEX_2 = "d5ff44d3fa103da1d7ec08a5fa752bb5aa05fddfee20ce195290201efa2f18eb"
TASK_B64_2 = "1f9E0/oQPaHX7Ail+nUrtaoF/d/uIM4ZUpAgHvovGOs="  # has both '+' and '/'
TASK_B64URL_2 = "1f9E0_oQPaHX7Ail-nUrtaoF_d_uIM4ZUpAgHvovGOs="

# HMAC-SHA256 keyed with FP_KEY (an installation's key), first 16 hex chars: computed with
# `printf %s SECRET | openssl dgst -sha256 -hmac taskhook-test-installation-key`.
FP_KEY = b"taskhook-test-installation-key"
FP_JEFE = "hmac-sha256:08dcfba96f45c0b8"
FP_SECRET_1 = "hmac-sha256:cde2814fad245398"
FP_SECRET_2 = "hmac-sha256:86081abc57d0a5f5"
FP_SW = "hmac-sha256:13a9f4bc9075ea54"

# The example in the Standard Webhooks specification.
SW_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
SW_MSG_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
SW_TIMESTAMP = 1614265330
SW_BODY = b'{"test": 2432232314}'
SW_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="

# A secret that is not base64 is used as its utf-8 bytes (openssl dgst -hmac 'plain secret!').
PLAIN_SECRET = "plain secret!"
PLAIN_SIGNATURE = "v1,k3ZGLMTGIbpwF53lBK7C54NtQDjAnFSRRRlj/c4vSGw="

HEADER = "X-Signature-256"
TOKEN_HEADER = "X-Scale-Token"


def sw_headers(
    signature: str = SW_SIGNATURE,
    *,
    msg_id: str = SW_MSG_ID,
    timestamp: str = str(SW_TIMESTAMP),
    prefix: str = "webhook",
) -> dict[str, str]:
    return {
        f"{prefix}-id": msg_id,
        f"{prefix}-timestamp": timestamp,
        f"{prefix}-signature": signature,
    }


def sw_verify(
    headers: Mapping[str, str],
    secrets: list[str] | None = None,
    *,
    body: bytes = SW_BODY,
    now: float = SW_TIMESTAMP,
    **kwargs: Any,
) -> Verified:
    return verify_standard_webhooks(
        body, headers, [SW_SECRET] if secrets is None else secrets, now=now, **kwargs
    )


def test_fingerprint_known_answers() -> None:
    assert fingerprint(RFC_KEY, FP_KEY) == FP_JEFE
    assert fingerprint(SECRET_1, FP_KEY) == FP_SECRET_1
    assert fingerprint(SECRET_2, FP_KEY) == FP_SECRET_2
    assert fingerprint(SW_SECRET, FP_KEY) == FP_SW


def test_fingerprint_is_keyed_by_the_installation() -> None:
    # Without the installation's key a fingerprint cannot be recomputed from a guess.
    assert fingerprint(SECRET_1, b"another installation") != FP_SECRET_1
    assert fingerprint(SECRET_1, FP_KEY) != fingerprint(SECRET_2, FP_KEY)


def test_sign_hmac_sha256_known_answers() -> None:
    assert sign_hmac_sha256(RFC_BODY, RFC_KEY, header=HEADER) == {
        "x-signature-256": "sha256=" + RFC_HEX
    }
    assert sign_hmac_sha256(RFC_BODY, RFC_KEY, header=HEADER, encoding="base64", prefix="") == {
        "x-signature-256": RFC_B64
    }
    assert sign_hmac_sha256(TASK_BODY, SECRET_2, header="sig", encoding="base64") == {
        "sig": "sha256=" + TASK_B64_2
    }


@pytest.mark.parametrize(
    "value",
    [
        "sha256=" + RFC_HEX,
        RFC_HEX,
        RFC_HEX.upper(),
        "SHA256=" + RFC_HEX.upper(),
        RFC_B64,
        "sha256=" + RFC_B64,
        RFC_B64.rstrip("="),
    ],
)
def test_verify_hmac_sha256_known_answer_encodings(value: str) -> None:
    result = verify_hmac_sha256(RFC_BODY, {"x-signature-256": value}, [RFC_KEY], header=HEADER)
    assert result == Verified(key_index=0)


@pytest.mark.parametrize("value", [TASK_B64_2, TASK_B64URL_2, TASK_B64URL_2.rstrip("=")])
def test_verify_hmac_sha256_standard_and_urlsafe_base64(value: str) -> None:
    result = verify_hmac_sha256(TASK_BODY, {"sig": value}, [SECRET_2], header="Sig")
    assert result.key_index == 0


def test_header_token_known_answer() -> None:
    assert sign_header_token("tok-123", header=TOKEN_HEADER) == {"x-scale-token": "tok-123"}
    result = verify_header_token(
        b"", {"x-scale-token": "tok-123"}, ["tok-123"], header="X-SCALE-TOKEN"
    )
    assert result == Verified(key_index=0)
    assert result.delivery_id is None
    assert result.timestamp is None


def test_standard_webhooks_spec_example_matches_reference_package() -> None:
    # Guard the literal itself: the reference implementation must agree with it.
    reference = Webhook(SW_SECRET).sign(
        SW_MSG_ID, datetime.fromtimestamp(SW_TIMESTAMP, tz=UTC), SW_BODY.decode()
    )
    assert reference == SW_SIGNATURE


def test_sign_standard_webhooks_spec_example() -> None:
    headers = sign_standard_webhooks(SW_BODY, SW_SECRET, msg_id=SW_MSG_ID, timestamp=SW_TIMESTAMP)
    assert headers == sw_headers()


def test_verify_standard_webhooks_spec_example() -> None:
    result = sw_verify(sw_headers())
    assert result == Verified(key_index=0, delivery_id=SW_MSG_ID, timestamp=SW_TIMESTAMP)


def test_standard_webhooks_secret_without_prefix_is_base64_decoded() -> None:
    unprefixed = SW_SECRET.removeprefix("whsec_")
    assert sw_verify(sw_headers(), [unprefixed]).key_index == 0
    assert (
        sign_standard_webhooks(SW_BODY, unprefixed, msg_id=SW_MSG_ID, timestamp=SW_TIMESTAMP)
        == sw_headers()
    )


def test_standard_webhooks_non_base64_secret_uses_utf8_bytes() -> None:
    body = b'{"a":1}'
    headers = sw_headers(PLAIN_SIGNATURE, msg_id="msg_1", timestamp="1700000000")
    assert (
        sign_standard_webhooks(body, PLAIN_SECRET, msg_id="msg_1", timestamp=1700000000) == headers
    )
    result = sw_verify(headers, [PLAIN_SECRET], body=body, now=1700000000)
    assert result.key_index == 0


def test_verify_none_accepts_anything() -> None:
    assert verify_none(b"\x00garbage", {}) == Verified(key_index=-1)
    assert verify("none", b"x", {}, [], now=0) == Verified(key_index=-1)
    assert sign("none", b"x", "s") == {}


def test_verified_is_frozen() -> None:
    result = verify_none(b"", {})
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.key_index = 3  # type: ignore[misc]


# --- header-token failures ------------------------------------------------------------------


def test_header_token_missing_header() -> None:
    with pytest.raises(VerificationError) as info:
        verify_header_token(b"", {}, ["tok"], header=TOKEN_HEADER)
    assert info.value.reason == "missing header x-scale-token"


def test_header_token_empty_value_counts_as_missing() -> None:
    with pytest.raises(VerificationError, match="missing header x-scale-token"):
        verify_header_token(b"", {"x-scale-token": ""}, ["tok"], header=TOKEN_HEADER)


@pytest.mark.parametrize("presented", ["tok-124", "tok-12", "tok-1234", "TOK-123", " tok-123"])
def test_header_token_wrong_token(presented: str) -> None:
    with pytest.raises(VerificationError) as info:
        verify_header_token(b"", {"x-scale-token": presented}, ["tok-123"], header=TOKEN_HEADER)
    assert info.value.reason == "invalid token in header x-scale-token"


def test_header_token_does_not_cover_the_body() -> None:
    # Documented limitation of the scheme, not of this code.
    headers = sign_header_token("tok", header=TOKEN_HEADER)
    assert verify_header_token(b"anything", headers, ["tok"], header=TOKEN_HEADER).key_index == 0


def test_header_token_compares_every_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", counting)
    secrets = ["first", "second", "third"]
    result = verify_header_token(b"", {"x-t": "first"}, secrets, header="x-t")
    assert result.key_index == 0
    assert len(calls) == len(secrets)  # no early exit after the first match


def test_header_token_non_ascii_does_not_crash() -> None:
    with pytest.raises(VerificationError, match="invalid token"):
        verify_header_token(b"", {"x-t": "pässwörd"}, ["password", "\udcff"], header="x-t")
    assert verify_header_token(b"", {"x-t": "pässwörd"}, ["pässwörd"], header="x-t").key_index == 0


# --- hmac-sha256 failures --------------------------------------------------------------------


def test_hmac_missing_header() -> None:
    with pytest.raises(VerificationError) as info:
        verify_hmac_sha256(RFC_BODY, {"x-other": RFC_HEX}, [RFC_KEY], header=HEADER)
    assert info.value.reason == "missing header x-signature-256"


def test_hmac_wrong_secret() -> None:
    with pytest.raises(VerificationError) as info:
        verify_hmac_sha256(RFC_BODY, {"x-signature-256": RFC_HEX}, ["Jeff"], header=HEADER)
    assert info.value.reason == "invalid signature in header x-signature-256"


def test_hmac_tampered_body_one_byte() -> None:
    tampered = bytearray(TASK_BODY)
    tampered[5] ^= 0x01
    with pytest.raises(VerificationError, match="invalid signature"):
        verify_hmac_sha256(bytes(tampered), {"sig": TASK_HEX_1}, [SECRET_1], header="sig")
    with pytest.raises(VerificationError, match="invalid signature"):
        verify_hmac_sha256(TASK_BODY + b"\n", {"sig": TASK_HEX_1}, [SECRET_1], header="sig")


@pytest.mark.parametrize(
    "value",
    [
        base64.b32encode(bytes.fromhex(RFC_HEX)).decode(),  # base32 is not accepted
        base64.b64encode(RFC_HEX.encode()).decode(),  # base64 of the hex text
        RFC_HEX[:-1],  # truncated hex
        RFC_HEX + "0",  # over-long hex
        "ab" * 20,  # 40 hex chars: a SHA-1 sized digest
        "sha256=",
        "sha256=zz" + RFC_HEX[2:],
        "sha1=" + RFC_HEX,
        "!!!",
    ],
)
def test_hmac_wrong_encoding_is_malformed(value: str) -> None:
    with pytest.raises(VerificationError) as info:
        verify_hmac_sha256(RFC_BODY, {"x-signature-256": value}, [RFC_KEY], header=HEADER)
    assert info.value.reason == "malformed signature in header x-signature-256"


@pytest.mark.parametrize(
    "value",
    [
        f"sha256={TASK_HEX_2},sha256={TASK_HEX_1}",
        f"{TASK_HEX_2} {TASK_HEX_1}",
        f"{TASK_HEX_1}, {TASK_HEX_2}",
        f"garbage,{TASK_B64_2} sha256={TASK_HEX_1}",
    ],
)
def test_hmac_several_signatures_any_may_match(value: str) -> None:
    result = verify_hmac_sha256(TASK_BODY, {"sig": value}, [SECRET_1], header="sig")
    assert result.key_index == 0


def test_hmac_several_signatures_none_matching() -> None:
    value = f"{TASK_HEX_2},{TASK_B64_2}"
    with pytest.raises(VerificationError, match="invalid signature in header sig"):
        verify_hmac_sha256(TASK_BODY, {"sig": value}, [SECRET_1], header="sig")


def test_sign_hmac_unknown_encoding() -> None:
    with pytest.raises(ValueError, match="encoding"):
        sign_hmac_sha256(b"", "s", header="sig", encoding="base32")


# --- standard-webhooks failures --------------------------------------------------------------


@pytest.mark.parametrize("missing", ["id", "timestamp", "signature"])
def test_standard_webhooks_missing_header(missing: str) -> None:
    headers = sw_headers()
    del headers[f"webhook-{missing}"]
    with pytest.raises(VerificationError) as info:
        sw_verify(headers)
    assert info.value.reason == f"missing header webhook-{missing}"


def test_standard_webhooks_wrong_secret() -> None:
    other = "whsec_" + base64.b64encode(b"another key of 24 bytes!").decode()
    with pytest.raises(VerificationError) as info:
        sw_verify(sw_headers(), [other])
    assert info.value.reason == "invalid signature in header webhook-signature"


def test_standard_webhooks_tampered_body_one_byte() -> None:
    tampered = bytearray(SW_BODY)
    tampered[-2] ^= 0x01
    with pytest.raises(VerificationError, match="invalid signature"):
        sw_verify(sw_headers(), body=bytes(tampered))


@pytest.mark.parametrize("field", ["msg_id", "timestamp"])
def test_standard_webhooks_signed_headers_are_covered(field: str) -> None:
    if field == "msg_id":
        headers = sw_headers(msg_id=SW_MSG_ID + "x")
    else:
        headers = sw_headers(timestamp=str(SW_TIMESTAMP + 1))
    with pytest.raises(VerificationError, match="invalid signature"):
        sw_verify(headers)


@pytest.mark.parametrize(
    "timestamp",
    [
        "abc",
        "1614265330.0",
        "1614265330.5",
        "-1614265330",
        "+1614265330",
        "1_614_265_330",
        " 1614265330",
        "1614265330 ",
        "".join(chr(0xFF10 + int(d)) for d in "1614265330"),  # full-width digits
        "1e9",
        "9" * 40,
    ],
)
def test_standard_webhooks_malformed_timestamp(timestamp: str) -> None:
    with pytest.raises(VerificationError) as info:
        sw_verify(sw_headers(timestamp=timestamp))
    assert info.value.reason == "invalid header webhook-timestamp: not an integer"


def test_standard_webhooks_malformed_timestamp_rejected_even_without_freshness_check() -> None:
    with pytest.raises(VerificationError, match="not an integer"):
        sw_verify(sw_headers(timestamp="soon"), check_timestamp=False)


def test_standard_webhooks_too_old() -> None:
    with pytest.raises(VerificationError) as info:
        sw_verify(sw_headers(), now=SW_TIMESTAMP + 3600)
    assert info.value.reason == "timestamp too old"


def test_standard_webhooks_too_new() -> None:
    with pytest.raises(VerificationError) as info:
        sw_verify(sw_headers(), now=SW_TIMESTAMP - 3600)
    assert info.value.reason == "timestamp too far in the future"


@pytest.mark.parametrize("tolerance", [300, 60, 0])
def test_standard_webhooks_tolerance_boundary(tolerance: int) -> None:
    headers = sw_headers()
    # Exactly at the tolerance passes, in both directions.
    assert sw_verify(headers, now=SW_TIMESTAMP + tolerance, tolerance_seconds=tolerance)
    assert sw_verify(headers, now=SW_TIMESTAMP - tolerance, tolerance_seconds=tolerance)
    # One second beyond fails, in both directions.
    with pytest.raises(VerificationError, match="too old"):
        sw_verify(headers, now=SW_TIMESTAMP + tolerance + 1, tolerance_seconds=tolerance)
    with pytest.raises(VerificationError, match="too far in the future"):
        sw_verify(headers, now=SW_TIMESTAMP - tolerance - 1, tolerance_seconds=tolerance)
    # A fractional clock just past the boundary fails too.
    with pytest.raises(VerificationError, match="too old"):
        sw_verify(headers, now=SW_TIMESTAMP + tolerance + 0.5, tolerance_seconds=tolerance)


def test_standard_webhooks_default_tolerance_is_five_minutes() -> None:
    assert sw_verify(sw_headers(), now=SW_TIMESTAMP + 300).timestamp == SW_TIMESTAMP
    with pytest.raises(VerificationError, match="too old"):
        sw_verify(sw_headers(), now=SW_TIMESTAMP + 301)


def test_standard_webhooks_check_timestamp_false_accepts_old_signed_delivery() -> None:
    far_later = SW_TIMESTAMP + 5 * 365 * 86400
    result = sw_verify(sw_headers(), now=far_later, check_timestamp=False)
    assert result.delivery_id == SW_MSG_ID
    assert result.timestamp == SW_TIMESTAMP
    assert sw_verify(sw_headers(), now=0, check_timestamp=False).key_index == 0


def test_standard_webhooks_check_timestamp_false_still_rejects_bad_signature() -> None:
    far_later = SW_TIMESTAMP + 5 * 365 * 86400
    with pytest.raises(VerificationError, match="invalid signature"):
        sw_verify(sw_headers(), body=SW_BODY + b" ", now=far_later, check_timestamp=False)
    with pytest.raises(VerificationError, match="invalid signature"):
        sw_verify(sw_headers(), ["whsec_" + "A" * 32], now=far_later, check_timestamp=False)


def test_standard_webhooks_svix_aliases() -> None:
    result = sw_verify(sw_headers(prefix="svix"))
    assert result == Verified(key_index=0, delivery_id=SW_MSG_ID, timestamp=SW_TIMESTAMP)


def test_standard_webhooks_svix_missing_reports_canonical_name() -> None:
    headers = sw_headers(prefix="svix")
    del headers["svix-signature"]
    with pytest.raises(VerificationError, match="missing header webhook-signature"):
        sw_verify(headers)


@pytest.mark.parametrize(
    "signature",
    [
        f"v1,{'A' * 43}= {SW_SIGNATURE}",
        f"{SW_SIGNATURE} v1,{'B' * 43}=",
        f"v2,whatever v1a,{SW_SIGNATURE[3:]} {SW_SIGNATURE}",
        f"v1,not-base64!! {SW_SIGNATURE}",
        f"junk  {SW_SIGNATURE}",
    ],
)
def test_standard_webhooks_several_signatures_any_v1_may_match(signature: str) -> None:
    assert sw_verify(sw_headers(signature)).key_index == 0


@pytest.mark.parametrize(
    "signature",
    [
        "v2," + SW_SIGNATURE[3:],  # right bytes, wrong version
        "v1a," + SW_SIGNATURE[3:],
        "V1," + SW_SIGNATURE[3:],
        SW_SIGNATURE[3:],  # no version at all
        "v1,",
        "v1,!!!!",
        "v1," + base64.b64encode(b"short").decode(),
    ],
)
def test_standard_webhooks_non_v1_versions_ignored(signature: str) -> None:
    with pytest.raises(VerificationError) as info:
        sw_verify(sw_headers(signature))
    assert info.value.reason == "no v1 signature in header webhook-signature"


def test_standard_webhooks_wrong_v1_signature() -> None:
    with pytest.raises(VerificationError, match="invalid signature"):
        sw_verify(sw_headers("v1," + base64.b64encode(b"\x00" * 32).decode()))


def test_sign_standard_webhooks_needs_msg_id() -> None:
    with pytest.raises(ValueError, match="msg_id"):
        sign_standard_webhooks(b"", SW_SECRET, msg_id="", timestamp=1)


# --- no secret / dispatcher ------------------------------------------------------------------


@pytest.mark.parametrize("secrets", [[], [""], ["", ""]])
@pytest.mark.parametrize("scheme", ["header-token", "hmac-sha256", "standard-webhooks"])
def test_empty_secrets(scheme: Any, secrets: list[str]) -> None:
    headers = {**sw_headers(), "x-sig": RFC_HEX, "x-token": "t"}
    header = "x-token" if scheme == "header-token" else "x-sig"
    with pytest.raises(VerificationError) as info:
        verify(scheme, SW_BODY, headers, secrets, header=header, now=SW_TIMESTAMP)
    assert info.value.reason == "no secret configured"


def test_empty_secret_never_matches_empty_or_absent_credential() -> None:
    # An empty secret alongside a real one must not let an empty token through.
    with pytest.raises(VerificationError, match="missing header"):
        verify_header_token(b"", {"x-t": ""}, ["", "real"], header="x-t")
    assert verify_header_token(b"", {"x-t": "real"}, ["", "real"], header="x-t").key_index == 1


def test_dispatcher_unknown_scheme() -> None:
    bogus: Any = "jwt"
    with pytest.raises(ValueError, match="unknown verification scheme"):
        verify(bogus, b"", {}, ["s"], now=0)
    with pytest.raises(ValueError, match="unknown verification scheme"):
        sign(bogus, b"", "s")


@pytest.mark.parametrize("scheme", ["header-token", "hmac-sha256"])
def test_dispatcher_requires_header_name(scheme: Any) -> None:
    with pytest.raises(ValueError, match="header name"):
        verify(scheme, b"", {}, ["s"], now=0)
    with pytest.raises(ValueError, match="header name"):
        sign(scheme, b"", "s")


def test_dispatcher_known_answers() -> None:
    assert sign("hmac-sha256", RFC_BODY, RFC_KEY, header=HEADER) == {
        "x-signature-256": "sha256=" + RFC_HEX
    }
    assert (
        sign("standard-webhooks", SW_BODY, SW_SECRET, msg_id=SW_MSG_ID, timestamp=SW_TIMESTAMP)
        == sw_headers()
    )
    assert sign("header-token", b"", "tok", header="X-T") == {"x-t": "tok"}
    assert verify(
        "hmac-sha256", RFC_BODY, {"x-signature-256": RFC_B64}, [RFC_KEY], header=HEADER, now=0
    ) == Verified(0)
    assert verify("standard-webhooks", SW_BODY, sw_headers(), [SW_SECRET], now=SW_TIMESTAMP) == (
        Verified(0, SW_MSG_ID, SW_TIMESTAMP)
    )
    assert verify("header-token", b"", {"x-t": "tok"}, ["tok"], header="X-T", now=0) == Verified(0)


def test_dispatcher_passes_timestamp_options() -> None:
    with pytest.raises(VerificationError, match="too old"):
        verify(
            "standard-webhooks",
            SW_BODY,
            sw_headers(),
            [SW_SECRET],
            now=SW_TIMESTAMP + 61,
            tolerance_seconds=60,
        )
    result = verify(
        "standard-webhooks",
        SW_BODY,
        sw_headers(),
        [SW_SECRET],
        now=SW_TIMESTAMP + 10**6,
        check_timestamp=False,
    )
    assert result.timestamp == SW_TIMESTAMP


# --- rotation -------------------------------------------------------------------------------


def test_rotation_hmac_reports_second_secret() -> None:
    result = verify_hmac_sha256(TASK_BODY, {"sig": TASK_HEX_2}, [SECRET_1, SECRET_2], header="sig")
    assert result == Verified(key_index=1)
    result = verify_hmac_sha256(TASK_BODY, {"sig": TASK_HEX_1}, [SECRET_1, SECRET_2], header="sig")
    assert result == Verified(key_index=0)


def test_rotation_header_token_reports_second_secret() -> None:
    result = verify_header_token(b"", {"x-t": SECRET_2}, [SECRET_1, SECRET_2], header="x-t")
    assert result == Verified(key_index=1)


def test_rotation_standard_webhooks_reports_second_secret() -> None:
    old = "whsec_" + base64.b64encode(b"old key, retired soon").decode()
    result = sw_verify(sw_headers(), [old, SW_SECRET])
    assert result.key_index == 1


def test_rotation_both_signatures_sent_reports_first_configured_match() -> None:
    value = f"{TASK_HEX_2} {TASK_HEX_1}"
    result = verify_hmac_sha256(TASK_BODY, {"sig": value}, [SECRET_1, SECRET_2], header="sig")
    assert result.key_index == 0


@given(st.text(min_size=16))
def test_fingerprint_never_reveals_the_secret(secret: str) -> None:
    fp = fingerprint(secret, FP_KEY)
    assert fp != secret
    assert secret not in fp
    assert fp.startswith("hmac-sha256:")
    assert len(fp) == len("hmac-sha256:") + 16


def test_fingerprint_of_realistic_secrets() -> None:
    for secret in (SECRET_1, SECRET_2, SW_SECRET, RFC_HEX):
        fp = fingerprint(secret, FP_KEY)
        assert secret not in fp
        assert fp not in secret


# --- interop with the reference implementation ----------------------------------------------


def test_interop_reference_signs_we_verify() -> None:
    body = '{"task_id": "t-42", "status": "completed", "note": "ünïcode"}'
    ts = 1_700_000_123
    signature = Webhook(SW_SECRET).sign("msg_interop", datetime.fromtimestamp(ts, tz=UTC), body)
    headers = {
        "webhook-id": "msg_interop",
        "webhook-timestamp": str(ts),
        "webhook-signature": signature,
    }
    result = verify_standard_webhooks(body.encode(), headers, [SW_SECRET], now=ts + 5)
    assert result == Verified(0, "msg_interop", ts)


def test_interop_we_sign_reference_verifies() -> None:
    # The package checks freshness against its own clock, so sign with the current time.
    ts = int(time.time())
    body = b'{"task_id": "t-42", "status": "completed"}'
    headers = sign_standard_webhooks(body, SW_SECRET, msg_id="msg_ours", timestamp=ts)
    assert Webhook(SW_SECRET).verify(body, headers) == {"task_id": "t-42", "status": "completed"}


@given(
    key=st.binary(min_size=1, max_size=64),
    msg_id=st.text(st.characters(codec="ascii", exclude_characters=" "), min_size=1, max_size=40),
    payload=st.text(max_size=200),
    ts=st.integers(min_value=0, max_value=4_000_000_000),
)
def test_interop_property_both_directions(key: bytes, msg_id: str, payload: str, ts: int) -> None:
    secret = "whsec_" + base64.b64encode(key).decode()
    reference = Webhook(secret)
    signature = reference.sign(msg_id, datetime.fromtimestamp(ts, tz=UTC), payload)
    ours = sign_standard_webhooks(payload.encode(), secret, msg_id=msg_id, timestamp=ts)
    assert ours["webhook-signature"] == signature
    headers = {"webhook-id": msg_id, "webhook-timestamp": str(ts), "webhook-signature": signature}
    assert verify_standard_webhooks(payload.encode(), headers, [secret], now=ts).key_index == 0


# --- properties -----------------------------------------------------------------------------

secrets_st = st.text(min_size=1, max_size=64)
bodies_st = st.binary(max_size=512)


@given(body=bodies_st, secret=secrets_st)
def test_property_header_token_round_trip(body: bytes, secret: str) -> None:
    headers = sign("header-token", body, secret, header="X-Token")
    result = verify("header-token", body, headers, [secret], header="x-token", now=0)
    assert result == Verified(0)


@given(
    body=bodies_st,
    secret=secrets_st,
    encoding=st.sampled_from(["hex", "base64"]),
    prefix=st.sampled_from(["sha256=", ""]),
)
def test_property_hmac_round_trip(body: bytes, secret: str, encoding: str, prefix: str) -> None:
    headers = sign_hmac_sha256(body, secret, header="X-Sig", encoding=encoding, prefix=prefix)
    assert verify_hmac_sha256(body, headers, [secret], header="X-Sig") == Verified(0)


@given(
    body=bodies_st,
    secret=secrets_st,
    msg_id=st.text(min_size=1, max_size=40),
    ts=st.integers(min_value=0, max_value=10**12),
)
def test_property_standard_webhooks_round_trip(
    body: bytes, secret: str, msg_id: str, ts: int
) -> None:
    headers = sign_standard_webhooks(body, secret, msg_id=msg_id, timestamp=ts)
    result = verify_standard_webhooks(body, headers, [secret], now=ts)
    assert result == Verified(0, msg_id, ts)


@given(
    scheme=st.sampled_from(["hmac-sha256", "standard-webhooks"]),
    body=st.binary(min_size=1, max_size=512),
    secret=secrets_st,
    data=st.data(),
)
def test_property_flipping_any_body_byte_fails(
    scheme: Any, body: bytes, secret: str, data: st.DataObject
) -> None:
    headers = sign(scheme, body, secret, header="x-sig", msg_id="msg_1", timestamp=1_000)
    assert verify(scheme, body, headers, [secret], header="x-sig", now=1_000).key_index == 0
    index = data.draw(st.integers(min_value=0, max_value=len(body) - 1), label="index")
    mask = data.draw(st.integers(min_value=1, max_value=255), label="mask")
    tampered = bytearray(body)
    tampered[index] ^= mask
    with pytest.raises(VerificationError, match="invalid signature"):
        verify(scheme, bytes(tampered), headers, [secret], header="x-sig", now=1_000)


# --- error messages never leak secrets -----------------------------------------------------

LEAKY_SECRETS = [
    "s3cr3t-do-not-leak-0001",
    "whsec_" + base64.b64encode(b"do not leak this key!!").decode(),
]


def _failures(secret: str) -> list[VerificationError]:
    near = secret[:-1] + ("x" if secret[-1] != "x" else "y")
    attempts: list[tuple[str, dict[str, str], bytes]] = [
        ("header-token", {}, b""),
        ("header-token", {"x-auth": near}, b""),
        ("header-token", {"x-auth": secret + secret}, b""),
        ("hmac-sha256", {}, b"body"),
        ("hmac-sha256", {"x-auth": secret}, b"body"),
        ("hmac-sha256", {"x-auth": sign_hmac_sha256(b"other", secret, header="x")["x"]}, b"body"),
        ("standard-webhooks", {}, b"body"),
        ("standard-webhooks", sw_headers(timestamp=secret), b"body"),
        ("standard-webhooks", sw_headers(secret), b"body"),
        ("standard-webhooks", sign_standard_webhooks(b"x", secret, msg_id="m", timestamp=1), b"y"),
        (
            "standard-webhooks",
            sign_standard_webhooks(b"x", secret, msg_id="m", timestamp=9**9),
            b"x",
        ),
    ]
    errors: list[VerificationError] = []
    for scheme, headers, body in attempts:
        with pytest.raises(VerificationError) as info:
            verify(scheme, body, headers, [secret], header="X-Auth", now=1)  # type: ignore[arg-type]
        errors.append(info.value)
    return errors


@pytest.mark.parametrize("secret", LEAKY_SECRETS)
def test_error_messages_never_contain_the_secret(secret: str) -> None:
    errors = _failures(secret)
    assert len(errors) == 11
    for error in errors:
        for text in (error.reason, str(error), repr(error)):
            assert secret not in text
            assert secret.removeprefix("whsec_") not in text
            assert fingerprint(secret, FP_KEY) not in text


# Every reason verification can give, for a source whose header is "X-Auth". None of them is
# built from request or secret material, so none can carry a secret.
FIXED_REASONS = frozenset(
    {
        "no secret configured",
        "missing header x-auth",
        "invalid token in header x-auth",
        "malformed signature in header x-auth",
        "invalid signature in header x-auth",
        "missing header webhook-id",
        "missing header webhook-timestamp",
        "missing header webhook-signature",
        "invalid header webhook-timestamp: not an integer",
        "timestamp too old",
        "timestamp too far in the future",
        "no v1 signature in header webhook-signature",
        "invalid signature in header webhook-signature",
    }
)


@given(st.text(min_size=1, max_size=64))
def test_property_error_reasons_are_fixed_strings(secret: str) -> None:
    # A plain "secret not in reason" property is wrong for arbitrary text: hypothesis readily
    # picks a secret such as "webhook-timestam" that is a substring of a fixed reason. The
    # real guarantee is stronger: the reason comes from a fixed set, whatever the secret is.
    for error in _failures(secret):
        assert error.reason in FIXED_REASONS
        assert str(error) == error.reason


# --- before the body ------------------------------------------------------------------------


def test_precheck_decides_a_header_token_without_the_body() -> None:
    assert precheck("header-token", {"x-t": "tok"}, ["tok"], header="X-T", now=0) == Verified(0)
    with pytest.raises(VerificationError, match="invalid token"):
        precheck("header-token", {"x-t": "nope"}, ["tok"], header="x-t", now=0)


def test_precheck_of_signed_schemes_checks_headers_only() -> None:
    assert precheck("hmac-sha256", {"sig": "abc"}, [SECRET_1], header="sig", now=0) is None
    with pytest.raises(VerificationError, match="missing header sig"):
        precheck("hmac-sha256", {}, [SECRET_1], header="sig", now=0)
    fresh = sw_headers()
    assert precheck("standard-webhooks", fresh, [SW_SECRET], now=SW_TIMESTAMP) is None
    with pytest.raises(VerificationError, match="timestamp too old"):
        precheck("standard-webhooks", fresh, [SW_SECRET], now=SW_TIMESTAMP + 301)
    with pytest.raises(VerificationError, match="webhook-id too long"):
        precheck("standard-webhooks", sw_headers(msg_id="m" * 257), [SW_SECRET], now=SW_TIMESTAMP)


def test_credential_headers_are_bounded() -> None:
    huge = "v1," + "A" * MAX_CREDENTIAL_HEADER
    with pytest.raises(VerificationError, match="longer than 4096"):
        sw_verify(sw_headers(huge))
    with pytest.raises(VerificationError, match="longer than 4096"):
        verify_hmac_sha256(RFC_BODY, {"s": "a" * 4097}, [RFC_KEY], header="s")
    with pytest.raises(VerificationError, match="longer than 4096"):
        verify_header_token(b"", {"t": "a" * 4097}, ["a" * 4097], header="t")


def test_a_utf8_token_matches_as_servers_hand_it_over() -> None:
    token = "pässwörd-ünïcode"
    latin1_view = token.encode("utf-8").decode("latin-1")  # what the server decoded
    assert verify_header_token(b"", {"t": latin1_view}, [token], header="t").key_index == 0
    assert verify_header_token(b"", {"t": token}, [token], header="t").key_index == 0
    with pytest.raises(VerificationError):
        verify_header_token(b"", {"t": "passwort"}, [token], header="t")


def test_precheck_requires_the_standard_webhooks_signature() -> None:
    headers = {k: v for k, v in sw_headers().items() if k != "webhook-signature"}
    with pytest.raises(VerificationError, match="missing header webhook-signature"):
        precheck("standard-webhooks", headers, [SW_SECRET], now=SW_TIMESTAMP)
