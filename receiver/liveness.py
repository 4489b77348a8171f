"""A dispatching process's heartbeat in the shared database, and the takeover of dead ones.

Every ``heartbeat_seconds`` a process writes its owner row (host, pid, time) and extends the
lease of each delivery it has in flight, in one transaction: a live process never loses a
claim, however long its handlers take. Beside that it reads the other owners' rows; an owner
is dead when its last beat is older than ``takeover_seconds``, or at once when it ran on this
host under a pid that no longer exists (a restart after ``kill -9``). A dead owner's leases
are released for anyone to claim and its row forgotten.

A process that could not beat for longer than ``takeover_seconds - heartbeat_seconds`` must
assume others are about to take its claims over: `healthy` turns false, and the dispatcher
then starts no new claim and no new handler run until a beat succeeds again (it fences
itself, so a stalled replica that wakes up does not run what another replica now runs).
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Callable

import structlog

from receiver.config import DispatchSettings
from receiver.records import Owner
from receiver.storage import Storage

log = structlog.get_logger("taskhook.dispatch")


def host_identity() -> str:
    """This host as pids mean something on it: the host name and the pid namespace (two
    containers sharing a host name do not see each other's pids)."""
    try:
        namespace = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return socket.gethostname()
    return f"{socket.gethostname()}/pid:{namespace}"


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process, alive
    return True


class Liveness:
    def __init__(
        self,
        *,
        storage: Storage,
        settings: DispatchSettings,
        owner: str,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._storage = storage
        self._settings = settings
        self.owner = owner
        self._clock = clock
        self.host = host_identity()
        self.pid = os.getpid()
        self._last_ok: float | None = None  # monotonic time of the last successful beat
        self._lock = asyncio.Lock()

    def healthy(self) -> bool:
        """May this process still trust its claims (and make new ones)?"""
        if self._last_ok is None:
            return False
        margin = self._settings.takeover_seconds - self._settings.heartbeat_seconds
        return time.monotonic() - self._last_ok < margin

    def due(self) -> bool:
        return self.until_due() <= 0

    def until_due(self) -> float:
        """Seconds until the next beat is due (0 or less: now)."""
        if self._last_ok is None:
            return 0.0
        return self._settings.heartbeat_seconds - (time.monotonic() - self._last_ok)

    async def ensure(self) -> set[int] | None:
        """Beat (and take dead owners' claims over) if a beat is due; the seqs this process
        still leases after a beat, None when none was due. Raises `StorageUnavailable`."""
        async with self._lock:
            if not self.due():
                return None
            now = self._clock()
            renewed = await self._storage.heartbeat(
                self.owner,
                host=self.host,
                pid=self.pid,
                now=now,
                lease_seconds=self._settings.lease_seconds,
            )
            self._last_ok = time.monotonic()
            await self._take_over(now)
            return renewed

    def dead(self, owners: list[Owner], now: float) -> list[Owner]:
        return [
            o
            for o in owners
            if o.owner != self.owner
            and (
                now - o.heartbeat_at > self._settings.takeover_seconds
                or (o.host == self.host and o.pid != self.pid and not pid_alive(o.pid))
            )
        ]

    async def _take_over(self, now: float) -> None:
        dead = self.dead(await self._storage.owners(), now)
        if not dead:
            return
        released = await self._storage.release_owners(dead)
        for o in dead:
            log.warning(
                "took over a silent dispatcher's claims",
                dead_owner=o.owner,
                host=o.host,
                pid=o.pid,
                silent_seconds=round(now - o.heartbeat_at, 1),
            )
        if released:
            log.info("claims released for takeover", released=released)

    async def retire(self) -> None:
        await self._storage.retire(self.owner)
        self._last_ok = None
