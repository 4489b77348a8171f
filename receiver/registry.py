"""The handler registry: owned by one app instance, checked at registration.

A handler is any callable taking an `Event` (sync or async). Register it for one event name,
several, or all of them; add error hooks that see every handler failure. Unknown event names
are rejected here, when the mistake is made, not when an event arrives.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import structlog

from receiver.errors import PayloadError, RegistryError
from receiver.events import EVENT_NAMES, Event
from receiver.plugin_store import PluginStorage, Tx
from receiver.records import DeliveryRecord
from receiver.signals import Job, NavLink, Periodic, Signal, SignalHook

log = structlog.get_logger("taskhook.registry")


class Handler(Protocol):
    """What a handler is: ``handler(event)``, returning None or an awaitable of None."""

    def __call__(self, event: Event, /) -> Awaitable[None] | None: ...


ErrorHook = Callable[[Event, str, BaseException], Awaitable[None] | None]
Interpreter = Callable[
    [Tx, Sequence[DeliveryRecord]], Awaitable[Sequence[list[Event] | PayloadError]]
]
"""Turns a batch of stored deliveries of one source kind (distinct tasks, in receipt order)
into events using state (a ledger), inside the dispatcher's transaction `tx`: its writes,
the events it returns (one list per delivery, or the `PayloadError` that makes a delivery
unreadable) and the deliveries' new state commit together, once per delivery. A delivery
already interpreted (a second attempt) is never given to it again."""
StartupHook = Callable[[], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Command:
    """A ``taskhook NAME ...`` subcommand contributed by a plugin."""

    name: str
    help: str
    # configure(parser, common): adds arguments to its argparse sub-parser; `common` are parent
    # parsers (the --config option) for every parser the command creates under it.
    configure: Callable[[Any, list[Any]], None]
    run: Callable[[Any], Awaitable[int]]  # the parsed namespace -> exit status


@dataclass(frozen=True, slots=True)
class RegisteredHandler:
    name: str
    func: Handler
    events: frozenset[str] | None  # None: every event
    # Seconds one run may take, and runs of this handler at once (None: the [dispatch] defaults).
    timeout: float | None = None
    concurrency: int | None = None
    # Run only for the events it says yes to (see `on`); None: every event it is for.
    when: Callable[[Event], bool] | None = None

    def wants(self, event: Event) -> bool:
        if self.when is None:
            return True
        try:
            return bool(self.when(event))
        except Exception:  # a broken filter must not lose an event: the handler decides
            log.exception("handler filter failed", handler=self.name)
            return True


def default_name(func: Callable[..., Any]) -> str:
    module = getattr(func, "__module__", None) or type(func).__module__
    qualname = getattr(func, "__qualname__", None) or type(func).__qualname__
    return f"{module}:{qualname}"


class HandlerRegistry:
    """Per-app handlers. Names identify handlers in run records, so they must stay stable."""

    def __init__(
        self,
        known_events: Iterable[str] = EVENT_NAMES,
        *,
        storage: PluginStorage | None = None,
        keys: Any = None,
        clock: Callable[[], float] = time.time,
        settings: Any = None,
    ) -> None:
        self._known = frozenset(known_events)
        self._handlers: list[RegisteredHandler] = []
        self._error_hooks: list[ErrorHook] = []
        self._interpreters: dict[str, Interpreter] = {}
        self._routes: list[Any] = []
        self._startup: list[StartupHook] = []
        self._reset: list[StartupHook] = []
        self._commands: dict[str, Command] = {}
        self._retained: list[str] = []
        self._frozen = False
        #: The app's storage backend and API key ring, for plugins that keep state or serve
        #: routes (the built-in ledger does both). None when the registry stands alone.
        self.storage = storage
        self.keys = keys
        #: The app's clock: what a plugin stores (an operator action) is timed by it.
        self.clock = clock
        self._waker: Callable[[], None] = lambda: None
        #: The app's `Settings` (read-only), for plugins with a section of their own
        #: (``[alerts]``, ``[watchdog]``). None when the registry stands alone.
        self.settings = settings
        self._signal_hooks: list[SignalHook] = []
        self._periodic: list[Periodic] = []
        self._nav: list[NavLink] = []
        self._reconcile_task: Callable[[str, str], Awaitable[bool]] | None = None

    def set_waker(self, wake: Callable[[], None]) -> None:
        """The app's dispatcher wake-up (the app sets it; plugins call `wake`)."""
        self._waker = wake

    def wake(self) -> None:
        """A plugin stored deliveries in its own transaction: dispatch them now, not at the
        next poll."""
        self._waker()

    def on_signal(self, hook: SignalHook) -> SignalHook:
        """Hear every operational `Signal` (see `receiver.signals`); a failing hook is logged."""
        self._check_open()
        self._signal_hooks.append(hook)
        return hook

    async def signal(self, signal: Signal) -> None:
        """Raise `signal` to every `on_signal` hook, one after the other; a hook's failure
        is logged and never reaches the caller (nor the hooks after it)."""
        for hook in self._signal_hooks:
            try:
                result = hook(signal)
                if inspect.isawaitable(result):
                    await result
            except Exception:
                log.exception("signal hook failed", kind=signal.kind, key=signal.key)

    def every(self, seconds: float, job: Job, *, name: str) -> Job:
        """Have `taskhook serve` await `job()` every `seconds` (the first time after
        `seconds`); a run that raises is logged and the next one comes on time."""
        self._check_open()
        if seconds <= 0:
            raise RegistryError(f"periodic job {name!r}: seconds must be above 0")
        self._periodic.append(Periodic(name, float(seconds), job))
        return job

    @property
    def periodic(self) -> tuple[Periodic, ...]:
        return tuple(self._periodic)

    def add_nav(self, title: str, path: str, *, scopes: Iterable[str] = ()) -> None:
        """List a plugin's dashboard page (a route it added under ``/ui/``) in the nav, for
        keys with one of `scopes` (none given: for every signed-in key)."""
        self._check_open()
        if not path.startswith("/ui/"):
            raise RegistryError(f"dashboard pages live under /ui/, not {path!r}")
        self._nav.append(NavLink(title, path, tuple(scopes)))

    @property
    def nav(self) -> tuple[NavLink, ...]:
        return tuple(self._nav)

    def set_task_reconciler(self, reconcile: Callable[[str, str], Awaitable[bool]]) -> None:
        """The app's targeted reconcile (the app sets it; plugins call `reconcile_task`)."""
        self._reconcile_task = reconcile

    async def reconcile_task(self, source: str, task_id: str) -> bool:
        """Ask `source`'s vendor API for one task now and feed what it says through the
        intake; False when the source has no ``[reconcile]`` section (nothing to ask)."""
        if self._reconcile_task is None:
            return False
        return await self._reconcile_task(source, task_id)

    def interpret(self, kind: str, interpreter: Interpreter) -> Interpreter:
        """Derive the events of `kind` deliveries with `interpreter` instead of the source's
        stateless adapter. One interpreter per source kind."""
        self._check_open()
        if kind in self._interpreters:
            raise RegistryError(f"source kind {kind!r} already has an interpreter")
        self._interpreters[kind] = interpreter
        return interpreter

    def interpreter_for(self, kind: str) -> Interpreter | None:
        return self._interpreters.get(kind)

    def add_routes(self, routes: Iterable[Any]) -> None:
        """Serve these Starlette routes from the app (a plugin's own HTTP API)."""
        self._check_open()
        self._routes.extend(routes)

    @property
    def routes(self) -> tuple[Any, ...]:
        return tuple(self._routes)

    def add_command(self, command: Command) -> None:
        """Offer ``taskhook <command.name>``; it runs with storage open, dispatch stopped."""
        self._check_open()
        if command.name in self._commands:
            raise RegistryError(f"command {command.name!r} is already registered")
        self._commands[command.name] = command

    @property
    def commands(self) -> tuple[Command, ...]:
        return tuple(self._commands.values())

    def retain(self, sql: str) -> None:
        """Keep the bodies of the deliveries `sql` names through retention.

        `sql` is a query in the SQLite dialect whose one column is delivery ids (say,
        ``SELECT last_delivery_id FROM my_tasks``); the pruner asks it about each batch of
        candidates (``WITH kept(id) AS (<sql>) SELECT id FROM kept WHERE id IN (...)``), so
        an index on that column keeps pruning cheap.
        """
        self._check_open()
        if not sql.lstrip().upper().startswith(("SELECT", "WITH")):
            raise RegistryError(f"retain() takes a SELECT returning delivery ids, not {sql!r}")
        self._retained.append(sql.strip().rstrip(";"))

    @property
    def retained(self) -> tuple[str, ...]:
        """The queries of `retain`, in registration order."""
        return tuple(self._retained)

    def on_reset(self, hook: StartupHook) -> StartupHook:
        """`taskhook rebuild` awaits `hook()` to empty the plugin's derived state first."""
        self._check_open()
        self._reset.append(hook)
        return hook

    @property
    def reset_hooks(self) -> tuple[StartupHook, ...]:
        return tuple(self._reset)

    def on_startup(self, hook: StartupHook) -> StartupHook:
        """Await `hook()` once storage is open, before dispatch starts (schema, caches)."""
        self._check_open()
        self._startup.append(hook)
        return hook

    @property
    def startup_hooks(self) -> tuple[StartupHook, ...]:
        return tuple(self._startup)

    @property
    def event_names(self) -> frozenset[str]:
        return self._known

    def on(
        self,
        events: str | Iterable[str],
        handler: Handler,
        *,
        name: str | None = None,
        timeout: float | None = None,
        concurrency: int | None = None,
        when: Callable[[Event], bool] | None = None,
    ) -> Handler:
        """Run `handler` for the named event(s). Returns the handler (usable as a decorator).

        `timeout` (seconds a run may take) and `concurrency` (runs at once) override the
        ``[dispatch]`` defaults ``handler_timeout_seconds`` and ``handler_concurrency``.
        `when(event)`, a quick synchronous test on memory only, skips the events it says no
        to: no run, nothing recorded, as if the handler were not registered for them (every
        run costs the dispatcher a task and a record, so a handler that rarely cares says so).
        """
        wanted = frozenset([events] if isinstance(events, str) else events)
        if not wanted:
            raise RegistryError("register for at least one event name (or use on_any)")
        unknown = sorted(wanted - self._known)
        if unknown:
            raise RegistryError(
                f"unknown event name(s) {', '.join(unknown)}; "
                f"known: {', '.join(sorted(self._known))}"
            )
        self._add(self._entry(handler, name, wanted, timeout, concurrency, when))
        return handler

    def on_any(
        self,
        handler: Handler,
        *,
        name: str | None = None,
        timeout: float | None = None,
        concurrency: int | None = None,
        when: Callable[[Event], bool] | None = None,
    ) -> Handler:
        """Run `handler` for every event (options as for `on`)."""
        self._add(self._entry(handler, name, None, timeout, concurrency, when))
        return handler

    def _entry(
        self,
        handler: Handler,
        name: str | None,
        events: frozenset[str] | None,
        timeout: float | None,
        concurrency: int | None,
        when: Callable[[Event], bool] | None = None,
    ) -> RegisteredHandler:
        entry_name = self._name(handler, name)
        if timeout is not None and not timeout > 0:
            raise RegistryError(f"handler {entry_name!r}: timeout must be a positive number")
        if concurrency is not None and (isinstance(concurrency, bool) or concurrency < 1):
            raise RegistryError(f"handler {entry_name!r}: concurrency must be at least 1")
        if when is not None and not callable(when):
            raise RegistryError(f"handler {entry_name!r}: when must be callable")
        return RegisteredHandler(entry_name, handler, events, timeout, concurrency, when)

    def on_error(self, hook: ErrorHook) -> ErrorHook:
        """Call `hook(event, handler_name, exception)` whenever a handler fails."""
        if not callable(hook):
            raise RegistryError(f"error hook {hook!r} is not callable")
        self._check_open()
        self._error_hooks.append(hook)
        return hook

    def handlers_for(self, event_name: str, event: Event | None = None) -> list[RegisteredHandler]:
        """Specific handlers first, then catch-alls, each in registration order; given the
        `event`, only those whose `when` wants it."""
        specific = [h for h in self._handlers if h.events is not None and event_name in h.events]
        found = specific + [h for h in self._handlers if h.events is None]
        return found if event is None else [h for h in found if h.wants(event)]

    @property
    def handlers(self) -> tuple[RegisteredHandler, ...]:
        return tuple(self._handlers)

    @property
    def error_hooks(self) -> tuple[ErrorHook, ...]:
        return tuple(self._error_hooks)

    def freeze(self) -> None:
        """Refuse further registration: the set of handlers is fixed once dispatch starts."""
        self._frozen = True

    def _check_open(self) -> None:
        if self._frozen:
            raise RegistryError("handlers must be registered before the app starts")

    def _name(self, handler: Handler, name: str | None) -> str:
        if not callable(handler):
            raise RegistryError(f"handler {handler!r} is not callable")
        if inspect.isclass(handler):
            raise RegistryError(f"handler {handler!r} is a class; register an instance or function")
        return name or default_name(handler)

    def _add(self, entry: RegisteredHandler) -> None:
        self._check_open()
        if any(h.name == entry.name for h in self._handlers):
            raise RegistryError(
                f"a handler named {entry.name!r} is already registered; "
                "pass name=... to tell them apart"
            )
        self._handlers.append(entry)
