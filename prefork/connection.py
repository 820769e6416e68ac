"""One connection: the asyncio Protocol, the per-connection coroutine, one exchange.

``Connection`` is fed by the event loop (``data_received``) and parses as bytes
arrive; the connection coroutine (``serve_connection``) is woken only when a
whole request is there, calls the handler, and writes the response, usually in
one ``transport.write``. Deadlines are absolute and checked by one sweeper per
worker (``ServerState``), not a timer per request. Reads, writes and timeouts
live only here.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import socket
import ssl
import time
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator, Mapping
from typing import Any

from . import compression, log
from ._types import Action, Handler
from .config import Config
from .errors import PeerGone, PreforkError, ProtocolError
from .handler import Context, HandlerResultError, check_result, is_async_handler, is_stream
from .parsers import make_parser, resolve
from .protocol import (
    CONTINUE_RESPONSE,
    DATE,
    SERVER_HEADER,
    Limits,
    Request,
    RequestReader,
    bodyless_status,
    error_response,
    parse_args,
    status_line,
)

logger = logging.getLogger(log.WORKER)
app_logger = logging.getLogger(log.APP)

# Unparsed input kept while a handler runs before reading is paused.
MAX_PENDING_BYTES = 256 * 1024
# Pipelined requests parsed ahead of the one being answered before reading is paused.
MAX_QUEUED_REQUESTS = 32
# How long a closing connection keeps reading (and discarding) after it half-closed,
# so that a client still sending does not get a reset instead of our response
# (RFC 9112 §9.6).
LINGER_S = 2.0
# Responses with bodies at least this big are written in two calls (no copy).
JOIN_BODY_MAX_BYTES = 64 * 1024
# Header names the server owns: a handler's value is replaced or interpreted.
_FRAMING = frozenset(("content-length", "transfer-encoding", "connection", "date"))
_BAD_HEADER_CHARS = ("\r", "\n", "\0")


class Deadline(enum.Enum):
    NONE = 0
    IDLE = 1
    HEADER = 2
    BODY = 3
    WRITE = 4
    LINGER = 5


class ServerState:
    """Everything one worker's connections share: config, handler, limits, the sweeper."""

    def __init__(
        self,
        cfg: Config,
        handler: Handler,
        *,
        ssl_context: ssl.SSLContext | None = None,
        redis_module: Any = None,
    ) -> None:
        self.cfg = cfg
        self.handler = handler
        self.is_async = is_async_handler(handler)
        self.ssl_context = ssl_context
        self.redis_module = redis_module
        self.limits = Limits.from_config(cfg)
        self.parser_name = resolve(cfg.http)
        self.policy = compression.Policy(cfg.compression)
        self.access = log.AccessLog(cfg.log_headers)
        self.requests_per_connection = cfg.requests_per_connection
        self.keepalive_idle_timeout = cfg.keepalive_idle_timeout
        self.request_header_timeout = cfg.request_header_timeout
        self.request_body_timeout = cfg.request_body_timeout
        self.response_write_timeout = cfg.response_write_timeout
        self.connections: set[Connection] = set()
        self.requests_served = 0
        self.draining = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sweeper: asyncio.TimerHandle | None = None
        self._all_closed: asyncio.Event | None = None
        timeouts = (
            cfg.keepalive_idle_timeout,
            cfg.request_header_timeout,
            cfg.request_body_timeout,
            cfg.response_write_timeout,
        )
        # Deadlines are checked this often: fine enough for the shortest timeout.
        self.sweep_interval = max(0.05, min(1.0, min(timeouts) / 8))

    @property
    def open_connections(self) -> int:
        return len(self.connections)

    def start(self) -> None:
        """Start the deadline sweeper; call once inside the running loop."""
        self._loop = asyncio.get_running_loop()
        self._all_closed = asyncio.Event()
        DATE.refresh()
        self._sweeper = self._loop.call_later(self.sweep_interval, self._sweep)

    def _sweep(self) -> None:
        loop = self._loop
        assert loop is not None
        DATE.refresh()
        now = loop.time()
        for conn in list(self.connections):
            if conn.deadline and now >= conn.deadline:
                conn.on_deadline()
        self._sweeper = loop.call_later(self.sweep_interval, self._sweep)

    def add(self, conn: Connection) -> None:
        self.connections.add(conn)

    def discard(self, conn: Connection) -> None:
        self.connections.discard(conn)
        if not self.connections and self.draining and self._all_closed is not None:
            self._all_closed.set()

    def begin_drain(self) -> None:
        """Stop keep-alive: idle connections close now, busy ones after their response."""
        self.draining = True
        for conn in list(self.connections):
            conn.begin_drain()
        if not self.connections and self._all_closed is not None:
            self._all_closed.set()

    async def wait_closed(self, timeout: float) -> None:  # noqa: ASYNC109
        """Wait until every connection is gone or ``timeout`` passed; then abort the rest."""
        if self._all_closed is not None and self.connections:
            try:
                await asyncio.wait_for(self._all_closed.wait(), timeout)
            except TimeoutError:
                logger.warning("graceful timeout: aborting %d connection(s)", len(self.connections))
        for conn in list(self.connections):
            conn.abort()
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None


