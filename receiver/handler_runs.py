"""One handler on one event, isolated: whatever the handler does, the process keeps serving.

- Synchronous handlers run on threads of their own, never on the event loop, so one that
  blocks (``time.sleep``, a slow client library) cannot stall the intake. A run's thread is
  bounded by the handler's slots (below), not drawn from a pool shared with other handlers,
  and is a daemon: a thread stuck for good neither starves other handlers nor keeps the
  process from exiting.
- Every run has a deadline (the handler's own ``timeout=``, else ``handler_timeout_seconds``).
  An async run is its own task, so one that swallows its cancellation is abandoned at the
  deadline rather than awaited; a thread cannot be stopped at all. Either way the run is
  recorded as failed at its deadline and the dispatcher moves on.
- Each handler has a number of slots (``concurrency=``, else ``handler_concurrency``). A run
  holds its slot until it has really ended — an abandoned run keeps it — so a handler that
  hangs can occupy its own slots and threads, never all dispatch capacity. A run that cannot
  get a slot within the deadline fails as "busy" and is retried like any failure.
- Any exception is contained, ``BaseException`` included: ``SystemExit``,
  ``KeyboardInterrupt``, ``GeneratorExit`` and a ``CancelledError`` the handler raised itself
  become that run's failure with its traceback. Only the dispatcher's own cancellation (at
  shutdown) goes through.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import inspect
import threading
import traceback
from collections.abc import Callable
from typing import Any

import structlog

from receiver.config import DispatchSettings
from receiver.events import Event
from receiver.metrics import Metrics
from receiver.records import HandlerRun
from receiver.registry import ErrorHook, RegisteredHandler

log = structlog.get_logger("taskhook.dispatch")


class HandlerBusy(Exception):
    """Every slot of the handler was taken by runs still going when the deadline came."""


class HandlerTimeout(TimeoutError):
    """The run did not end by its deadline; it was cancelled (or, in a thread, abandoned)."""


def is_async(func: Callable[..., Any]) -> bool:
    while isinstance(func, functools.partial):
        func = func.func
    return inspect.iscoroutinefunction(func) or inspect.iscoroutinefunction(
        getattr(func, "__call__", None)  # noqa: B004 - an instance with an async __call__
    )


def ours_cancelled() -> bool:
    """Is the running task itself being cancelled (not merely seeing a CancelledError)?"""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def _settle(future: asyncio.Future[Any], result: Any, exc: BaseException | None) -> None:
    if future.done():
        return  # cut at its deadline: nobody waits for this run any more
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(result)


class _Run:
    """One run's hold on its handler's slot: its coroutine, and its thread if it has one.
    The run has ended, and its slot is free, only when every part has."""

    def __init__(self, slot: asyncio.Semaphore) -> None:
        self.slot = slot
        self.parts = 1
        self._callbacks: list[Callable[[], None]] = []

    def on_end(self, callback: Callable[[], None]) -> None:
        if self.parts == 0:
            callback()
        else:
            self._callbacks.append(callback)

    def part_ended(self) -> None:
        self.parts -= 1
        if self.parts == 0:
            self.slot.release()
            for callback in self._callbacks:
                callback()


class HandlerRunner:
    def __init__(
        self,
        *,
        settings: DispatchSettings,
        metrics: Metrics,
        error_hooks: Callable[[], tuple[ErrorHook, ...]],
    ) -> None:
        self._settings = settings
        self._metrics = metrics
        self._error_hooks = error_hooks
        self._slots: dict[str, asyncio.Semaphore] = {}
        #: Runs cut at their deadline that have not ended yet, by handler.
        self.abandoned: dict[str, int] = {}

    def close(self) -> None:
        """Nothing to stop: an abandoned run's daemon thread ends with the process."""

    def _slot(self, handler: RegisteredHandler) -> asyncio.Semaphore:
        slot = self._slots.get(handler.name)
        if slot is None:
            slot = asyncio.Semaphore(handler.concurrency or self._settings.handler_concurrency)
            self._slots[handler.name] = slot
        return slot

    async def run(self, handler: RegisteredHandler, event: Event) -> HandlerRun:
        timeout = handler.timeout or self._settings.handler_timeout_seconds
        slot = self._slot(handler)
        try:
            async with asyncio.timeout(timeout):
                await slot.acquire()
        except TimeoutError:
            stuck = self.abandoned.get(handler.name, 0)
            busy = HandlerBusy(
                f"no free slot within {timeout:g}s ({stuck} earlier runs still going "
                "past their deadline)"
            )
            return await self._failed(handler, event, busy)
        run = _Run(slot)
        task = asyncio.create_task(self._invoke(handler, event, run))
        try:
            done, _ = await asyncio.wait({task}, timeout=timeout)
        except asyncio.CancelledError:
            task.cancel()
            raise
        if task not in done:
            task.cancel()
            self._abandon(handler.name, run)
            cut = HandlerTimeout(f"timed out after {timeout:g}s")
            return await self._failed(handler, event, cut)
        failure = task.result()
        if failure is not None:
            return await self._failed(handler, event, failure)
        self._metrics.handler_runs.labels(handler.name, "ok").inc()
        return HandlerRun(event.event_id, handler.name, event.delivery_id, ok=True)

    def _abandon(self, name: str, run: _Run) -> None:
        self.abandoned[name] = self.abandoned.get(name, 0) + 1

        def ended() -> None:
            self.abandoned[name] -= 1

        run.on_end(ended)

    async def _invoke(
        self, handler: RegisteredHandler, event: Event, run: _Run
    ) -> BaseException | None:
        """Run the handler to its end; the exception it ended with, or None."""
        try:
            if is_async(handler.func):
                result: Any = handler.func(event)
            else:
                result = await self._in_thread(handler.func, event, run)
            if inspect.isawaitable(result):
                await result
        except asyncio.CancelledError as exc:
            if ours_cancelled():
                raise  # the deadline or shutdown: not the handler's doing
            return exc
        except BaseException as exc:
            return exc
        finally:
            run.part_ended()
        return None

    async def _in_thread(self, func: Callable[[Event], Any], event: Event, run: _Run) -> Any:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        context = contextvars.copy_context()  # the thread logs with the delivery's ids bound

        def work() -> None:
            outcome: tuple[Any, BaseException | None]
            try:
                outcome = (context.run(func, event), None)
            except BaseException as exc:  # the handler's, whatever it is: reported, not raised
                outcome = (None, exc)
            # The run has not ended while its thread runs, however long after the deadline.
            with contextlib.suppress(RuntimeError):  # the loop is gone: nobody to tell
                loop.call_soon_threadsafe(_settle, future, *outcome)
                loop.call_soon_threadsafe(run.part_ended)

        run.parts += 1
        threading.Thread(target=work, name="taskhook-handler", daemon=True).start()
        return await future

    async def _failed(
        self, handler: RegisteredHandler, event: Event, exc: BaseException
    ) -> HandlerRun:
        self._metrics.handler_runs.labels(handler.name, "failed").inc()
        error = str(exc) if isinstance(exc, HandlerTimeout | HandlerBusy) else None
        error = error or f"{type(exc).__name__}: {exc}"
        log.warning("handler failed", handler=handler.name, error=error)
        await self._call_error_hooks(event, handler.name, exc)
        return HandlerRun(
            event.event_id,
            handler.name,
            event.delivery_id,
            ok=False,
            error=error,
            traceback="".join(traceback.format_exception(exc)),
        )

    async def _call_error_hooks(self, event: Event, name: str, exc: BaseException) -> None:
        for hook in self._error_hooks():
            try:
                result = hook(event, name, exc)
                if inspect.isawaitable(result):
                    await result
            except asyncio.CancelledError:
                if ours_cancelled():
                    raise
                log.error("error hook raised CancelledError", hook=repr(hook))
            except BaseException:
                log.exception("error hook failed", hook=repr(hook))
