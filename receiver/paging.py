"""Opaque keyset-paging tokens. A token names the last row seen, never an offset, so pages
stay correct while new rows arrive and cost the same at any depth."""

from __future__ import annotations

import base64


def encode_token(seq: int) -> str:
    return base64.urlsafe_b64encode(f"s:{seq}".encode()).decode().rstrip("=")


def decode_token(token: str) -> int:
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
        kind, _, value = raw.partition(":")
        if kind != "s":
            raise ValueError(kind)
        return int(value)
    except (ValueError, UnicodeDecodeError):
        raise ValueError("next_token is not valid") from None
