"""The application, built by a factory from a `Settings` object.

Nothing is created at import: `create_app(settings)` makes the handler registry (loading
plugins from config and entry points), the metrics, the storage backend and the intake; the
lifespan opens storage and starts the dispatcher, and closes both on shutdown.

Requests under ``/callbacks/`` go straight to the `Intake` (plain ASGI, the hot path);
everything else goes through a Starlette app with explicit routes.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable

import structlog
from starlette.applications import Starlette
from starlette.types import Receive, Scope, Send

from receiver.api import build_routes, storage_unavailable
from receiver.auth import KeyRing
from receiver.config import Settings
from receiver.dispatch import Dispatcher
from receiver.errors import StorageUnavailable
from receiver.events import EVENT_NAMES
from receiver.intake import PREFIX, WORKSTREAM_PREFIX, Intake
from receiver.metrics import Metrics
from receiver.monitor import Monitor
from receiver.plugins import load_plugins
from receiver.prune import Pruner
from receiver.reconcile import Reconciler, poller_for
from receiver.redaction import Redactor, display_url
from receiver.registry import HandlerRegistry
from receiver.signals import Periodic
from receiver.source_runtime import SourceRuntime
from receiver.sources import adapter_for
from receiver.storage import Storage, open_storage
from receiver.ui import ui_routes

log = structlog.get_logger("taskhook.app")

Setup = Callable[[HandlerRegistry], None]


class TaskhookApp:
    """One receiver instance. ASGI callable; `started()` runs the lifespan for tests."""

    def __init__(
        self,
        settings: Settings,
        *,
        setup: Setup | None = None,
        clock: Callable[[], float] = time.time,
        storage: Storage | None = None,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.metrics = Metrics()
        self.keys = KeyRing(settings.api.keys)
        self.storage = storage or open_storage(
            settings.database.url,
            on_commit=self.metrics.observe_commit,
            max_queue=settings.database.max_queued_writes,
            max_duplicate_rows=settings.retention.max_duplicate_rows,
            # Headers that passed the front door are never cut; replayed ones may be.
            max_header_bytes=settings.http.max_header_bytes,
        )
        declared = {name for src in settings.sources.values() for name in src.events}
        self.registry = HandlerRegistry(
            EVENT_NAMES | declared,
            storage=self.storage,
            keys=self.keys,
            clock=clock,
            settings=settings,
        )
        self.plugins = load_plugins(
            self.registry, specs=settings.handlers, use_entry_points=settings.entry_points
        )
        if setup is not None:
            setup(self.registry)
        self.sources = {
            name: SourceRuntime.build(name, src, adapter_for(src))
            for name, src in settings.sources.items()
        }
        self.dispatcher = Dispatcher(
            storage=self.storage,
            registry=self.registry,
            adapters={name: rt.adapter for name, rt in self.sources.items()},
            settings=settings.dispatch,
            metrics=self.metrics,
            clock=clock,
        )
        self.registry.set_waker(self.dispatcher.notify)
        self.registry.set_task_reconciler(self.reconcile_task)
        self.intake = Intake(
            sources=self.sources,
            storage=self.storage,
            metrics=self.metrics,
            on_stored=self.dispatcher.notify,
            clock=clock,
            body_timeout=settings.http.body_timeout_seconds,
            unverified_bytes=settings.http.max_unverified_body_bytes,
            redactor=Redactor(settings.secret_values()),
        )
        self._pollers: list[asyncio.Task[None]] = []
        self.pruner = Pruner(
            self.storage,
            settings.retention,
            retained=self.registry.retained,
            metrics=self.metrics,
            clock=clock,
        )
        self.monitor = Monitor(self)
        ui = ui_routes(self) if settings.ui.enabled else []
        self.http = Starlette(
            routes=[*build_routes(self), *ui, *self.registry.routes],
            lifespan=self._lifespan,
            # A storage failure in any route (a plugin's too) is 503 + Retry-After, not 500.
            exception_handlers={StorageUnavailable: storage_unavailable},
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            structlog.contextvars.clear_contextvars()
            if scope["path"].startswith((PREFIX, WORKSTREAM_PREFIX)):
                started = time.perf_counter()
                try:
                    await self.intake(scope, receive, send)
                finally:
                    self.metrics.ack_seconds.observe(time.perf_counter() - started)
                return
        await self.http(scope, receive, send)

    async def open(self) -> None:
        """Storage open and plugins' start-up hooks run; no dispatcher (CLI commands)."""
        await self.storage.open()
        # Fingerprints of verifying keys are keyed by this installation's own key.
        self.intake.fingerprint_key = await self.storage.installation_key()
        self.registry.freeze()
        for hook in self.registry.startup_hooks:
            await hook()

    async def startup(self) -> None:
        await self.open()
        if self.settings.insecure_dev:
            log.warning(
                "INSECURE DEV MODE: sources with verify = 'none' accept ANY request from anyone; "
                "set TASKHOOK_REFONTE_SECRET or use a config file before exposing this receiver"
            )
        if self.settings.dispatch.enabled:
            self.dispatcher.start()
        for name, src in self.settings.sources.items():
            if src.reconcile is not None and src.reconcile.enabled:
                self._pollers.append(
                    asyncio.create_task(self._poll(name, src.reconcile.interval_seconds))
                )
        retention = self.settings.retention
        if retention.enabled:
            # The first pass waits a little (at most a minute): start-up, and a backlog left
            # by the previous process, come first.
            every = retention.interval_seconds
            self._pollers.append(
                asyncio.create_task(self.pruner.forever(every, first=min(every, 60.0)))
            )
        self._pollers.append(asyncio.create_task(self.monitor.forever(), name="taskhook-monitor"))
        for job in self.registry.periodic:
            self._pollers.append(asyncio.create_task(_every(job), name=f"taskhook-{job.name}"))
        log.info(
            "taskhook started",
            sources=sorted(self.sources),
            handlers=[h.name for h in self.registry.handlers],
            plugins=self.plugins,
            database=display_url(self.settings.database.url),
        )

    async def shutdown(self, grace: float = 10.0) -> None:
        for task in self._pollers:
            task.cancel()
        await asyncio.gather(*self._pollers, return_exceptions=True)
        self._pollers.clear()
        await self.dispatcher.stop(grace)
        await self.storage.close()
        log.info("taskhook stopped")

    @contextlib.asynccontextmanager
    async def started(self) -> AsyncIterator[TaskhookApp]:
        await self.startup()
        try:
            yield self
        finally:
            await self.shutdown()

    @contextlib.asynccontextmanager
    async def _lifespan(self, _: Starlette) -> AsyncIterator[None]:
        async with self.started():
            yield

    def reconciler(self, name: str) -> Reconciler:
        """A poller of source `name` feeding this app's intake (close its `poller` after)."""
        source = self.sources[name]
        return Reconciler(
            source,
            poller_for(name, source.settings),
            intake=self.intake,
            storage=self.storage,
            clock=self.clock,
        )

    async def _poll(self, name: str, interval: float) -> None:
        reconciler = self.reconciler(name)
        try:
            await reconciler.forever(interval)
        finally:
            await reconciler.poller.aclose()

    async def reconcile_task(self, source: str, task_id: str) -> bool:
        """Ask `source`'s vendor for one task now, fed through the intake (the watchdog's
        targeted reconcile); False when the source is not polled."""
        from receiver.reconcile.targeted import reconcile_one

        return await reconcile_one(self, source, task_id)

    async def retry(self, delivery_id: str) -> bool | None:
        """Requeue a failed/dead/quarantined delivery (the HTTP route and the CLI share this)."""
        done = await self.storage.requeue(delivery_id, now=self.clock())
        if done:
            self.dispatcher.notify()
        return done


async def _every(job: Periodic) -> None:
    while True:
        await asyncio.sleep(job.seconds)
        try:
            await job.job()
        except Exception:
            log.exception("periodic job failed", job=job.name)


def create_app(
    settings: Settings,
    *,
    setup: Setup | None = None,
    clock: Callable[[], float] = time.time,
) -> TaskhookApp:
    return TaskhookApp(settings, setup=setup, clock=clock)
