"""One task asked for from its vendor now: the watchdog's answer to a callback that is late.

A Refonte-kind source is asked for that task (``GET /v1/task/{id}``) and the task object
becomes a callback body fed through `Intake.accept` marked reconciled, exactly as a polling
pass feeds snapshots (`receiver.reconcile.runner`): the same bytes for the same vendor
state, skipped when an earlier pass or ask fed them already, deduplicated, stored durably
and dispatched; the ledger's rules decide what it means. Vendors with no per-task endpoint
the pollers use (TaskMonk, Clarifai) get one full reconciliation pass instead.

Never raises for a vendor's or the database's trouble: it is logged and the answer is
False, so the periodic job that asks goes on with the next task.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

import orjson
import structlog

from receiver.errors import StorageUnavailable, VendorError
from receiver.reconcile.base import callback
from receiver.reconcile.refonte import RefontePoller
from receiver.reconcile.runner import HEADERS, Reconciler, body_of

if TYPE_CHECKING:
    from receiver.app import TaskhookApp

log = structlog.get_logger("taskhook.reconcile")


async def reconcile_one(app: TaskhookApp, source: str, task_id: str) -> bool:
    """Ask `source`'s vendor for `task_id` and feed the answer; True when the vendor was
    asked and what it said is stored (or was already), False when nothing could be asked
    (no such source, no ``[reconcile]`` section, an unknown task, a failure)."""
    bound = log.bind(source=source, task_id=task_id)
    runtime = app.sources.get(source)
    if runtime is None or runtime.settings.reconcile is None:
        bound.info("targeted reconcile skipped: the source is not polled")
        return False
    reconciler = app.reconciler(source)
    try:
        if isinstance(reconciler.poller, RefontePoller):
            return await _one(app, reconciler, task_id)
        summary = await reconciler.once()
        bound.info("targeted reconcile ran a full pass", fed=summary.fed)
        return True
    except (VendorError, StorageUnavailable) as exc:
        bound.warning("targeted reconcile failed", error=str(exc))
        return False
    finally:
        await reconciler.poller.aclose()


async def _one(app: TaskhookApp, reconciler: Reconciler, task_id: str) -> bool:
    poller = reconciler.poller
    assert isinstance(poller, RefontePoller)
    source = reconciler.source
    bound = log.bind(source=source.name, task_id=task_id)
    task = await poller.fetch(task_id)
    if task is None:
        bound.warning("targeted reconcile: the vendor does not know the task")
        return False
    body = body_of(callback(task))
    key = "sha256:" + hashlib.sha256(body).hexdigest()  # as the polling pass keys bodies
    if key in await app.storage.known_bodies(source.name, [key]):
        bound.info("targeted reconcile: the vendor's state was fed already")
        return True
    status, answer = await app.intake.accept(source, body, dict(HEADERS), reconciled=True)
    if status == 503:
        raise StorageUnavailable("storage unavailable while feeding a reconciled task")
    doc = orjson.loads(answer)
    if status != 200:
        bound.warning("targeted reconcile: the task was quarantined", reason=doc.get("reason"))
        return False
    bound.info("targeted reconcile fed the task", status=doc.get("status"),
               delivery_id=doc.get("delivery_id"), vendor_status=task.get("status"))  # fmt: skip
    return True
