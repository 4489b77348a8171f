"""Secrets stay out of stored headers, log lines and printed database URLs."""

from __future__ import annotations

import json

import pytest
import structlog

from receiver.logs import configure_logging
from receiver.redaction import REDACTED, Redactor, redact_url


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://app:s3cret@db:5432/x", "postgresql://app:***@db:5432/x"),
        ("postgresql://app@db/x?password=s3cret&sslmode=require",
         "postgresql://app@db/x?password=***&sslmode=require"),
        ("postgres://db/x?sslmode=require&PASSWORD=s3cret", "postgres://db/x?sslmode=require&PASSWORD=***"),
        ("postgresql://app:p%40ss@db/x", "postgresql://app:***@db/x"),
        ("sqlite:///taskhook.db", "sqlite:///taskhook.db"),
        ("postgresql://app@db/x", "postgresql://app@db/x"),
    ],
)  # fmt: skip
def test_database_urls_lose_their_password(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_headers_are_redacted_by_name_and_by_value() -> None:
    redactor = Redactor(["long-secret-value", "abc"])
    out = redactor.headers(
        {"authorization": "Bearer x", "x-a": "key=long-secret-value;", "x-b": "abc",
         "x-c": "abcdef", "x-d": "plain"},
        by_name=frozenset({"authorization"}),
    )  # fmt: skip
    # "abc" is too short to hunt for inside text ("abcdef" stays), but not as a whole value.
    assert out == {"authorization": REDACTED, "x-a": REDACTED, "x-b": REDACTED,
                   "x-c": "abcdef", "x-d": "plain"}  # fmt: skip


def test_log_lines_are_scrubbed(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(format="json", level="info", secrets=["super-secret-key"])
    structlog.get_logger("t").info(
        "connecting", url="postgresql://u:super-secret-key@h/db", note="nothing here"
    )
    line = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
    assert "super-secret-key" not in json.dumps(line)
    assert line["url"] == f"postgresql://u:{REDACTED}@h/db"
    assert line["note"] == "nothing here"


def test_utf8_secrets_are_redacted_as_servers_hand_them_over() -> None:
    secret = "clé-secrète-123"
    as_received = secret.encode().decode("latin-1")  # header bytes decoded as latin-1
    out = Redactor([secret]).headers({"x-other": f"token {as_received}", "x-fine": "ok"})
    assert out == {"x-other": REDACTED, "x-fine": "ok"}


def test_a_secret_sent_as_a_header_name_is_not_stored() -> None:
    out = Redactor(["name-secret-1"]).headers({"name-secret-1": "x", "x-fine": "ok"})
    assert "name-secret-1" not in json.dumps(out)
    assert REDACTED in out.values() and out["x-fine"] == "ok"