class Connection(asyncio.Protocol):
    """An accepted connection: the object handlers see as ``ctx.client``.

    Members for handlers that proxy: ``await read(n)``, ``await write(data)``,
    ``close()``, ``peername`` and ``server_name``.
    """

    def __init__(self, state: ServerState) -> None:
        self.state = state
        self.transport: asyncio.Transport | None = None
        self.reader = RequestReader(make_parser(state.parser_name), state.limits)
        self.peername: tuple[str, int] | None = None
        self.server_name: str | None = None
        self.client_ip = "-"
        self.deadline = 0.0
        self.deadline_kind = Deadline.NONE
        self.ctx: Context | None = None
        self._loop = asyncio.get_running_loop()
        self._reading = True
        self._pending = b""
        self._error: ProtocolError | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._eof = False
        self._lost = False
        self._closing = False
        self._busy = False
        self._read_paused = False
        self._write_paused = False
        self._drain_waiter: asyncio.Future[None] | None = None
        self._parked = False
        self._handoff: tuple[Request, object, float] | None = None
        # Sync handlers are served straight from data_received while the
        # connection coroutine is parked: no wake-up per request.
        self._inline = not state.is_async
        self.count = 0

    # -- asyncio.Protocol -------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple):
            self.peername = (str(peer[0]), int(peer[1]))
            self.client_ip = self.peername[0]
        self.state.add(self)

    def data_received(self, data: bytes) -> None:
        if self._closing:
            return  # lingering: read and discard
        if not self._reading:
            self._pending += data
            if len(self._pending) > MAX_PENDING_BYTES:
                self._pause_reading()
            self._wake()
            return
        reader = self.reader
        try:
            reader.feed(data)
        except ProtocolError as exc:
            self._error = exc
            self._wake()
            return
        if reader.requests:
            if self._parked and self._inline:
                if self._serve_inline() and reader.want_continue:
                    reader.want_continue = False
                    self._send(CONTINUE_RESPONSE)
                return
            if len(reader.requests) > MAX_QUEUED_REQUESTS:
                self._pause_reading()
            self._wake()
        else:
            if reader.want_continue:
                reader.want_continue = False
                self._send(CONTINUE_RESPONSE)
            if reader.in_body:
                if self.deadline_kind is not Deadline.BODY:
                    self._set_deadline(Deadline.BODY, self.state.request_body_timeout)
            elif self.deadline_kind is Deadline.IDLE and reader.head_started:
                self._set_deadline(Deadline.HEADER, self.state.request_header_timeout)

    def eof_received(self) -> bool:
        self._eof = True
        self._wake()
        if self._closing:
            self._close_transport()
        # Keep the transport open: a client may half-close after its request
        # and still read the response (TLS cannot half-close: it closes).
        return self.state.ssl_context is None

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        self._eof = True
        self.deadline = 0.0
        self.state.discard(self)
        self._wake()
        waiter = self._drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        waiter = self._drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- internals --------------------------------------------------------

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _pause_reading(self) -> None:
        if not self._read_paused and self.transport is not None:
            self._read_paused = True
            self.transport.pause_reading()

    def _resume_reading(self) -> None:
        if self._read_paused and self.transport is not None and not self._lost:
            self._read_paused = False
            self.transport.resume_reading()

    def _set_deadline(self, kind: Deadline, seconds: float) -> None:
        self.deadline_kind = kind
        self.deadline = self._loop.time() + seconds

    def _clear_deadline(self) -> None:
        self.deadline_kind = Deadline.NONE
        self.deadline = 0.0

    def _send(self, data: bytes) -> None:
        if self.transport is not None and not self._lost:
            self.transport.write(data)

    def on_deadline(self) -> None:
        """Called by the sweeper when ``deadline`` has passed."""
        kind = self.deadline_kind
        self._clear_deadline()
        if kind is Deadline.HEADER and not self.reader.head_started and not self.reader.in_body:
            # A connection that never started a request is closed without a response.
            logger.debug("closing a silent connection from %s", self.client_ip)
            self.reader.feed_failed()
            self._close_transport()
            self._wake()
        elif kind is Deadline.HEADER or kind is Deadline.BODY:
            what = "head" if kind is Deadline.HEADER else "body"
            logger.debug("request %s timeout from %s", what, self.client_ip)
            self._error = ProtocolError(408, f"request {what} timeout")
            self.reader.feed_failed()
            if self._waiter is not None:
                self._wake()
            else:
                self._reply_error_and_close(self._error)
        elif kind is Deadline.WRITE or (
            kind is Deadline.LINGER
            and self.transport is not None
            and self.transport.get_write_buffer_size() > 0
        ):
            logger.debug("response write timeout to %s", self.client_ip)
            self.abort()
        else:  # IDLE, LINGER
            self._close_transport()

    def begin_drain(self) -> None:
        """The worker is stopping: close now if idle, else after the current response."""
        if self._closing:
            return
        # A fresh connection is kept for its first request (bounded by the
        # header deadline): its client sent nothing yet but means to.
        if (
            self.count
            and not self._busy
            and not self.reader.head_started
            and not self.reader.in_body
        ):
            self.graceful_close()

    def graceful_close(self) -> None:
        """Half-close, keep reading for a moment, then close (no reset for a late request)."""
        if self._closing or self.transport is None:
            return
        self._closing = True
        self._resume_reading()
        transport = self.transport
        if transport.can_write_eof() and not self._eof and not self._lost:
            try:
                transport.write_eof()  # sent once the buffered response is flushed
            except (OSError, RuntimeError):
                self._close_transport()
                return
            # A client still reading a big last response gets the write timeout too.
            unsent = transport.get_write_buffer_size() > 0
            extra = self.state.response_write_timeout if unsent else 0.0
            self._set_deadline(Deadline.LINGER, LINGER_S + extra)
        else:
            self._close_transport()
        self._wake()

    def _close_transport(self) -> None:
        self._closing = True
        self._clear_deadline()
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def abort(self) -> None:
        self._closing = True
        self._clear_deadline()
        if self.transport is not None:
            self.transport.abort()

    def _reply_error_and_close(self, exc: ProtocolError) -> int:
        """Send the error response and close; returns the body bytes sent."""
        data = error_response(exc.status, str(exc))
        self._send(data)
        self.graceful_close()
        return _body_length(data)

    def context(self, client_ip: str, redis_module: Any) -> Context:
        """The handler's ``ctx`` for this connection (one object, reused)."""
        ctx = self.ctx
        if ctx is None:
            ctx = self.ctx = Context(app_logger, self, client_ip, self.state.cfg, redis_module)
        elif ctx.client_ip != client_ip or ctx.redis_module is not redis_module:
            ctx.client_ip = client_ip
            ctx.redis_module = redis_module
        return ctx

    def take_handoff(self) -> tuple[Request, object, float]:
        handoff = self._handoff
        assert handoff is not None
        self._handoff = None
        return handoff

    def _serve_inline(self) -> bool:
        """Answer complete requests from the protocol callback (sync handlers only).

        Returns True when all were answered and the connection waits for more;
        False when the coroutine was woken to take over (or the connection closes).
        """
        reader = self.reader
        state = self.state
        handler = state.handler
        ctx = self.context(self.client_ip, state.redis_module)
        self._busy = True
        while reader.requests and not self._closing:
            req = reader.requests.popleft()
            started = time.monotonic()
            try:
                result = handler(
                    req.method, req.path, parse_args(req.query), req.headers, req.body, ctx
                )
            except Exception:
                _handler_failed(self, state, req, self.client_ip, started)
                break
            if type(result) is not tuple and asyncio.iscoroutine(result):
                self._handoff = (req, result, started)
                break
            count = self.count
            self.count = count + 1
            outcome = _finish(self, state, req, result, count, started)
            if not isinstance(outcome, str):
                self.count = count
                self._handoff = (req, result, started)
                break
            if outcome != "keep-alive" or self._write_paused:
                break
        else:
            self._busy = False
            if self._closing:
                return False
            if reader.in_body:
                self._set_deadline(Deadline.BODY, self.state.request_body_timeout)
            elif reader.head_started:
                self._set_deadline(Deadline.HEADER, self.state.request_header_timeout)
            else:
                self._set_deadline(Deadline.IDLE, self.state.keepalive_idle_timeout)
            return True
        self._wake()
        return False

    async def receive_request(self, first: bool) -> Request | None:
        """The next whole request, or None when one was handed over by the inline path.

        Raises ProtocolError or PeerGone.
        """
        reader = self.reader
        self._busy = False
        while True:
            if self._handoff is not None:
                self._busy = True
                self._reading = False
                self._clear_deadline()
                return None
            if self._write_paused:
                await self.drain()
            if reader.requests:
                req = reader.requests.popleft()
                self._reading = False
                self._busy = True
                self._clear_deadline()
                if self._read_paused and len(reader.requests) <= MAX_QUEUED_REQUESTS:
                    self._resume_reading()
                return req
            if self._error is not None:
                raise self._error
            if self._pending:
                data, self._pending = self._pending, b""
                self._resume_reading()
                try:
                    reader.feed(data)
                except ProtocolError as exc:
                    self._error = exc
                continue
            if self._eof or self._closing:
                if not self._lost and not self._closing:
                    try:
                        reader.eof()
                    except ProtocolError as exc:
                        self._error = exc
                        continue
                raise PeerGone("connection closed by peer")
            if (
                self.state.draining
                and self.count
                and not reader.head_started
                and not reader.in_body
            ):
                self.graceful_close()
                raise PeerGone("server is stopping")
            self._reading = True
            if reader.want_continue:
                reader.want_continue = False
                self._send(CONTINUE_RESPONSE)
            if self.deadline_kind is Deadline.NONE:
                if reader.in_body:
                    self._set_deadline(Deadline.BODY, self.state.request_body_timeout)
                elif first or reader.head_started:
                    self._set_deadline(Deadline.HEADER, self.state.request_header_timeout)
                else:
                    self._set_deadline(Deadline.IDLE, self.state.keepalive_idle_timeout)
            waiter = self._waiter = self._loop.create_future()
            self._parked = True
            try:
                await waiter
            finally:
                self._waiter = None
                self._parked = False

    async def drain(self) -> None:
        """Wait while the transport's buffer is full, at most ``response_write_timeout``."""
        if not self._write_paused:
            return
        if self._lost:
            raise PeerGone("connection lost")
        self._set_deadline(Deadline.WRITE, self.state.response_write_timeout)
        waiter = self._drain_waiter = self._loop.create_future()
        try:
            await waiter
        finally:
            self._drain_waiter = None
            if self.deadline_kind is Deadline.WRITE:
                self._clear_deadline()
        if self._lost:
            raise PeerGone("connection lost while writing")

    # -- the public connection object ------------------------------------

    async def read(self, n: int) -> bytes:
        """Up to ``n`` bytes: first what was buffered past the request; ``b""`` at EOF."""
        leftover = self.reader.take_unparsed()
        if leftover:
            self._pending = leftover + self._pending
        while not self._pending:
            if self._eof or self._lost:
                return b""
            self._resume_reading()
            waiter = self._waiter = self._loop.create_future()
            try:
                await waiter
            finally:
                self._waiter = None
        data = self._pending[:n]
        self._pending = self._pending[n:]
        if len(self._pending) < MAX_PENDING_BYTES:
            self._resume_reading()
        return data

    async def write(self, data: bytes) -> None:
        """Send bytes, waiting while the peer is slow (backpressure)."""
        if self._lost or self.transport is None:
            raise ConnectionResetError("connection lost")
        self.transport.write(data)
        await self.drain()

    def close(self) -> None:
        """Close the connection (after what was written is flushed)."""
        self._close_transport()


