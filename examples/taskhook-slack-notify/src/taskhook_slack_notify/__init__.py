"""Post a short Slack message when a task completes or errors.

taskhook calls `register(registry)` once per app, either because this package advertises it
in the ``taskhook.handlers`` entry-point group or because the config lists
``handlers = ["taskhook_slack_notify"]``. The Incoming Webhook URL is read from
``$SLACK_WEBHOOK_URL`` each time a message is sent; when it is unset the handler only logs.
"""

from __future__ import annotations

import asyncio
import json
import os
import urllib.parse
import urllib.request

import structlog

from receiver.events import Event
from receiver.registry import HandlerRegistry

__all__ = ["HANDLER_NAME", "format_message", "notify", "on_handler_error", "register"]

HANDLER_NAME = "slack_notify.notify"
EVENTS = ("task.completed", "task.errored")
ENV_VAR = "SLACK_WEBHOOK_URL"
TIMEOUT_SECONDS = 10.0

log = structlog.get_logger("taskhook_slack_notify")


def format_message(event: Event) -> str:
    """One line of text for `event`."""
    task = f"`{event.task_id or '?'}` from {event.source}"
    if event.name == "task.errored":
        error = event.payload.get("error") or "no error message"
        return f":x: Task {task} errored: {error}"
    if event.name == "task.completed":
        return f":white_check_mark: Task {task} completed"
    return f"Task {task}: {event.name}"


def _post(url: str, text: str) -> None:
    """Blocking POST of a Slack message; raises on a network error or a non-2xx answer."""
    if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
        raise ValueError(f"{ENV_VAR} must be an http(s) URL")
    request = urllib.request.Request(  # noqa: S310 - scheme checked above
        url,
        data=json.dumps({"text": text}).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=TIMEOUT_SECONDS) as response:  # noqa: S310
        response.read()


async def send(text: str) -> bool:
    """Send `text` to Slack if configured; return whether a message was sent."""
    url = os.environ.get(ENV_VAR, "").strip()
    if not url:
        log.info("slack notification skipped: no webhook configured", env=ENV_VAR, text=text)
        return False
    # urllib blocks; keep it off the event loop so other deliveries keep moving.
    await asyncio.to_thread(_post, url, text)
    return True


async def notify(event: Event) -> None:
    """Handler for task.completed and task.errored. An exception makes taskhook retry it."""
    if await send(format_message(event)):
        log.info("slack notification sent", event_name=event.name, task_id=event.task_id)


async def on_handler_error(event: Event, handler_name: str, exc: BaseException) -> None:
    """Error hook: taskhook calls it whenever any handler fails."""
    log.warning(
        "taskhook handler failed",
        handler=handler_name,
        event_name=event.name,
        task_id=event.task_id,
        error=f"{type(exc).__name__}: {exc}",
    )
    if handler_name == HANDLER_NAME:
        return  # Slack itself is the problem: don't try to tell Slack about it.
    await send(f":warning: taskhook handler `{handler_name}` failed on {event.name}: {exc}")


def register(registry: HandlerRegistry) -> None:
    registry.on(EVENTS, notify, name=HANDLER_NAME)
    registry.on_error(on_handler_error)
