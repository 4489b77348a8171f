"""Finding handler plugins: config entries and the ``taskhook.handlers`` entry-point group.

A plugin is a ``register(registry)`` function. Config names it as ``"pkg.module"`` (the module's
``register``) or ``"pkg.module:function"``; an installed package advertises it as an entry
point. Built-in handlers ship as entry points of this distribution, so they load through the
same seam as users' handlers. Loading happens when an app is built, never at import.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from receiver.errors import RegistryError
from receiver.registry import HandlerRegistry

ENTRY_POINT_GROUP = "taskhook.handlers"

Plugin = Callable[[HandlerRegistry], None]


def _as_plugin(obj: Any, origin: str) -> Plugin:
    register = getattr(obj, "register", obj)
    if not callable(register):
        raise RegistryError(f"plugin {origin}: expected a register(registry) function, got {obj!r}")
    plugin: Plugin = register
    return plugin


def resolve(spec: str) -> Plugin:
    """Import ``pkg.module`` or ``pkg.module:attr`` and return its register function."""
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # any import-time failure, named after the plugin
        raise RegistryError(
            f"handler plugin {spec!r} cannot be imported: {type(exc).__name__}: {exc}"
        ) from exc
    if not attr:
        if not hasattr(module, "register"):
            raise RegistryError(f"handler plugin {spec!r} has no register(registry) function")
        return _as_plugin(module, spec)
    try:
        obj = getattr(module, attr)
    except AttributeError:
        raise RegistryError(f"handler plugin {spec!r}: {module_name} has no {attr!r}") from None
    return _as_plugin(obj, spec)


def discovered(group: str = ENTRY_POINT_GROUP) -> list[EntryPoint]:
    return sorted(entry_points(group=group), key=lambda ep: ep.name)


def load_plugins(
    registry: HandlerRegistry, *, specs: Iterable[str], use_entry_points: bool
) -> list[str]:
    """Register every plugin; return their names in load order. Errors name the plugin."""
    loaded: list[str] = []
    if use_entry_points:
        for ep in discovered():
            try:
                plugin = _as_plugin(ep.load(), f"entry point {ep.name!r}")
            except RegistryError:
                raise
            except Exception as exc:
                raise RegistryError(
                    f"entry point {ep.name!r} ({ep.value}) failed to load: {exc}"
                ) from exc
            _register(registry, plugin, f"entry point {ep.name!r}")
            loaded.append(f"entry-point:{ep.name}")
    for spec in specs:
        _register(registry, resolve(spec), spec)
        loaded.append(spec)
    return loaded


def _register(registry: HandlerRegistry, plugin: Plugin, origin: str) -> None:
    try:
        plugin(registry)
    except RegistryError as exc:
        raise RegistryError(f"plugin {origin}: {exc}") from exc
    except Exception as exc:
        raise RegistryError(
            f"plugin {origin}: register() failed: {type(exc).__name__}: {exc}"
        ) from exc