# -- one exchange -----------------------------------------------------------


async def exchange(
    conn: Connection, state: ServerState, client_ip: str, count: int, redis_module: Any
) -> Action:
    """Read one request, call the handler, write the response; say what to do next."""
    try:
        req = await conn.receive_request(count == 0)
    except ProtocolError as exc:
        _reject(conn, state, client_ip, exc)
        raise
    if req is None:
        # Served inline up to a response that needs this coroutine (a stream,
        # an async result, a big body to compress off the loop).
        req, result, started = conn.take_handoff()
        count = conn.count  # the inline path answered some requests meanwhile
        if asyncio.iscoroutine(result):
            try:
                result = await result
            except Exception:
                return _handler_failed(conn, state, req, conn.client_ip, started)
    else:
        started = time.monotonic()
        ctx = conn.context(client_ip, redis_module)
        try:
            if state.is_async:
                result = await state.handler(  # type: ignore[misc]
                    req.method, req.path, parse_args(req.query), req.headers, req.body, ctx
                )
            else:
                result = state.handler(
                    req.method, req.path, parse_args(req.query), req.headers, req.body, ctx
                )
                if asyncio.iscoroutine(result):
                    result = await result
        except Exception:
            return _handler_failed(conn, state, req, client_ip, started)
    conn.count = count + 1
    outcome = _finish(conn, state, req, result, count, started)
    if isinstance(outcome, str):
        action: Action = outcome
    else:
        action = await _respond_slow(conn, state, req, outcome, started)
    if conn._write_paused and action == "keep-alive":
        await conn.drain()
    return action


