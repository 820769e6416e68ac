"""The ASGI ``websocket`` scope (spec 2.4 events, the ``websocket.http.response`` extension).

The ASGI layer calls ``serve_asgi_websocket`` for a request with ``Upgrade:
websocket``, after it parsed the head and before it reads anything more; it
passes the scope's inputs as plain values (``WebSocketRequest``) and the
connection (``ConnectionLike``), and gets back what to log. Event rules:

- an invalid handshake is answered (400/405/426/505) without calling the app;
- the app's first ``receive()`` is ``websocket.connect``;
- ``websocket.accept`` (``subprotocol``, ``headers``) sends the 101;
  ``websocket.close`` before it answers 403; ``websocket.http.response.start``
  and ``.body`` answer with the app's own HTTP response; an app that raises or
  returns before any of these gets a 500;
- after the accept, ``receive()`` gives ``websocket.receive`` (``text`` or
  ``bytes``) until ``websocket.disconnect`` (``code``, ``reason``);
  ``websocket.send`` sends one message, ``websocket.close`` starts the close
  handshake (code 1000 unless given); a ``send()`` once closed raises
  ``WebSocketClosed`` (an ``OSError``); an app that raises after the accept is
  closed with 1011, one that returns with 1000.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Coroutine, MutableMapping
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

from prefork._types import ConnectionLike
from prefork.apps.websocket import Handshake, Options, WebSocket
from prefork.apps.websocket_exchange import Exchange, write_and_close
from prefork.apps.websocket_exchange import Outcome as Outcome
from prefork.apps.websocket_run import AppRun, end
from prefork.http.response import error_response

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
# Loose on purpose: frameworks type their scope and messages each their own way.
ASGIApp = Callable[[Any, Any, Any], Awaitable[None]]

T = TypeVar("T")

SPEC_VERSION = "2.4"
HTTP_RESPONSE_EXTENSION = "websocket.http.response"


@dataclass(slots=True)
class WebSocketRequest:
    """What the scope is built from; all plain values the HTTP layer has.

    ``path`` is percent-decoded, ``raw_path`` is not; ``headers`` as received,
    names lower-cased; ``state``: the lifespan state copy for this connection.
    """

    method: str
    path: str
    raw_path: bytes
    query_string: bytes
    headers: list[tuple[bytes, bytes]]
    client: tuple[str, int] | None
    server: tuple[str, int | None] | None
    scheme: str = "ws"
    root_path: str = ""
    http_version: str = "1.1"
    state: dict[str, Any] | None = None
    extensions: dict[str, Any] = field(default_factory=dict)

    @property
    def target(self) -> str:
        path = self.raw_path.decode("latin-1")
        return path + "?" + self.query_string.decode("latin-1") if self.query_string else path


# One dict for every scope, as the HTTP scopes of a worker share theirs.
_ASGI = {"version": "3.0", "spec_version": SPEC_VERSION}


def build_scope(req: WebSocketRequest, subprotocols: list[str]) -> Scope:
    scope: Scope = {
        "type": "websocket",
        "asgi": _ASGI,
        "http_version": req.http_version,
        "scheme": req.scheme,
        "path": req.path,
        "raw_path": req.raw_path,
        "query_string": req.query_string,
        "root_path": req.root_path,
        "headers": req.headers,
        "client": req.client,
        "server": req.server,
        # The scope's own list and dict (~0.3 KiB per idle connection): an app
        # or a middleware may change its scope, and another connection's must
        # not change with it (the handshake shares one empty list for all).
        "subprotocols": list(subprotocols),
        "extensions": {**req.extensions, HTTP_RESPONSE_EXTENSION: {}},
    }
    if req.state is not None:
        scope["state"] = req.state
    return scope


def serve_asgi_websocket(
    app: ASGIApp,
    req: WebSocketRequest,
    conn: ConnectionLike,
    opts: Options,
    initial: bytes = b"",
) -> Coroutine[Any, Any, Outcome]:
    """Run ``app`` for one WebSocket request on ``conn`` until it is closed.

    ``initial``: bytes read past the request head, if any (prefork's
    ``Connection.read`` hands them over itself: pass nothing then). Never
    raises for the app's errors (logged); the connection is closed on return.
    """
    return asgi_websocket_session(app, req, conn, opts, _outcome, initial)


def _outcome(outcome: Outcome) -> Outcome:
    return outcome


def asgi_websocket_session(
    app: ASGIApp,
    req: WebSocketRequest,
    conn: ConnectionLike,
    opts: Options,
    finish: Callable[[Outcome], T],
    initial: bytes = b"",
) -> Coroutine[Any, Any, T]:
    """``serve_asgi_websocket``, ending with ``finish(outcome)`` (its result is the session's).

    A plain function that checks the handshake and builds the scope now, and
    returns what runs the app (``websocket_run.AppRun``): no frame of ours stays around
    the app's for the session's life, and ``finish`` (the access line) needs
    no coroutine of its own around it either.
    """
    handshake = Handshake(
        req.method,
        req.target,
        [(bytes(n).decode("latin-1"), bytes(v).decode("latin-1")) for n, v in req.headers],
        opts,
        req.http_version,
    )
    if not handshake.ok:
        rejected = handshake.rejection()
        reply = error_response(rejected.status, rejected.body.decode().strip())
        return _reject(conn, reply, Outcome(rejected.status, len(rejected.body)), finish)
    ws = WebSocket(conn, handshake, opts, initial)
    scope = build_scope(req, handshake.subprotocols)
    exchange = Exchange(conn, ws)
    try:
        call = app(scope, exchange.receive, exchange.send)
    except Exception as exc:  # (a plain callable that raised at once)
        return cast("Coroutine[Any, Any, T]", end(exchange, exc, req.path, finish))
    # (A coroutine by registration: websocket_run. Its result is finish's.)
    return cast("Coroutine[Any, Any, T]", AppRun(call, exchange, req.path, finish))


async def _reject(
    conn: ConnectionLike, reply: bytes, outcome: Outcome, finish: Callable[[Outcome], T]
) -> T:
    await write_and_close(conn, reply)
    return finish(outcome)
