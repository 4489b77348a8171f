"""The dashboard's Jinja2 environments: autoescaped and secret-scrubbing.

One environment per template search path, built per app (never at import). Every value a
template outputs passes `finalize`, which replaces any configured secret (source secrets,
API keys, the database password) with ``[redacted]``: a last line of defence behind the
redaction at intake, so no page can print one whatever a template or plugin asks for.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jinja2
import orjson
from markupsafe import Markup

from receiver import times
from receiver.redaction import Redactor

TEMPLATES = Path(__file__).resolve().parent / "templates"


def iso(ts: float | None) -> str:
    return "" if ts is None else times.iso(ts)


def pretty_json(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS).decode()


def short(value: str | None, length: int = 12) -> str:
    if not value:
        return ""
    return value if len(value) <= length else value[:length] + "…"


def environment(dirs: Sequence[Path], redactor: Redactor) -> jinja2.Environment:
    """Templates from `dirs`, in order, then the dashboard's own (``base.html``)."""
    loaders: list[jinja2.BaseLoader] = [jinja2.FileSystemLoader(str(d)) for d in dirs]
    loaders.append(jinja2.FileSystemLoader(str(TEMPLATES)))

    def finalize(value: Any) -> Any:
        if isinstance(value, Markup):
            return Markup(redactor.text(str(value)))  # noqa: S704 - already markup; scrubbed
        if isinstance(value, str):
            return redactor.text(value)
        return "" if value is None else value

    env = jinja2.Environment(
        loader=jinja2.ChoiceLoader(loaders),
        autoescape=True,
        finalize=finalize,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(iso=iso, pretty_json=pretty_json, short=short)
    return env
