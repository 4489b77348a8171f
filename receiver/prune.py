"""Retention: what `taskhook prune` and the pruner inside `serve` remove, and what never.

One pass (`Pruner.run`), with the ages of ``[retention]``:

(a) duplicate receipt rows received more than ``duplicate_days`` ago are deleted; their count
    stays on the original, whose ``duplicate_rows`` goes down by as many, so later receipts
    may be kept as rows again;
(b) processed deliveries that were processed more than ``processed_days`` ago lose their body
    and headers (body NULL, headers ``{}``): the row, its status, events and handler runs stay;
(c) dead and quarantined deliveries likewise, after ``dead_days`` in that state.

Never touched: a pending delivery (received, failed) or anything in the dispatch queue; a
processed delivery whose events are not derived (`taskhook rebuild` is deriving them again
and needs the body); and what a plugin still needs (`HandlerRegistry.retain`: the ledger keeps
the delivery each task was last applied from). A delivery without its body can no longer be
retried (`requeue` refuses it).

Work is done in batches, each one transaction through `Storage.transaction`: at most
`batch` rows and about `batch_bytes` of bodies. On SQLite a batch is one op of the writer,
which runs on the event loop: a pass over millions of rows is thousands of small ops, and the
intake's inserts commit between them. On PostgreSQL a batch is a transaction of its own that
first takes the pruner's lock (`PRUNE_LOCK`), so replicas pruning at once queue behind each
other instead of racing; plugins' transactions run beside it, and its last statement checks
again what it removes (still prunable, not queued, derived). Candidates come from partial
indexes that hold only what retention may still change (`deliveries_prunable`,
`deliveries_duplicates`), read from a cursor, so what is kept is passed over once per pass,
not read again per batch.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import structlog

from receiver.config import RetentionSettings
from receiver.errors import StorageUnavailable
from receiver.metrics import Metrics
from receiver.plugin_store import Tx
from receiver.storage import Storage
from receiver.storage.retention import (
    COUNT_DUPLICATES,
    START,
    STATES,
    Cursor,
    drop_duplicates,
    strip_batch,
)

log = structlog.get_logger("taskhook.prune")

DAY = 86_400.0
BATCH = 1000
BATCH_BYTES = 32 * 1024 * 1024
#: The lock key every batch takes first (`Tx.lock`): one batch at a time across replicas.
PRUNE_LOCK = "taskhook:prune"


@dataclass
class PruneSummary:
    duplicates: int = 0  # duplicate receipt rows deleted
    processed: int = 0  # processed deliveries whose body and headers went
    dead: int = 0  # dead and quarantined ones
    kept: int = 0  # past their time, but a plugin still needs them

    @property
    def bodies(self) -> int:
        return self.processed + self.dead

    def render(self, *, dry_run: bool = False) -> str:
        verb = "would be removed" if dry_run else "removed"
        return (
            f"pruned{' (dry run)' if dry_run else ''}: {self.duplicates} duplicate receipt(s) "
            f"and the bodies of {self.processed} processed and {self.dead} dead or quarantined "
            f"delivery(ies) {verb}; {self.kept} kept for plugins"
        )


class Pruner:
    def __init__(
        self,
        storage: Storage,
        settings: RetentionSettings,
        *,
        retained: Sequence[str] = (),
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.time,
        batch: int = BATCH,
        batch_bytes: int = BATCH_BYTES,
    ) -> None:
        self._storage = storage
        self._settings = settings
        self._retained = tuple(retained)
        self._metrics = metrics
        self._clock = clock
        self._batch = batch
        self._batch_bytes = batch_bytes

    async def forever(self, interval: float, *, first: float) -> None:
        """A pass `first` seconds from now, then one every `interval` (cancel to stop).
        A pass that fails is logged; the next one comes as planned."""
        await asyncio.sleep(first)
        while True:
            try:
                summary = await self.run()
            except StorageUnavailable as exc:
                log.warning("retention pass stopped: storage unavailable", error=str(exc))
            except Exception:
                log.exception("retention pass failed")
            else:
                if summary.duplicates or summary.bodies:
                    log.info(summary.render(), duplicates=summary.duplicates,
                             bodies=summary.bodies, kept=summary.kept)  # fmt: skip
            await asyncio.sleep(interval)

    async def run(self, *, dry_run: bool = False) -> PruneSummary:
        """One pass (module docstring); with `dry_run`, only count what it would remove."""
        now = self._clock()
        settings = self._settings
        summary = PruneSummary()
        summary.duplicates = await self._duplicates(now - settings.duplicate_days * DAY, dry_run)
        for status in STATES:
            days = settings.processed_days if status == "processed" else settings.dead_days
            stripped, kept = await self._strip(status, now - days * DAY, dry_run)
            summary.kept += kept
            if status == "processed":
                summary.processed += stripped
            else:
                summary.dead += stripped
        return summary

    async def _duplicates(self, before: float, dry_run: bool) -> int:
        if dry_run:
            rows = await self._storage.query(COUNT_DUPLICATES, {"before": before})
            return int(rows[0][0])
        deleted = 0

        async def batch(tx: Tx) -> int:
            await tx.lock([PRUNE_LOCK])
            return await drop_duplicates(tx, before, self._batch)

        while True:  # each round deletes what it read, so the rounds end
            done: int = await self._storage.transaction(batch)
            deleted += done
            if self._metrics is not None and done:
                self._metrics.pruned.labels("duplicates").inc(done)
            if done < self._batch:
                return deleted

    async def _strip(self, status: str, before: float, dry_run: bool) -> tuple[int, int]:
        stripped = kept = 0
        cursor: Cursor | None = START
        while cursor is not None:  # the cursor only moves forward, so the rounds end

            async def batch(tx: Tx, after: Cursor = cursor) -> tuple[int, int, Cursor | None]:
                await tx.lock([PRUNE_LOCK])
                return await strip_batch(
                    tx, status=status, before=before, after=after, retained=self._retained,
                    limit=self._batch, limit_bytes=self._batch_bytes, dry_run=dry_run,
                )  # fmt: skip

            done, held, cursor = await self._storage.transaction(batch)
            stripped += done
            kept += held
            if self._metrics is not None and done and not dry_run:
                self._metrics.pruned.labels("deliveries_bodies").inc(done)
        return stripped, kept
