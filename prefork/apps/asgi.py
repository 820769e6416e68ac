"""The ASGI 3 interface: ``async def app(scope, receive, send)``, spec 2.5.

``AsgiApp`` is what the engine calls (``engine.app.AppInterface``). Each
request is one ``asgi_exchange.Exchange`` (the ``receive`` and ``send`` the
app gets), run as part of the connection's own task: no task per request,
but a context per request (``AsgiApp._start``), as a task would have. A
request whose body came with it starts from the protocol callback
(``respond_inline``): most are answered there, and the connection's
coroutine only takes over an app that waits (``_Suspended``).
The scope comes from ``asgi_scope``, the lifespan protocol from
``asgi_lifespan``, the rules of the app's response headers from ``asgi_fields``.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
import types
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Final

from prefork import log
from prefork._types import Action
from prefork.apps.asgi_context import resume_in_context
from prefork.apps.asgi_exchange import STREAM_BODIES_OVER, Exchange
from prefork.apps.asgi_lifespan import Lifespan
from prefork.apps.asgi_messages import AsgiMessageError, ClientDisconnected
from prefork.apps.asgi_scope import (
    ASGI_VERSION,
    SPEC_VERSION,
    ConnScope,
    conn_scope,
    head_parts,
    http_scope,
)
from prefork.config import Config
from prefork.engine.app import Session
from prefork.engine.connection import Connection
from prefork.errors import ProtocolError
from prefork.http.fields import HAS_UPGRADE
from prefork.http.forwarded import resolve
from prefork.http.request import Request

if TYPE_CHECKING:  # (imported when a WebSocket comes: see _websocket_session)
    from prefork.apps.websocket_asgi import Outcome

logger = logging.getLogger(log.WORKER)

# What asyncio's own Task step (and Python 3.12's eager tasks) call to make a
# task the current one; 3.11 has no public way to run a step of an app "as
# part of" a task from a loop callback. tests/grid/test_asgi_inline.py fails
# if they go.
enter_task: Final = asyncio.tasks._enter_task
leave_task: Final = asyncio.tasks._leave_task
# Per request, so bound once: the compiled build keeps a Final name in a C
# static, where a module attribute would be looked up on every call.
monotonic: Final = time.monotonic
copy_context: Final = contextvars.copy_context
# Called unbound (run_in(context, ...)): context.run would look "run" up on
# every call; so is the builtin next, passed as a value.
run_in: Final = contextvars.Context.run
next_step: Final = next
CoroutineType: Final = types.CoroutineType

AsgiCallable = Callable[[dict[str, Any], Any, Any], Awaitable[None]]

__all__ = ["AsgiApp", "AsgiMessageError", "ClientDisconnected"]


class AsgiApp:
    """The engine's view of an ASGI 3 app (``engine.app.AppInterface``)."""

    __slots__ = (
        "app",
        "asgi",
        "fields_as_list",
        "inline",
        "lifespan",
        "loop",
        "name",
        "root_path",
        "ssl_cfg",
        "state",
        "stream_bodies_over",
        "ws_options",
    )

    def __init__(self, app: AsgiCallable, name: str, cfg: Config) -> None:
        self.app = app
        self.name = name
        # Requests whose body came with them start from the protocol callback
        # (respond_inline); the connection's coroutine takes over what waits.
        self.inline = True
        self.loop: asyncio.AbstractEventLoop | None = None
        # Read by the connection's RequestReader (RequestReader.stream_over).
        self.stream_bodies_over: int | None = STREAM_BODIES_OVER
        # The scope's headers are a list: requests carry only the server's
        # fields as a dict (RequestReader.fields_as_list).
        self.fields_as_list = True
        self.root_path: str = cfg.root_path
        self.ssl_cfg = cfg.ssl
        self.asgi = {"version": ASGI_VERSION, "spec_version": SPEC_VERSION}
        self.lifespan = Lifespan(app, name, cfg.lifespan, self.asgi)
        # The lifespan state (the one dict for the worker's life), read per request.
        self.state = self.lifespan.state
        # The ws_* keys: the Config, made an Options at the first WebSocket.
        self.ws_options: Any = cfg

    async def startup(self) -> None:
        self.loop = asyncio.get_running_loop()
        await self.lifespan.startup()

    async def shutdown(self) -> None:
        await self.lifespan.shutdown()

    def respond_inline(self, conn: Connection, req: Request) -> bool:
        """Run the app from the protocol callback, as far as it goes without waiting.

        Most requests are answered there and then (the app awaits nothing that
        waits: its whole body came with the head, ``send`` writes at once), and
        the connection's coroutine is not woken for them. An app that does
        wait is handed to the coroutine where it stopped (``_Suspended``).
        """
        info: ConnScope | None = conn.ctx
        loop = self.loop
        if (
            info is None  # (no exchange has run yet: see exchange)
            or loop is None
            or req.chunked
            or req.content_length > STREAM_BODIES_OVER
            or req.expect_continue
        ):
            conn.hand_off(req)
            return False
        if _asks_websocket(req):
            conn.hand_off(req)
            return False
        task = info.task
        try:
            # The app runs as part of the connection's task, as it does when
            # the coroutine calls it: asyncio.current_task() (sniffio, anyio)
            # sees the task that goes on with it if it waits.
            enter_task(loop, task)
        except RuntimeError:  # fed from inside a task (not the event loop's callback)
            conn.hand_off(req)
            return False
        try:
            started = monotonic()
            count = conn.count_request()
            outcome = self._start(conn, req, info, count, started)
        finally:
            leave_task(loop, task)
        if isinstance(outcome, _Suspended):
            conn.hand_off(outcome)
            return False
        return outcome == "keep-alive"

    def _start(
        self, conn: Connection, req: Request, info: ConnScope, count: int, started: float
    ) -> Action | _Suspended:
        """Call the app on ``req`` in a context of its own and run it until it
        first waits: what the connection does next once it has ended, else what
        is left of it.

        Each request's call runs in a copy of the connection task's context, as
        it would in a task of its own (uvicorn, hypercorn, granian make one per
        request): what an app sets in a ContextVar (a request id, a user) stays
        with its request and never shows in the next one on the connection.
        """
        scope = http_scope(req, info, self.root_path, self.state, self.asgi)
        client_ip = conn.client_ip
        if conn.behind_proxy:
            client_ip = _forwarded(scope, req, conn)
        ex = Exchange(self.name, conn, req, count, started, client_ip)
        context = copy_context()
        try:
            call = run_in(context, self.app, scope, ex.receive, ex)  # (ex: send)
            if type(call) is not CoroutineType:  # another awaitable: awaited as it is
                return _Suspended(ex, call, context, _NOT_STARTED)
            # The first step by next() with a default rather than send(None):
            # a call that returns None, as ASGI apps do, then ends without a
            # StopIteration being made, which the compiled build would also
            # give a traceback entry (~1 us per request, with the except).
            step = run_in(context, next_step, call.__await__(), _RETURNED)
        except Exception as exc:
            return ex.failed(exc)
        if step is _RETURNED:
            return ex.returned()
        return _Suspended(ex, call, context, step)

    async def exchange(self, conn: Connection) -> Action | Session:
        info: ConnScope | None = conn.ctx
        if info is None:
            # Before the first request (the inline path runs the app as part of
            # this task): the part of the scopes every request here shares.
            info = conn.ctx = conn_scope(
                conn.transport, conn.peername, conn.server_name, self.ssl_cfg
            )
            info.task = asyncio.current_task()
        count = conn.count
        cancelled: BaseException | None = None
        try:
            req = await conn.receive_request(count)
        except ProtocolError as exc:
            conn.reject(exc)
            raise
        except asyncio.CancelledError as exc:
            # Meant for an app call that waits since respond_inline (its
            # asyncio.timeout ran out, say) before this coroutine took it over:
            # it goes to the app, as to a task of its own.
            pending = conn.take_handoff()
            if not isinstance(pending, _Suspended) or pending.step is _NOT_STARTED:
                raise  # the connection's own
            conn.hand_off(pending)  # (put back: receive_request hands it over)
            cancelled = exc
            req = await conn.receive_request(count)  # (returns at once: the hand-off)
        if req is None:
            handoff = conn.take_handoff()
            if handoff is None:
                return "close"
            if isinstance(handoff, _Suspended):
                return await self._finish(conn, handoff, cancelled)
            assert isinstance(handoff, Request)
            req = handoff
        started = monotonic()
        # (Counted now, not from ``count`` above: the inline path may have
        # answered requests while this coroutine waited.)
        count = conn.count_request()
        if _asks_websocket(req):
            # A session: the engine awaits it once this frame is gone (each
            # frame on the chain lives as long as the WebSocket).
            return _websocket_session(self, conn, req, info, started)
        outcome = self._start(conn, req, info, count, started)
        if isinstance(outcome, _Suspended):
            return await self._finish(conn, outcome, None)
        if outcome == "keep-alive" and conn.write_paused:
            await conn.drain()
        return outcome

    async def _finish(
        self, conn: Connection, rest: _Suspended, cancelled: BaseException | None
    ) -> Action:
        """The rest of an app call that waited in ``respond_inline``."""
        ex = rest.exchange
        try:
            if rest.step is _NOT_STARTED:  # an awaitable other than a coroutine
                await rest.call
            else:
                await resume_in_context(rest.call, rest.context, rest.step, cancelled)
        except Exception as exc:
            action = ex.failed(exc)
        else:
            action = ex.returned()
        if action == "keep-alive" and conn.write_paused:
            await conn.drain()
        return action


