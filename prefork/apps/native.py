"""The native interface: ``handle(method, query, args, headers, body, ctx)``.

``NativeApp`` is what the engine calls (``engine.app.AppInterface``).
``exchange`` is the coroutine path (also what ``Server.process_request``
runs); ``finish`` is the synchronous core that the inline path
(``NativeApp.respond_inline``) shares with it, so both answer a request the
same way. Streams and bodies big enough to compress slice by slice are finished
by ``respond_slow``. Everything here goes through the connection's public
members; the bytes come from ``prefork.http.response``.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections.abc import AsyncIterable, Coroutine, Iterable, Iterator, Mapping
from typing import Any, Final

from prefork import log
from prefork._types import Action, Handler
from prefork.apps.handler import (
    Context,
    HandlerResultError,
    check_result,
    is_async_handler,
    is_stream,
)
from prefork.engine.batch import QUICK_HANDLER_S
from prefork.engine.connection import Connection
from prefork.engine.shared import Shared
from prefork.engine.slices import compress_in_slices
from prefork.errors import PeerGone, PreforkError, ProtocolError
from prefork.http import compression
from prefork.http.forwarded import resolve
from prefork.http.request import Request, parse_args
from prefork.http.response import (
    LAST_CHUNK,
    BadHeader,
    body_length,
    bodyless_status,
    chunk,
    encode_head,
    error_response,
    fields,
    negotiate,
)

# Bound once: the compiled build keeps a Final name in a C static, where
# time.monotonic would be looked up on the module at every call.
monotonic: Final = time.monotonic

logger = logging.getLogger(log.WORKER)
app_logger = logging.getLogger(log.APP)


class NativeApp:
    """The engine's view of a native handler (``engine.app.AppInterface``)."""

    __slots__ = ("fields_as_list", "handler", "inline", "is_async", "quick_s", "stream_bodies_over")

    def __init__(self, handler: Handler, quick_s: float = QUICK_HANDLER_S) -> None:
        self.handler = handler
        # A response whose handler returned within this many seconds may be batched.
        self.quick_s = quick_s
        self.is_async = is_async_handler(handler)
        # Sync handlers are called straight from the protocol callback.
        self.inline = not self.is_async
        # Handlers get ``Request.body`` whole.
        self.fields_as_list = False  # (the handler is given the dict)
        self.stream_bodies_over: int | None = None

    async def startup(self) -> None:
        pass

    async def shutdown(self) -> None:
        pass

    def exchange(self, conn: Connection) -> Coroutine[Any, Any, Action]:
        # The module function's coroutine itself, not one awaiting it: one
        # frame less on every parked connection (~250 bytes).
        shared = conn.shared
        return exchange(conn, shared, conn.client_ip, conn.count, shared.redis_module)

    def respond_inline(self, conn: Connection, req: Request) -> bool:
        """Call the (sync) handler from the protocol callback and answer if it can be done now."""
        shared = conn.shared
        if shared.access.header_names:
            shared.access.capture(req)
        ctx = conn.ctx
        if conn.behind_proxy:
            ctx = context(conn, conn.client_ip, shared.redis_module, req)
        elif (
            ctx is None
            or ctx.client_ip is not conn.client_ip
            or ctx.redis_module is not shared.redis_module
        ):
            ctx = context(conn, conn.client_ip, shared.redis_module)
        started = monotonic()
        try:
            result = self.handler(
                req.method, req.path, parse_args(req.query), req.headers, req.body, ctx
            )
        except Exception:
            # Answered (500, close): the woken coroutine returns "close".
            conn.count += 1
            handler_failed(conn, shared, req, _client(conn), started)
            return False
        if type(result) is not tuple and asyncio.iscoroutine(result):
            conn.hand_off((req, result, started))
            return False
        batchable = monotonic() - started < self.quick_s
        count = conn.count_request()
        outcome = finish(conn, shared, req, result, count, started, batchable)
        if not isinstance(outcome, str):
            conn.count = count
            conn.hand_off((req, result, started))
            return False
        return outcome == "keep-alive"