def _reject(conn: Connection, state: ServerState, client_ip: str, exc: ProtocolError) -> None:
    logger.debug("rejecting request from %s: %d %s", client_ip, exc.status, exc)
    sent = conn._reply_error_and_close(exc)
    if state.access.enabled():
        state.access.log(client_ip, "-", "-", "1.1", exc.status, sent, time.monotonic(), {})


def _handler_failed(
    conn: Connection, state: ServerState, req: Request, client_ip: str, started: float
) -> Action:
    app_logger.exception("handler raised on %s %s", req.method, req.path)
    return _send_500(conn, state, req, client_ip, started)


def _send_500(
    conn: Connection, state: ServerState, req: Request, client_ip: str, started: float
) -> Action:
    data = error_response(500, "Internal Server Error")
    conn._send(data)
    state.requests_served += 1
    if state.access.enabled():
        size = _body_length(data)
        state.access.log(
            client_ip, req.method, req.path, req.version, 500, size, started, req.headers
        )
    conn.graceful_close()
    return "close"


def _body_length(response: bytes) -> int:
    return len(response) - response.find(b"\r\n\r\n") - 4


class _BadHeader(Exception):
    """A response header the handler set cannot be sent (CR/LF/NUL, not latin-1)."""


class _Slow:
    """A response that needs the coroutine: a stream, or a body to compress off the loop."""

    __slots__ = ("content", "headers", "keep_alive", "status")

    def __init__(
        self, content: Any, status: int, headers: Mapping[str, Any] | None, keep_alive: bool
    ) -> None:
        self.content = content
        self.status = status
        self.headers = headers
        self.keep_alive = keep_alive


