"""One reconciliation pass, and the loop `serve` runs: poll, skip what was fed, feed the rest.

Snapshots go through `Intake.accept` marked reconciled, so they are deduplicated, stored
durably and dispatched like any delivery, and the ledger applies its rules unchanged. A
snapshot an earlier pass already fed (same bytes) is skipped before it is stored, so an
unchanged task costs one indexed lookup, not a duplicate row per pass. The cursor is saved
only after everything before it is stored: a pass that fails resumes, never skips.

A record the poller read but could not make a snapshot of is stored quarantined with the
poller's reason, like a snapshot the intake cannot parse: nothing read is dropped unseen,
and the pass's summary counts both, so `taskhook reconcile` can fail a pass that lost data
to the quarantine instead of reporting success.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
import structlog

from receiver.errors import StorageUnavailable, VendorError
from receiver.intake import Intake
from receiver.reconcile.base import Page, Poller
from receiver.source_runtime import SourceRuntime
from receiver.storage import Storage

log = structlog.get_logger("taskhook.reconcile")

HEADERS = {"content-type": "application/json", "x-taskhook-origin": "reconcile"}


@dataclass(frozen=True, slots=True)
class ReadPage(Page):
    """A page that also carries the records its poller could not read, each with why."""

    unreadable: list[tuple[Any, str]] = field(default_factory=list)


@dataclass
class Summary:
    source: str
    fetched: int = 0
    fed: int = 0
    unchanged: int = 0
    duplicate: int = 0
    quarantined: Counter[str] = field(default_factory=Counter)
    cursor: str | None = None

    def render(self) -> str:
        line = (
            f"{self.source}: {self.fetched} task snapshots read, {self.fed} new fed, "
            f"{self.unchanged} unchanged, {self.duplicate} duplicate"
        )
        for reason, count in self.quarantined.most_common():
            line += f"\n  quarantined {count}: {reason}"
        return line


# Called after each page a pass has stored, with that pass's running `Summary`.
OnPage = Callable[[Summary], None]


def body_of(snapshot: object) -> bytes:
    # Sorted keys: the same vendor state always makes the same bytes, hence the same key.
    try:
        return orjson.dumps(snapshot, option=orjson.OPT_SORT_KEYS)
    except orjson.JSONEncodeError:
        # An integer past 64 bits (the vendor's JSON allows it, orjson does not) must not
        # stop the pass: the standard library writes it, as deterministically.
        return json.dumps(snapshot, sort_keys=True, separators=(",", ":")).encode()


class Reconciler:
    def __init__(
        self,
        source: SourceRuntime,
        poller: Poller,
        *,
        intake: Intake,
        storage: Storage,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.source = source
        self.poller = poller
        self._intake = intake
        self._storage = storage
        self._clock = clock

    async def once(self, on_page: OnPage | None = None) -> Summary:
        """One pass. `on_page`, when given, is called with the pass's running summary after
        each page is stored (a command's progress; the summary is this pass's, not a copy)."""
        name = self.source.name
        summary = Summary(name)
        cursor = await self._storage.load_cursor(name)
        async for page in self.poller.poll(cursor, self._clock()):
            bodies = [body_of(s) for s in page.snapshots]
            keys = ["sha256:" + hashlib.sha256(b).hexdigest() for b in bodies]
            known = await self._storage.known_bodies(name, keys) if keys else set()
            summary.fetched += len(bodies)
            fresh = [b for b, k in zip(bodies, keys, strict=True) if k not in known]
            summary.unchanged += len(bodies) - len(fresh)
            unreadable = page.unreadable if isinstance(page, ReadPage) else []
            summary.fetched += len(unreadable)
            answers = await asyncio.gather(
                *(self._intake.accept(self.source, b, dict(HEADERS), reconciled=True)
                  for b in fresh),
                *(self._intake.accept(self.source, body_of(record), dict(HEADERS),
                                      reconciled=True, unreadable=why)
                  for record, why in unreadable),
            )  # fmt: skip
            for status, answer in answers:
                doc = orjson.loads(answer)
                if status == 503:
                    raise StorageUnavailable("storage unavailable while feeding snapshots")
                if status != 200:
                    summary.quarantined[str(doc.get("reason") or doc.get("error"))] += 1
                elif doc.get("status") == "duplicate":
                    summary.duplicate += 1
                else:
                    summary.fed += 1
            if page.cursor is not None:
                await self._storage.save_cursor(name, page.cursor, now=self._clock())
                summary.cursor = page.cursor
            if on_page is not None:
                on_page(summary)
        log.info(
            "reconciled", source=name, fetched=summary.fetched, fed=summary.fed,
            unchanged=summary.unchanged,
        )  # fmt: skip
        return summary

    async def forever(self, interval: float, on_page: OnPage | None = None) -> None:
        """Pass after pass, `interval` seconds apart; a failed pass is logged and retried
        at the next interval (its cursor did not move). `on_page`: as in `once`."""
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(source=self.source.name)
        while True:
            try:
                summary = await self.once(on_page)
                if summary.quarantined:
                    # Stored, yet not applied: the operator has to look (no exit status here).
                    log.warning(
                        "reconciled records quarantined", source=self.source.name,
                        quarantined=dict(summary.quarantined),
                    )  # fmt: skip
            except (VendorError, StorageUnavailable) as exc:
                log.error("reconciliation pass failed", source=self.source.name, error=str(exc))
            except Exception:
                log.exception("reconciliation pass crashed", source=self.source.name)
            await asyncio.sleep(interval)