def context(
    conn: Connection, client_ip: str, redis_module: Any, req: Request | None = None
) -> Context:
    """The handler's ``ctx`` for this connection (one object, reused).

    ``req``: from a trusted proxy, whose forwarded fields set the client
    address, the scheme and the ``host`` header the handler sees.
    """
    shared = conn.shared
    scheme = shared.scheme
    if req is not None:
        client, forwarded_scheme, host = resolve(req.headers, shared.trust)
        if client is not None:
            client_ip = client
        if forwarded_scheme is not None:
            scheme = forwarded_scheme
        if host is not None:
            req.headers["host"] = host
    ctx: Context | None = conn.ctx
    if ctx is None:
        ctx = conn.ctx = Context(app_logger, conn, client_ip, shared.cfg, redis_module, scheme)
    else:
        ctx.client_ip = client_ip
        ctx.scheme = scheme
        ctx.redis_module = redis_module
    return ctx


def _client(conn: Connection) -> str:
    """The client's address as the handler saw it (a trusted proxy's word, or the peer)."""
    ctx = conn.ctx
    return conn.client_ip if ctx is None else str(ctx.client_ip)


async def exchange(
    conn: Connection, state: Shared, client_ip: str, count: int, redis_module: Any
) -> Action:
    """Read one request, call the handler, write the response; say what to do next."""
    try:
        req = await conn.receive_request(count)
    except ProtocolError as exc:
        conn.reject(exc)
        raise
    if req is None:
        # Served inline up to a response that needs this coroutine (a stream,
        # an async result, a big body to compress slice by slice).
        handoff: Any = conn.take_handoff()
        if handoff is None:
            return "close"  # the inline path answered and closed
        req, result, started = handoff
        count = conn.count  # the inline path answered some requests meanwhile
        if asyncio.iscoroutine(result):
            try:
                result = await result
            except Exception:
                return handler_failed(conn, state, req, _client(conn), started)
    else:
        if state.access.header_names:
            state.access.capture(req)
        started = monotonic()
        ctx = context(conn, client_ip, redis_module, req if conn.behind_proxy else None)
        client_ip = ctx.client_ip
        app: NativeApp = state.app  # type: ignore[assignment]
        ctx.request = req
        try:
            if app.is_async:
                result = await app.handler(  # type: ignore[misc]
                    req.method, req.path, parse_args(req.query), req.headers, req.body, ctx
                )
            else:
                result = app.handler(
                    req.method, req.path, parse_args(req.query), req.headers, req.body, ctx
                )
                # (iscoroutine on a tuple goes through an ABC check: skip it.)
                if type(result) is not tuple and asyncio.iscoroutine(result):
                    result = await result
        except Exception:
            return handler_failed(conn, state, req, client_ip, started)
        finally:
            ctx.request = None  # an idle keep-alive connection keeps no request
        if ctx.upgraded is not None:
            return await _end_websocket(conn, state, req, started)
    conn.count = count + 1
    outcome = finish(conn, state, req, result, count, started, False)
    if isinstance(outcome, str):
        action: Action = outcome
    else:
        action = await respond_slow(conn, state, req, outcome, started)
    if conn.write_paused and action == "keep-alive":
        await conn.drain()
    return action


def handler_failed(
    conn: Connection, state: Shared, req: Request, client_ip: str, started: float
) -> Action:
    ctx = conn.ctx
    if ctx is not None and ctx.upgraded is not None:
        # The connection speaks WebSocket now: no HTTP 500 on it. A client gone
        # mid-send (WebSocketClosed, a ConnectionError) ends a session as usual.
        if isinstance(sys.exc_info()[1], ConnectionError):
            _log_websocket(conn, state, req, started)
            conn.close()
            return "close"
        app_logger.exception("handler raised on %s %s", req.method, req.path)
        ctx.upgraded = None
        conn.abort()
        return "close"
    app_logger.exception("handler raised on %s %s", req.method, req.path)
    return _send_500(conn, state, req, client_ip, started)


async def _end_websocket(conn: Connection, state: Shared, req: Request, started: float) -> Action:
    """The handler that accepted a WebSocket returned: close it (1000) unless it is."""
    ws = conn.ctx.upgraded
    await ws.close()
    _log_websocket(conn, state, req, started)
    return "close"


def _log_websocket(conn: Connection, state: Shared, req: Request, started: float) -> None:
    """Count and log the upgrade (101, with the bytes sent on the WebSocket)."""
    ws, conn.ctx.upgraded = conn.ctx.upgraded, None
    conn.count += 1
    state.record(_client(conn), req, 101, ws.bytes_sent, started)