def _finish(
    conn: Connection,
    state: ServerState,
    req: Request,
    result: object,
    count: int,
    started: float,
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
        except HandlerResultError as exc:
            app_logger.error("%s %s: %s", req.method, req.path, exc)
            return _send_500(conn, state, req, conn.client_ip, started)
    keep_alive = (
        req.keep_alive
        and count + 1 < state.requests_per_connection
        and not state.draining
        and not conn._closing
    )
    try:
        lines, lower, has_server, keep_alive = _head_lines(headers, keep_alive)
        if isinstance(content, bytes):
            body = content
        elif isinstance(content, str):
            body = content.encode("utf-8")
            if "content-type" not in lower:
                lower["content-type"] = "text/plain; charset=utf-8"
                lines.append("content-type: text/plain; charset=utf-8\r\n")
        elif content is None:
            body = b""
        elif isinstance(content, bytearray | memoryview):
            body = bytes(content)
        elif is_stream(content):
            return _Slow(content, status, headers, keep_alive)
        else:
            raise _BadHeader(f"handler returned content of type {type(content).__name__}")
        coding, lines = _negotiate(state, req, status, lower, lines, len(body))
        if coding is not None:
            if len(body) >= compression.OFFLOAD_MIN_BYTES:
                return _Slow(content, status, headers, keep_alive)
            body = compression.compress_body(coding, state.policy.level, body)
        sent = _write_fixed(conn, req, status, lines, has_server, body, keep_alive)
    except _BadHeader as exc:
        app_logger.error("%s %s: %s", req.method, req.path, exc)
        return _send_500(conn, state, req, conn.client_ip, started)
    state.requests_served += 1
    if state.access.enabled():
        state.access.log(
            conn.client_ip, req.method, req.path, req.version, status, sent, started, req.headers
        )
    if keep_alive:
        return "keep-alive"
    conn.graceful_close()
    return "close"


def _negotiate(
    state: ServerState,
    req: Request,
    status: int,
    lower: dict[str, str],
    lines: list[str],
    body_len: int | None,
) -> tuple[str | None, list[str]]:
    """The coding to apply (or None) and the header lines, with Vary etc. updated."""
    policy = state.policy
    if not policy.enabled or req.method == "HEAD" or bodyless_status(status):
        return None, lines
    if body_len is not None and body_len < policy.min_size:
        return None, lines
    coding, vary = policy.choose(
        req.method, status, req.headers.get("accept-encoding"), lower, body_len
    )
    if coding is not None or vary:
        compression.apply_headers(lower, coding, vary)
        lines = [f"{name}: {value}\r\n" for name, value in lower.items()]
    return coding, lines


def _write_fixed(
    conn: Connection,
    req: Request,
    status: int,
    lines: list[str],
    has_server: bool,
    body: bytes,
    keep_alive: bool,
) -> int:
    """Serialise and write a response with a known body; returns the body bytes sent."""
    if bodyless_status(status):
        framing = ""
        body = b""
    else:
        framing = f"Content-Length: {len(body)}\r\n"
        if req.method == "HEAD":
            body = b""
    head = _encode_head(status, lines, has_server, framing, keep_alive, req.version == "1.0")
    transport = conn.transport
    if transport is None or conn._lost:
        raise PeerGone("connection lost before the response")
    if len(body) < JOIN_BODY_MAX_BYTES:
        transport.write(head + body)
    else:
        transport.write(head)
        transport.write(body)
    return len(body)


async def _respond_slow(
    conn: Connection, state: ServerState, req: Request, slow: _Slow, started: float
) -> Action:
    """Stream an iterable, or compress a big body in a thread, then write it."""
    status = slow.status
    try:
        lines, lower, has_server, keep_alive = _head_lines(slow.headers, slow.keep_alive)
        if is_stream(slow.content):
            sent, keep_alive = await _respond_stream(
                conn, state, req, slow.content, status, lines, lower, has_server, keep_alive
            )
        else:
            content = slow.content
            body = content.encode("utf-8") if isinstance(content, str) else bytes(content)
            if isinstance(content, str) and "content-type" not in lower:
                lower["content-type"] = "text/plain; charset=utf-8"
                lines.append("content-type: text/plain; charset=utf-8\r\n")
            coding, lines = _negotiate(state, req, status, lower, lines, len(body))
            if coding is not None:
                body = await asyncio.get_running_loop().run_in_executor(
                    None, compression.compress_body, coding, state.policy.level, body
                )
            sent = _write_fixed(conn, req, status, lines, has_server, body, keep_alive)
    except _BadHeader as exc:
        app_logger.error("%s %s: %s", req.method, req.path, exc)
        return _send_500(conn, state, req, conn.client_ip, started)
    state.requests_served += 1
    if state.access.enabled():
        state.access.log(
            conn.client_ip, req.method, req.path, req.version, status, sent, started, req.headers
        )
    if keep_alive:
        return "keep-alive"
    conn.graceful_close()
    return "close"


def _head_lines(
    headers: Mapping[str, Any] | None, keep_alive: bool
) -> tuple[list[str], dict[str, str], bool, bool]:
    """Handler headers -> (lines, lower-case map, has Server, keep-alive)."""
    lines: list[str] = []
    lower: dict[str, str] = {}
    if not headers:
        return lines, lower, False, keep_alive
    for name, value in headers.items():
        if not isinstance(value, str):
            value = str(value)
        if not isinstance(name, str):
            raise _BadHeader(f"header name {name!r} is not a string")
        lname = name.lower()
        if lname in _FRAMING:
            if lname == "connection" and "close" in value.lower():
                keep_alive = False
            continue
        lower[lname] = value
        lines.append(f"{name}: {value}\r\n")
    return lines, lower, "server" in lower, keep_alive


def _encode_head(
    status: int,
    lines: list[str],
    has_server: bool,
    framing: str,
    keep_alive: bool,
    http10: bool,
) -> bytes:
    if lines:
        # A handler's CR, LF or NUL must never inject a header or split the
        # response: each line may hold exactly its own terminating CRLF.
        fields = "".join(lines)
        n = len(lines)
        if fields.count("\n") != n or fields.count("\r") != n or "\0" in fields:
            raise _BadHeader("response header contains CR, LF or NUL")
    text = "".join(
        (
            status_line(status),
            "" if has_server else SERVER_HEADER,
            DATE.line,
            *lines,
            framing,
            ""
            if keep_alive and not http10
            else ("Connection: keep-alive\r\n" if keep_alive else "Connection: close\r\n"),
            "\r\n",
        )
    )
    try:
        return text.encode("latin-1")
    except UnicodeEncodeError:
        raise _BadHeader("response header is not latin-1 text") from None


async def _iterate(content: Any) -> AsyncIterator[bytes]:
    if isinstance(content, AsyncIterable):
        async for chunk in content:
            yield _as_bytes(chunk)
    else:
        iterator: Iterator[Any] = iter(content)
        for chunk in iterator:
            yield _as_bytes(chunk)


def _as_bytes(chunk: Any) -> bytes:
    if isinstance(chunk, bytes):
        return chunk
    if isinstance(chunk, str):
        return chunk.encode("utf-8")
    if isinstance(chunk, bytearray | memoryview):
        return bytes(chunk)
    raise TypeError(f"stream yielded {type(chunk).__name__}, expected bytes")


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
    state: ServerState,
    req: Request,
    content: AsyncIterable[Any] | Iterable[Any],
    status: int,
    lines: list[str],
    lower: dict[str, str],
    has_server: bool,
    keep_alive: bool,
) -> tuple[int, bool]:
    """Stream an iterable: chunked on HTTP/1.1, close-delimited on HTTP/1.0."""
    http10 = req.version == "1.0"
    if req.method == "HEAD" or bodyless_status(status):
        await _close_stream(content)
        head = _encode_head(status, lines, has_server, "", keep_alive, http10)
        conn._send(head)
        return 0, keep_alive
    encoder = None
    coding, lines = _negotiate(state, req, status, lower, lines, None)
    if coding is not None:
        encoder = compression.make_encoder(coding, state.policy.level)
    if http10:
        keep_alive = False
        framing = ""
    else:
        framing = "Transfer-Encoding: chunked\r\n"
    head = _encode_head(status, lines, has_server, framing, keep_alive, http10)
    conn._send(head)
    sent = 0
    try:
        async for chunk in _iterate(content):
            if encoder is not None:
                chunk = encoder.compress(chunk) + encoder.flush()
            if not chunk:
                continue
            sent += len(chunk)
            if http10:
                conn._send(chunk)
            else:
                conn._send(b"%x\r\n%b\r\n" % (len(chunk), chunk))
            await conn.drain()
        if encoder is not None:
            tail = encoder.finish()
            if tail:
                sent += len(tail)
                conn._send(tail if http10 else b"%x\r\n%b\r\n" % (len(tail), tail))
        if not http10:
            conn._send(b"0\r\n\r\n")
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


