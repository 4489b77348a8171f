"""SQLite-flavoured SQL as PostgreSQL runs it.

Plugins (the ledgers) write their SQL once, in the SQLite dialect, and run on either backend.
This is the small translation that makes that true for the SQL they use: ``?`` and ``:name``
parameters become ``$n``; ``INSERT OR IGNORE`` becomes ``ON CONFLICT DO NOTHING``; in DDL,
``INTEGER PRIMARY KEY AUTOINCREMENT`` becomes ``BIGSERIAL PRIMARY KEY``, ``REAL`` becomes
``DOUBLE PRECISION`` and ``BLOB`` becomes ``BYTEA``. Quoted literals are left alone.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

_TOKENS = re.compile(r"'(?:[^']|'')*'|\?|(?<![:\w]):([A-Za-z_]\w*)")
_DDL = (
    (re.compile(r"\bINTEGER\s+PRIMARY\s+KEY\s+AUTOINCREMENT\b", re.I), "BIGSERIAL PRIMARY KEY"),
    (re.compile(r"\bREAL\b", re.I), "DOUBLE PRECISION"),
    (re.compile(r"\bBLOB\b", re.I), "BYTEA"),
)
_OR_IGNORE = re.compile(r"^\s*INSERT\s+OR\s+IGNORE\s+INTO\b", re.I)


@dataclass(frozen=True, slots=True)
class Translated:
    sql: str
    names: tuple[str, ...]  # for ``:name`` parameters, the name of each ``$n`` in order
    returns_rows: bool

    def args(self, params: Sequence[Any] | Mapping[str, Any]) -> list[Any]:
        if isinstance(params, Mapping):
            return [params[name] for name in self.names]
        return list(params)


@lru_cache(maxsize=1024)
def to_postgres(sql: str) -> Translated:
    names: list[str] = []
    count = 0

    def number(match: re.Match[str]) -> str:
        nonlocal count
        token = match.group(0)
        if token.startswith("'"):
            return token
        if match.group(1):
            if match.group(1) in names:
                return f"${names.index(match.group(1)) + 1}"
            names.append(match.group(1))
            return f"${len(names)}"
        count += 1
        return f"${count}"

    out = _TOKENS.sub(number, sql)
    if _OR_IGNORE.match(out):
        out = _OR_IGNORE.sub("INSERT INTO", out, count=1).rstrip().rstrip(";")
        out += " ON CONFLICT DO NOTHING"
    head = out.lstrip().upper()
    if head.startswith(("CREATE", "ALTER")):
        for pattern, replacement in _DDL:
            out = pattern.sub(replacement, out)
    returns = head.startswith(("SELECT", "WITH", "VALUES")) or " RETURNING " in f" {head} "
    return Translated(out, tuple(names), returns)