# The step of an awaitable that is not a coroutine: it is awaited as it is.
_NOT_STARTED: Final = object()
# What the first step of an app's call gives when the call has returned.
_RETURNED: Final = object()


class _Suspended:
    """An app call that waits, from ``respond_inline`` to the connection's coroutine."""

    __slots__ = ("call", "context", "exchange", "step")

    def __init__(
        self, exchange: Exchange, call: Any, context: contextvars.Context, step: Any
    ) -> None:
        self.exchange = exchange
        self.call = call
        self.context = context
        self.step = step


def _asks_websocket(req: Request) -> bool:
    """Whether ``req`` asks to become a WebSocket (``Upgrade: websocket``)."""
    upgrade = req.fields.get("upgrade") if req.present & HAS_UPGRADE else None
    return upgrade is not None and upgrade.lower() == "websocket"


def _forwarded(scope: dict[str, Any], req: Request, conn: Connection) -> str:
    """A trusted proxy's word on the client and the scheme, into ``scope``; the client's address."""
    client, scheme, _host = resolve(req.fields, conn.shared.trust, req.present)
    if client is not None:
        scope["client"] = (client, 0)  # (the proxy does not say the client's port)
    if scheme is not None:
        scope["scheme"] = "https" if scheme in ("https", "wss") else "http"
    return client or conn.client_ip


