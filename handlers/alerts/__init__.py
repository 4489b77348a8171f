"""The built-in alerts plugin: operational signals posted to a webhook.

It hears every `Signal` (``registry.on_signal``): a dead delivery, failing verification and
a stale backlog (raised by the receiver's monitor), a late task (raised by the watchdog).
Each goes through the outbox (`outbox`): de-duplicated per (kind, key) within
``repeat_seconds``, held to ``max_per_hour``, stored, then posted at once (`send`) unless the
webhook is failing; what it refuses is posted again by the periodic job ``alerts.outbox``
(every ``check_seconds``) with backoff.

With no ``[alerts] url`` it registers nothing (the plugin still loads: it is an entry point
of every installation). Registered through the public plugin API only.
"""

from __future__ import annotations

import structlog

from handlers.alerts.outbox import Outbox
from handlers.alerts.send import Sender
from handlers.alerts.tables import MIGRATIONS
from receiver.errors import RegistryError
from receiver.registry import HandlerRegistry
from receiver.signals import Signal

log = structlog.get_logger("taskhook.alerts")

JOB = "alerts.outbox"
# Signal kinds an [alerts] switch turns off. The monitor raises the others only past the
# thresholds of [alerts] (verification_failures, backlog_age_seconds): those are its switches.
SWITCHES = {"delivery.dead": "dead", "task.late": "late_tasks"}


def register(registry: HandlerRegistry) -> None:
    settings = registry.settings
    if settings is None or settings.alerts.url is None:
        return
    alerts = settings.alerts
    storage = registry.storage
    if storage is None:
        raise RegistryError("alerts need the app's storage (their outbox is a table)")
    storage.declare("alerts", MIGRATIONS)
    clock = registry.clock
    outbox = Outbox(storage, repeat_seconds=alerts.repeat_seconds, max_per_hour=alerts.max_per_hour)
    sender = Sender(
        outbox,
        url=alerts.url,
        fmt=alerts.format,
        secret=alerts.secret.get_secret_value() if alerts.secret is not None else None,
        timeout=alerts.timeout_seconds,
        clock=clock,
        public_url=alerts.public_url,
    )

    async def heard(signal: Signal) -> None:
        switch = SWITCHES.get(signal.kind)
        if switch is not None and not getattr(alerts, switch):
            return
        outcome, alert_id = await outbox.queue(signal, clock())
        if outcome == "suppressed":
            log.warning("alert suppressed: max_per_hour reached", kind=signal.kind,
                        key=signal.key, max_per_hour=alerts.max_per_hour)  # fmt: skip
        if outcome != "queued":
            return
        log.info("alert queued", alert_id=alert_id, kind=signal.kind, key=signal.key)
        if await outbox.failing():
            # The webhook is failing: posting now would make whoever raised the signal (the
            # monitor, the watchdog's sweep) wait out a timeout per alert. The periodic job
            # posts it, oldest first, and stops at the first failure.
            return
        await sender.flush()

    async def retry() -> None:
        now = clock()
        await outbox.release_notice(now)
        await sender.flush()
        await outbox.prune(now)

    registry.on_signal(heard)
    registry.every(alerts.check_seconds, retry, name=JOB)
