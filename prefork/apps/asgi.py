"""The ASGI 3 interface: ``async def app(scope, receive, send)``, spec 2.5.

``AsgiApp`` is what the engine calls (``engine.app.AppInterface``). Each
request is one ``asgi_exchange.Exchange`` (the ``receive`` and ``send`` the
app gets), awaited in the connection's own coroutine: no task per request,
but a context per request (``start_in_context``), as a task would have.
The scope comes from ``asgi_scope``, the lifespan protocol from
``asgi_lifespan``, the rules of the app's messages from ``asgi_messages``.
"""

from __future__ import annotations

import contextvars
import logging
import time
import types
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from prefork import log
from prefork._types import Action
from prefork.apps.asgi_context import start_in_context
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
from prefork.http.forwarded import forwarded_view
from prefork.http.request import Request

if TYPE_CHECKING:  # (imported when a WebSocket comes: see _websocket_session)
    from prefork.apps.websocket_asgi import Outcome

logger = logging.getLogger(log.WORKER)

AsgiCallable = Callable[[dict[str, Any], Any, Any], Awaitable[None]]

__all__ = ["AsgiApp", "AsgiMessageError", "ClientDisconnected"]


class AsgiApp:
    """The engine's view of an ASGI 3 app (``engine.app.AppInterface``)."""

    __slots__ = (
        "app",
        "asgi",
        "inline",
        "lifespan",
        "name",
        "root_path",
        "ssl_cfg",
        "stream_bodies_over",
        "ws_options",
    )

    def __init__(self, app: AsgiCallable, name: str, cfg: Config) -> None:
        self.app = app
        self.name = name
        # The app is awaited in the connection's coroutine, never from the
        # protocol callback.
        self.inline = False
        # Read by the connection's RequestReader (RequestReader.stream_over).
        self.stream_bodies_over: int | None = STREAM_BODIES_OVER
        self.root_path: str = cfg.root_path
        self.ssl_cfg = cfg.ssl
        self.asgi = {"version": ASGI_VERSION, "spec_version": SPEC_VERSION}
        self.lifespan = Lifespan(app, name, cfg.lifespan, self.asgi)
        # The ws_* keys: the Config, made an Options at the first WebSocket.
        self.ws_options: Any = cfg

    async def startup(self) -> None:
        await self.lifespan.startup()

    async def shutdown(self) -> None:
        await self.lifespan.shutdown()

    def respond_inline(self, conn: Connection, req: Request) -> bool:
        return False  # never called: ``inline`` is False

    async def exchange(self, conn: Connection) -> Action | Session:
        count = conn.count
        try:
            req = await conn.receive_request(count)
        except ProtocolError as exc:
            conn.reject(exc)
            raise
        if req is None:
            return "close"  # (no inline path: nothing is ever handed off)
        started = time.monotonic()
        nxt = count + 1
        counts = conn.shared.counts  # shared ints: see Shared.counts
        conn.count = counts[nxt] if nxt < len(counts) else nxt
        info: ConnScope | None = conn.ctx
        if info is None:
            info = conn.ctx = conn_scope(
                conn.transport, conn.peername, conn.server_name, self.ssl_cfg
            )
        upgrade = req.headers.get("upgrade")
        if upgrade is not None and upgrade.lower() == "websocket":
            # A session: the engine awaits it once this frame is gone (each
            # frame on the chain lives as long as the WebSocket).
            return _websocket_session(self, conn, req, info, started)
        scope = http_scope(req, info, self.root_path, self.lifespan.state, self.asgi)
        client_ip = conn.client_ip
        if conn.behind_proxy:
            client_ip = _forwarded(scope, req, conn)
        ex = Exchange(self.name, conn, req, count, started, client_ip)
        try:
            context = contextvars.copy_context()
            call = context.run(self.app, scope, ex.receive, ex.send)
            if type(call) is types.CoroutineType:
                rest = start_in_context(call, context)
                if rest is not None:
                    await rest
            else:  # an awaitable of another kind: awaited as it is
                await call
        except Exception as exc:
            action = ex.failed(exc)
        else:
            action = ex.returned()
        if action == "keep-alive" and conn.write_paused:
            await conn.drain()
        return action


def _forwarded(scope: dict[str, Any], req: Request, conn: Connection) -> str:
    """A trusted proxy's word on the client and the scheme, into ``scope``; the client's address."""
    client, scheme, _host = forwarded_view(req.headers, conn.shared.trust)
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