async def serve_connection(sock: socket.socket, state: ServerState) -> None:
    """Serve one accepted socket until it closes; never raises."""
    loop = asyncio.get_running_loop()
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    ssl_context = state.ssl_context
    conn = Connection(state)
    try:
        if ssl_context is not None:
            await loop.connect_accepted_socket(
                lambda: conn,
                sock,
                ssl=ssl_context,
                ssl_handshake_timeout=state.cfg.tls_handshake_timeout,
            )
        else:
            await loop.connect_accepted_socket(lambda: conn, sock)
    except (OSError, ssl.SSLError, TimeoutError) as exc:
        logger.debug("connection setup failed: %s", exc)
        sock.close()
        return
    if ssl_context is not None and conn.transport is not None:
        from .tls import server_name_of

        conn.server_name = server_name_of(conn.transport.get_extra_info("ssl_object"))
    client_ip = conn.client_ip
    redis_module = state.redis_module
    try:
        while True:
            action = await exchange(conn, state, client_ip, conn.count, redis_module)
            if action != "keep-alive":
                break
    except PreforkError:
        pass
    except (OSError, RuntimeError) as exc:
        logger.debug("connection from %s ended: %s", client_ip, exc)
    except Exception:
        logger.exception("unexpected error on a connection from %s", client_ip)
    finally:
        if not conn._closing:
            conn.close()
