"""App interfaces: how the served object is recognised and wrapped for the engine.

``build_app`` turns what ``MODULE:ATTR`` names (or a callable given to
``prefork.new``) into an ``engine.app.AppInterface``: the native handler,
ASGI 3 or WSGI (PEP 3333), chosen by the ``interface`` config key or, with
``auto``, from the callable's shape.
"""

from __future__ import annotations

import inspect
from typing import Any

from prefork.apps.handler import load_app
from prefork.config import Config
from prefork.engine.app import AppInterface
from prefork.errors import ConfigError

__all__ = ["build_app", "detect_interface", "resolve_target"]


def resolve_target(app: Any, cfg: Config) -> Any:
    """The object to serve: ``MODULE:ATTR`` imported, then called if ``factory``."""
    obj = load_app(app) if isinstance(app, str) else app
    if cfg.factory:
        name = app if isinstance(app, str) else getattr(app, "__name__", repr(app))
        try:
            obj = obj()
        except Exception as exc:
            raise ConfigError(
                f"app {name!r}: the factory raised {type(exc).__name__}: {exc}"
            ) from None
        if not callable(obj):
            raise ConfigError(f"app {name!r}: the factory returned a {type(obj).__name__}")
    return obj


def _positional_count(obj: Any) -> int | None:
    """How many positional arguments ``obj`` takes; None if it takes *args or cannot tell."""
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return None
    count = 0
    for param in sig.parameters.values():
        if param.kind is param.VAR_POSITIONAL:
            return None
        if param.kind in (param.POSITIONAL_ONLY, param.POSITIONAL_OR_KEYWORD):
            count += 1
    return count


def _is_coroutine_callable(obj: Any) -> bool:
    if inspect.iscoroutinefunction(obj):
        return True
    call = getattr(obj, "__call__", None)  # noqa: B004 - an instance with async __call__
    return call is not None and inspect.iscoroutinefunction(call)


def detect_interface(obj: Any, name: str) -> str:
    """``"native"``, ``"asgi"`` or ``"wsgi"`` from the callable's shape (``interface = "auto"``).

    A coroutine function (or an object whose ``__call__`` is one) taking three
    arguments is ASGI; a callable taking two is WSGI; one taking six is the
    native handler. Raises ConfigError naming ``--interface`` otherwise.
    """
    count = _positional_count(obj)
    if count == 3 and _is_coroutine_callable(obj):
        return "asgi"
    if count == 2:
        return "wsgi"
    if count == 6:
        return "native"
    shape = "takes *args" if count is None else f"takes {count} positional arguments"
    raise ConfigError(
        f"app {name!r}: cannot tell its interface (it {shape}; ASGI apps are async with "
        "3 arguments, WSGI apps take 2, native handlers 6): pass --interface "
        "native, asgi or wsgi"
    )


def build_app(app: Any, cfg: Config) -> AppInterface[Any]:
    """What the worker serves. Runs in the worker (the app is imported there)."""
    obj = resolve_target(app, cfg)
    name = app if isinstance(app, str) else getattr(obj, "__name__", repr(obj))
    kind = cfg.interface
    if kind == "auto":
        kind = detect_interface(obj, name)
    if kind == "native":
        from prefork.apps.native import NativeApp

        return NativeApp(obj)
    if kind == "asgi":
        from prefork.apps.asgi import AsgiApp

        return AsgiApp(obj, name, cfg)
    if kind == "wsgi":
        from prefork.apps.wsgi import WsgiApp

        return WsgiApp(obj, cfg, name)
    raise ConfigError(f"app {name!r}: the {kind} interface is not available yet")
