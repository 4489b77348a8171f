"""structlog set-up: JSON lines in production, a readable console on a terminal.

`configure_logging` is called by the CLI (and tests), never at import. Request and dispatch
code bind ``delivery_id``, ``source`` and ``task_id`` through contextvars.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterable
from typing import Literal

import structlog

from receiver.redaction import Redactor

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


def colour_wanted(stream: object = None) -> bool:
    """Colour only for a terminal, and never when ``NO_COLOR`` is set (https://no-color.org)."""
    stream = sys.stderr if stream is None else stream
    isatty = getattr(stream, "isatty", None)
    return not os.environ.get("NO_COLOR") and bool(isatty and isatty())


def configure_logging(
    *,
    format: Literal["auto", "json", "console"] = "auto",
    level: str = "info",
    secrets: Iterable[str] = (),
) -> None:
    """`secrets` (every configured one) are scrubbed from every line, whatever field
    carries them. Records of the standard `logging` module (uvicorn's) are rendered by the
    same processors, so with ``format = "json"`` every line is JSON."""
    use_console = format == "console" or (format == "auto" and sys.stderr.isatty())
    renderer: structlog.typing.Processor = (
        structlog.dev.ConsoleRenderer(colors=colour_wanted())
        if use_console
        else structlog.processors.JSONRenderer()
    )
    shared: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    # Tracebacks become text before the redactor, so a secret in one is scrubbed too.
    tail: list[structlog.typing.Processor] = [
        structlog.processors.format_exc_info,
        Redactor(secrets),
    ]
    structlog.configure(
        processors=[*shared, *tail, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                *tail,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "_taskhook", False)]:
        root.removeHandler(old)  # configured again (tests, a second command): one handler
    handler._taskhook = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(_LEVELS[level])
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        # uvicorn's loggers may carry handlers from an earlier dictConfig: theirs would print
        # a second, unformatted copy of each line.
        logging.getLogger(name).handlers.clear()
        logging.getLogger(name).propagate = True