# -- the single place WebSocket requests go ---------------------------------


def _websocket_session(
    app: AsgiApp, conn: Connection, req: Request, info: ConnScope, started: float
) -> Session:
    """The ASGI ``websocket`` session for an upgrade request (``apps.websocket_asgi``).

    Made here, awaited by the engine: what only builds the scope (this
    frame, the WebSocketRequest) is not kept for the session's hours.
    """
    # Imported here: a worker that never sees a WebSocket does not load the library.
    from prefork.apps.websocket import Options
    from prefork.apps.websocket_asgi import WebSocketRequest, asgi_websocket_session

    if not isinstance(app.ws_options, Options):
        app.ws_options = Options.from_config(app.ws_options)
    opts: Options = app.ws_options
    _, _, headers, path, raw_path, query = head_parts(req, app.root_path)
    ws_req = WebSocketRequest(
        method=req.method,
        path=path,
        raw_path=raw_path,
        query_string=query,
        headers=list(headers),
        client=info.client,
        server=info.server,
        scheme="wss" if info.scheme == "https" else "ws",
        root_path=app.root_path,
        http_version=req.version,
        state=app.lifespan.state.copy(),
        extensions={k: v for k, v in info.extensions.items() if k == "tls"},
    )
    client_ip = conn.client_ip
    if conn.behind_proxy:
        # (The connection's own scheme unless the proxy says otherwise: a
        # TLS connection from a trusted proxy stays wss without a header.)
        scope: dict[str, Any] = {"client": ws_req.client, "scheme": info.scheme}
        client_ip = _forwarded(scope, req, conn)
        ws_req.client = scope["client"]
        ws_req.scheme = "wss" if scope["scheme"] == "https" else "ws"
    # The session may last hours: the request stays for its access line, but
    # its field dict (~0.65 KiB) and the parser's list of fields (~0.9 KiB:
    # the scope has its own, lower-cased) need not.
    access = conn.shared.access
    if access.header_names:
        access.capture(req)  # the log_headers values, before the fields go
    req.drop_fields()
    # Nor the connection's part of HTTP scopes (~0.2 KiB with its extensions
    # dict): no request follows, the WebSocket's scope has what it needs.
    conn.ctx = None
    conn.end_http()
    return asgi_websocket_session(
        app.app, ws_req, conn, opts, _AccessLine(conn, client_ip, req, started)
    )


class _AccessLine:
    """What ends a WebSocket session: its access line and metrics, then "close".

    An object the session calls, not a coroutine awaiting the session: the
    latter's frame would stay as long as the WebSocket (~0.25 KiB more).
    """

    __slots__ = ("client_ip", "conn", "req", "started")

    def __init__(self, conn: Connection, client_ip: str, req: Request, started: float) -> None:
        self.conn = conn
        self.client_ip = client_ip
        self.req = req
        self.started = started

    def __call__(self, outcome: Outcome) -> Action:
        shared = self.conn.shared
        shared.record(self.client_ip, self.req, outcome.status, outcome.sent, self.started)
        return "close"