def _send_500(
    conn: Connection, state: Shared, req: Request, client_ip: str, started: float
) -> Action:
    data = error_response(500, "Internal Server Error", req.method)
    conn.send(data)
    state.record(client_ip, req, 500, body_length(data), started)
    conn.graceful_close()
    return "close"


class _Slow:
    """A response that needs the coroutine: a stream, or a body to compress slice by slice."""

    __slots__ = ("content", "headers", "keep_alive", "status")

    def __init__(
        self, content: Any, status: int, headers: Mapping[str, Any] | None, keep_alive: bool
    ) -> None:
        self.content = content
        self.status = status
        self.headers = headers
        self.keep_alive = keep_alive


def finish(
    conn: Connection,
    state: Shared,
    req: Request,
    result: object,
    count: int,
    started: float,
    batchable: bool,
) -> Action | _Slow:
    """Write the response to ``req`` now if it can be done without waiting."""
    valid = False
    if type(result) is tuple and len(result) == 3:
        content, status, headers = result
        if content is None and status is None and headers is None:
            # The handler proxied the exchange itself on ctx.client.
            state.requests_served += 1
            return "keep-alive"
        valid = type(status) is int and 100 <= status <= 599 and type(headers) is dict
    if not valid:
        try:
            content, status, headers = check_result(result)
        except HandlerResultError as bad:  # not "exc": mypyc types it once per function
            app_logger.error("%s %s: %s", req.method, req.path, bad)
            return _send_500(conn, state, req, _client(conn), started)
    keep_alive = (
        req.keep_alive
        and count + 1 < state.requests_per_connection
        and not state.draining
        and not conn.closing
    )
    try:
        text, lower, has_server, close = fields(state.fields_cache, headers, type(content) is str)
        if close:
            keep_alive = False
        if isinstance(content, bytes):
            body = content
        elif isinstance(content, str):
            body = content.encode("utf-8")
        elif content is None:
            body = b""
        elif isinstance(content, bytearray | memoryview):
            body = bytes(content)
        elif is_stream(content):
            return _Slow(content, status, headers, keep_alive)
        else:
            raise BadHeader(f"handler returned content of type {type(content).__name__}")
        coding, text = negotiate(
            state.policy,
            state.negotiated_cache,
            req,
            status,
            lower,
            text,
            len(body),
        )
        if coding is not None:
            size = len(body)
            cache = state.body_cache
            cached = None
            if size >= compression.CACHE_MIN_BYTES and cache.max_bytes:
                cached = cache.get(coding, body)
            if cached is not None:
                body = cached
            elif size > compression.SLICE_BYTES:
                return _Slow(content, status, headers, keep_alive)
            else:
                out = compression.compress_body(coding, state.policy.level, body)
                if size >= compression.CACHE_MIN_BYTES:
                    cache.put(coding, body, out)
                body = out
        sent = _write_fixed(conn, req, status, text, has_server, body, keep_alive, batchable)
    except BadHeader as exc:
        app_logger.error("%s %s: %s", req.method, req.path, exc)
        return _send_500(conn, state, req, _client(conn), started)
    return _done(conn, state, req, status, sent, started, keep_alive)


def _done(
    conn: Connection,
    state: Shared,
    req: Request,
    status: int,
    sent: int,
    started: float,
    keep_alive: bool,
) -> Action:
    """Count and log a response that went out; close the connection if it said so."""
    state.record(_client(conn), req, status, sent, started)
    if keep_alive:
        return "keep-alive"
    conn.close_after_response(asked=not req.keep_alive)
    return "close"


def _write_fixed(
    conn: Connection,
    req: Request,
    status: int,
    text: str,
    has_server: bool,
    body: bytes,
    keep_alive: bool,
    batchable: bool,
) -> int:
    """Serialise and write a response with a known body; returns the body bytes sent."""
    if bodyless_status(status):
        framing = ""
        body = b""
    else:
        framing = f"Content-Length: {len(body)}\r\n"
        if req.method == "HEAD":
            body = b""
    head = encode_head(status, text, has_server, framing, keep_alive, req.version == "1.0")
    conn.write_response(head, body, keep_alive, batchable)
    return len(body)


