"""The handler side: loading ``MODULE:ATTR``, the ``ctx`` object, normalising results."""

from __future__ import annotations

import importlib
import inspect
import logging
import os
import sys
from collections.abc import AsyncIterable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from prefork._types import ConnectionLike, Handler
from prefork.errors import ConfigError

if TYPE_CHECKING:
    from prefork.apps.websocket import WebSocket
    from prefork.http.request import Request


def load_app(spec: str) -> Handler:
    """Import ``MODULE:ATTR`` with the current directory on ``sys.path``.

    Raises ConfigError with one line naming the culprit.
    """
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(f"app {spec!r}: expected MODULE:ATTR, e.g. app:handle")
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as missing:  # not "exc": mypyc types it once per function
        name = missing.name
        if name == module_name or (name and module_name.startswith(name + ".")):
            raise ConfigError(f"app {spec!r}: module {module_name!r} not found") from None
        raise ConfigError(f"app {spec!r}: importing {module_name!r} failed: {missing}") from None
    except Exception as exc:
        where = ""
        tb = exc.__traceback__
        while tb is not None:
            if tb.tb_frame.f_code.co_filename.endswith(module_name.replace(".", "/") + ".py"):
                where = f" (line {tb.tb_lineno})"
            tb = tb.tb_next
        raise ConfigError(
            f"app {spec!r}: importing {module_name!r} raised {type(exc).__name__}: {exc}{where}"
        ) from None
    obj: Any = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ConfigError(
                f"app {spec!r}: module {module_name!r} has no attribute {attr!r}"
            ) from None
    if not callable(obj):
        raise ConfigError(f"app {spec!r}: {attr!r} is not callable")
    handler: Handler = obj
    return handler


def is_async_handler(handler: Handler) -> bool:
    """Whether calling ``handler`` returns a coroutine (checked once, not per request)."""
    if inspect.iscoroutinefunction(handler):
        return True
    call = getattr(handler, "__call__", None)  # noqa: B004 - a class instance with async __call__
    return call is not None and inspect.iscoroutinefunction(call)


class Context:
    """The ``ctx`` argument of a handler: one per connection."""

    __slots__ = (
        "cfg",
        "client",
        "client_ip",
        "logger",
        "redis_module",
        "request",
        "scheme",
        "upgraded",
    )

    def __init__(
        self,
        logger: logging.Logger,
        client: ConnectionLike,
        client_ip: str,
        cfg: Mapping[str, Any],
        redis_module: Any,
        scheme: str = "http",
    ) -> None:
        self.logger = logger
        self.client = client
        # The client's address and the scheme it used: the peer's, or what a
        # trusted proxy said (forwarded_allow_ips).
        self.client_ip = client_ip
        self.scheme = scheme
        self.cfg = cfg
        self.redis_module = redis_module
        # The request the handler is being called for (set around the call),
        # and the WebSocket it accepted on ``client`` (closed and logged when
        # the handler returns).
        self.request: Request | None = None
        self.upgraded: WebSocket | None = None

    async def accept_websocket(
        self, headers: Mapping[str, str] | None = None, subprotocol: str | None = None
    ) -> WebSocket:
        """Answer the request with 101 and return the open WebSocket.

        ``headers``: extra response headers; ``subprotocol``: the one chosen
        from the client's ``Sec-WebSocket-Protocol`` list. Raises
        ``HandshakeRejected`` (nothing sent; ``return exc.result`` answers
        400/405/426) when the request is not a valid handshake. When the
        handler returns (``None, None, None``), a WebSocket it did not close
        is closed with 1000.
        """
        from prefork.apps.websocket import Handshake, WebSocket
        from prefork.apps.websocket_handshake import options_for

        req = self.request
        if req is None:
            raise RuntimeError("accept_websocket() outside an async handler's call")
        opts = options_for(self.cfg)
        handshake = Handshake(req.method, req.target, req.headers.items(), opts, req.version)
        if not handshake.ok:
            raise handshake.rejection()
        ws = WebSocket(self.client, handshake, opts)
        await ws.accept(subprotocol, headers)
        # The request stays for the access log line at the end of the session,
        # but its raw fields (ASGI's, unused here) need not (~0.5 KiB). The
        # handler was given the header dict: it stays.
        req.drop_fields(headers=False)
        self.upgraded = ws
        return ws

    def __repr__(self) -> str:
        return f"<Context client_ip={self.client_ip!r}>"


class HandlerResultError(Exception):
    """The handler returned something that is not (content, status, headers)."""


def is_stream(content: object) -> bool:
    """An iterable or async iterable of chunks (not str/bytes)."""
    return isinstance(content, AsyncIterable) or (
        isinstance(content, Iterable)
        and not isinstance(content, str | bytes | bytearray | memoryview)
    )


def check_result(result: object) -> tuple[Any, int, Mapping[str, Any] | None]:
    """Validate a handler's return value; the status defaults to 200."""
    if not isinstance(result, tuple) or len(result) != 3:
        raise HandlerResultError(
            f"handler must return (content, status, headers), got {type(result).__name__}"
        )
    content, status, headers = result
    if status is None:
        status = 200
    elif isinstance(status, bool) or not isinstance(status, int) or not 100 <= status <= 599:
        raise HandlerResultError(f"handler returned an invalid status {status!r}")
    if headers is not None and not isinstance(headers, Mapping):
        raise HandlerResultError(f"handler returned headers of type {type(headers).__name__}")
    return content, status, headers