async def respond_slow(
    conn: Connection, state: Shared, req: Request, slow: _Slow, started: float
) -> Action:
    """Stream an iterable, or compress a big body slice by slice, then write it."""
    status = slow.status
    try:
        content = slow.content
        text, lower, has_server, close = fields(
            state.fields_cache, slow.headers, type(content) is str
        )
        keep_alive = slow.keep_alive and not close
        if is_stream(content):
            sent, keep_alive = await _respond_stream(
                conn, state, req, content, status, text, lower, has_server, keep_alive
            )
        else:
            body = content.encode("utf-8") if isinstance(content, str) else bytes(content)
            coding, text = negotiate(
                state.policy, state.negotiated_cache, req, status, lower, text, len(body)
            )
            if coding is not None:
                out = await compress_in_slices(
                    coding, state.policy.level, body, state.compress_turn
                )
                state.body_cache.put(coding, body, out)
                body = out
            sent = _write_fixed(conn, req, status, text, has_server, body, keep_alive, False)
    except BadHeader as exc:
        app_logger.error("%s %s: %s", req.method, req.path, exc)
        return _send_500(conn, state, req, _client(conn), started)
    return _done(conn, state, req, status, sent, started, keep_alive)


def _as_bytes(item: Any) -> bytes:
    if isinstance(item, bytes):
        return item
    if isinstance(item, str):
        return item.encode("utf-8")
    if isinstance(item, bytearray | memoryview):
        return bytes(item)
    raise TypeError(f"stream yielded {type(item).__name__}, expected bytes")


async def _close_stream(content: Any) -> None:
    closer = getattr(content, "aclose", None)
    if closer is not None:
        await closer()
        return
    closer = getattr(content, "close", None)
    if closer is not None:
        closer()


async def _respond_stream(
    conn: Connection,
    state: Shared,
    req: Request,
    content: AsyncIterable[Any] | Iterable[Any],
    status: int,
    text: str,
    lower: Mapping[str, str],
    has_server: bool,
    keep_alive: bool,
) -> tuple[int, bool]:
    """Stream an iterable: chunked on HTTP/1.1, close-delimited on HTTP/1.0."""
    http10 = req.version == "1.0"
    if req.method == "HEAD" or bodyless_status(status):
        await _close_stream(content)
        head = encode_head(status, text, has_server, "", keep_alive, http10)
        conn.send(head)
        return 0, keep_alive
    encoder = None
    coding, text = negotiate(state.policy, state.negotiated_cache, req, status, lower, text, None)
    if coding is not None:
        encoder = compression.make_encoder(coding, state.policy.level)
    if http10:
        keep_alive = False
        framing = ""
    else:
        framing = "Transfer-Encoding: chunked\r\n"
    head = encode_head(status, text, has_server, framing, keep_alive, http10)
    conn.send(head)
    sent = 0
    try:
        # Two loops, not one over an async generator: mypyc compiles none.
        if isinstance(content, AsyncIterable):
            async for item in content:
                sent += await _send_piece(conn, encoder, http10, _as_bytes(item))
        else:
            iterator: Iterator[Any] = iter(content)
            for item in iterator:
                sent += await _send_piece(conn, encoder, http10, _as_bytes(item))
        if encoder is not None:
            tail = encoder.finish()
            if tail:
                sent += len(tail)
                conn.send(tail if http10 else chunk(tail))
        if not http10:
            conn.send(LAST_CHUNK)
        await conn.drain()
    except PreforkError:
        raise
    except Exception:
        # Headers are gone already: the only honest signal left is to cut the
        # connection so the client sees an incomplete body.
        app_logger.exception("stream raised on %s %s", req.method, req.path)
        conn.abort()
        raise PeerGone("stream failed mid-response") from None
    finally:
        await _close_stream(content)
    return sent, keep_alive


async def _send_piece(
    conn: Connection, encoder: compression.Encoder | None, http10: bool, data: bytes
) -> int:
    """One piece of a stream, compressed when negotiated, sent and drained: its length."""
    if encoder is not None:
        data = encoder.compress(data) + encoder.flush()
    if not data:
        return 0
    conn.send(data if http10 else chunk(data))
    await conn.drain()
    return len(data)
