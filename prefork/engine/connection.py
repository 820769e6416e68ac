"""One connection: the asyncio Protocol and the per-connection coroutine.

``Connection`` is fed by the event loop (``data_received``) and parses as bytes
arrive. An app interface that can (``AppInterface.inline``: a sync native
handler, an ASGI app's first step) answers complete requests from there while
the connection coroutine (``serve_connection``) is parked; otherwise that
coroutine is woken only when a whole request is there and runs the interface's
``exchange`` once per request. Reading and writing (and the write batch) and
backpressure live here, and only here; what happens when time passes (the
deadlines, the closes, the slow-client rules the worker's sweeper applies) is
the base class's, ``lifecycle.Lifecycle``.

App interfaces use the public members (``receive_request``,
``write_response``, ``send``, ``drain``, ``reply_error_and_close`` here;
``close_after_response``, ``graceful_close``, ``abort`` in ``Lifecycle``...),
never the private ones.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from typing import Any, Final

from prefork import log
from prefork.engine.app import AppInterface
from prefork.engine.lifecycle import CLOSING, HANDLING, INLINE, RECEIVING, WAITING, Lifecycle
from prefork.engine.shared import Deadline, Shared
from prefork.errors import PeerGone, ProtocolError
from prefork.http.protocol import RequestReader
from prefork.http.request import Request
from prefork.http.response import CONTINUE_RESPONSE, body_length, error_response

logger = logging.getLogger(log.WORKER)

# Unparsed input kept while a handler runs before reading is paused.
MAX_PENDING_BYTES: Final = 256 * 1024
# Pipelined requests parsed ahead of the one being answered before reading is paused.
MAX_QUEUED_REQUESTS: Final = 32
# Responses with bodies at least this big are written in two calls (no copy).
JOIN_BODY_MAX_BYTES: Final = 64 * 1024


class Connection(Lifecycle):
    """An accepted connection: the object handlers see as ``ctx.client``.

    Members for handlers that proxy: ``await read(n)``, ``await write(data)``,
    ``close()``, ``peername`` and ``server_name``.
    """

    # No per-instance __dict__: an idle keep-alive connection should cost little.
    __slots__ = (
        "_drain_waiter",
        "_eof",
        "_gone_waiter",
        "_handoff",
        "_loop",
        "_lost",
        "_pending",
        "_read_paused",
        "_reading",
        "_serves_inline",
        "_waiter",
        "_wake_on_handoff",
        "_write_paused",
        "app",
        "behind_proxy",
        "client_ip",
        "ctx",
        "peername",
        "reader",
        "server_name",
        "shared",
        "transport",
    )

    def __init__(self, shared: Shared) -> None:
        super().__init__()  # the deadline, the close, the rate rule's counts (Lifecycle)
        state = self.shared = shared
        self.app: AppInterface[Connection] = shared.app
        self.transport: asyncio.Transport | None = None
        self.reader = RequestReader(state.head_parser, state.limits, state.head_cache)
        # A handler may take the connection over after any request: keep what
        # follows a waiting request unparsed for its ctx.client.read().
        self.reader.one_ahead = True
        self.peername: tuple[str, int] | None = None
        self.server_name: str | None = None
        self.client_ip = "-"
        # The peer is a trusted proxy (forwarded_allow_ips): the app interfaces
        # take the client, scheme and host from its fields (http.forwarded).
        self.behind_proxy = False
        # The app interface's per-connection object (the native handler's ``ctx``).
        self.ctx: Any = None
        # (asyncio.get_running_loop() costs a getpid() syscall on Python 3.11.)
        self._loop = state.loop or asyncio.get_running_loop()
        self._reading = True
        self._pending = b""
        self._waiter: asyncio.Future[None] | None = None
        self._eof = False
        self._lost = False
        self._read_paused = False
        self._write_paused = False
        self._drain_waiter: asyncio.Future[None] | None = None
        self._wake_on_handoff = True  # hand_off(wake=False) defers the wake-up
        self._gone_waiter: asyncio.Future[None] | None = None
        self._handoff: object = None
        # Sync handlers are served straight from data_received while the
        # connection coroutine is parked: no wake-up per request. (Not named
        # "_inline": mypyc would name its C field __inline, a GCC keyword.)
        self._serves_inline = shared.app.inline
        # Bodies the app reads piece by piece (``receive_body``): ASGI sets
        # ``stream_bodies_over``; None (the native handler) reads them whole.
        self.reader.stream_over = shared.app.stream_bodies_over
        self.reader.fields_as_list = shared.app.fields_as_list

    # -- asyncio.Protocol -------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass
        if self.peername is None:  # not given by the accept loop
            self.set_peer(transport.get_extra_info("peername"))
        self.shared.add(self)

    def set_peer(self, peer: object) -> None:
        """Record the peer's address (a tuple from accept() or getpeername())."""
        if isinstance(peer, tuple):
            # Interned: the connections from one address share one string, so a
            # request does not touch a string of its own (see Shared.counts).
            self.peername = (sys.intern(str(peer[0])), int(peer[1]))
            self.client_ip = self.peername[0]
            self.behind_proxy = self.shared.trust.trusts(self.client_ip)

    def data_received(self, data: bytes) -> None:
        phase = self._phase
        if phase is CLOSING:
            return  # lingering: read and discard
        if not self._reading:
            self._pending += data
            if len(self._pending) > MAX_PENDING_BYTES:
                self._pause_reading()
            self._wake()
            return
        reader = self.reader
        if not self._parse(data):
            return
        if reader.requests:
            if (phase is WAITING or phase is INLINE) and self._serves_inline:
                if self._serve_inline() and reader.want_continue:
                    reader.want_continue = False
                    self.send(CONTINUE_RESPONSE)
                return
            if len(reader.requests) > MAX_QUEUED_REQUESTS:
                self._pause_reading()
            self._wake()
        else:
            self._note_received(len(data))
            if reader.want_continue:
                reader.want_continue = False
                self.send(CONTINUE_RESPONSE)
            if self._waiter is not None and phase is not WAITING and phase is not INLINE:
                self._wake()  # receive_body() waits for a piece of a streamed body
            if reader.in_body:
                if self.deadline_kind is not Deadline.BODY:
                    self._set_deadline(Deadline.BODY, self.shared.request_body_timeout)
            elif self.deadline_kind is Deadline.IDLE and reader.head_started:
                self._set_deadline(Deadline.HEADER, self.shared.request_header_timeout)

    def eof_received(self) -> bool:
        self._eof = True
        self._wake()
        self._gone()
        if self._phase is CLOSING:
            self._close_transport()
        # Keep the transport open: a client may half-close after its request
        # and still read the response (TLS cannot half-close: it closes).
        return self.shared.ssl_context is None

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        self._eof = True
        self.deadline = 0.0
        self.shared.discard(self)
        self._wake()
        self._gone()
        waiter = self._drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        if self._phase is CLOSING and self.deadline_kind is Deadline.WRITE:
            self._set_deadline(Deadline.WRITE, self.shared.response_write_timeout)
        waiter = self._drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- internals --------------------------------------------------------

    def _gone(self) -> None:
        waiter = self._gone_waiter
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

    def write_now(self, data: bytes) -> None:
        """Write ``data`` after the batched responses (the transport must be open)."""
        self._flush_batch()
        transport = self.transport
        assert transport is not None
        transport.write(data)

    def send(self, data: bytes) -> None:
        """Write ``data`` (after the batch) unless the connection is gone; never waits."""
        if self.transport is not None and not self._lost:
            self.write_now(data)

    def write_response(self, head: bytes, body: bytes, keep_alive: bool, batchable: bool) -> None:
        """Write a whole response.

        ``batchable``: the app answered quickly, so the response may wait for the
        end of the loop turn with the others answered from the protocol callback
        (``engine.batch``); a slow answer's response goes out at once, so that
        it does not hold its neighbours' responses back. Raises PeerGone.
        """
        transport = self.transport
        if transport is None or self._lost:
            raise PeerGone("connection lost before the response")
        if len(body) < JOIN_BODY_MAX_BYTES:
            # Batched only while the coroutine is parked (the inline path).
            phase = self._phase
            if batchable and keep_alive and (phase is INLINE or phase is WAITING):
                self.shared.batch.add(transport, head + body)
                return
            self.write_now(head + body)
        else:
            self.write_now(head)
            transport.write(body)

    @property
    def lost(self) -> bool:
        """The transport is gone (the peer closed or the connection was aborted)."""
        return self._lost

    @property
    def closing(self) -> bool:
        """A close was asked for: no further response may be written."""
        return self._phase is CLOSING

    @property
    def write_paused(self) -> bool:
        """The peer is not reading: ``await drain()`` before writing more."""
        return self._write_paused

    def hand_off(self, payload: object, wake: bool = True) -> None:
        """From ``AppInterface.respond_inline``: the coroutine finishes this request.

        ``payload`` is the app interface's own; its ``exchange`` gets it back
        from ``take_handoff``. ``wake=False``: the request is being answered
        elsewhere (a WSGI pool thread), so the coroutine stays parked until
        ``resume()`` (or until bytes, EOF or the loss of the peer wake it), and
        no deadline runs meanwhile, as while the coroutine answers a request:
        one wake-up of the coroutine per request instead of two.
        """
        self._handoff = payload
        self._wake_on_handoff = wake

    def resume(self) -> None:
        """Wake the coroutine parked after ``hand_off(payload, wake=False)``."""
        self._wake()

    def reply_error_and_close(self, exc: ProtocolError) -> int:
        """Send the error response for ``exc`` and close; returns the body bytes sent."""
        data = error_response(exc.status, str(exc), exc.method)
        self.send(data)
        self.graceful_close()
        return body_length(data)

    def reject(self, exc: ProtocolError) -> None:
        """Refuse a request that could not be read (``exc``: its 4xx) and close;
        logged at debug and counted in the access log and metrics as a request."""
        logger.debug("rejecting request from %s: %d %s", self.client_ip, exc.status, exc)
        sent = self.reply_error_and_close(exc)
        self.shared.access.record(self.client_ip, None, exc.status, sent, time.monotonic())

    def take_handoff(self) -> object:
        """What ``hand_off`` left (None if nothing), once."""
        handoff = self._handoff
        self._handoff = None
        self._wake_on_handoff = True
        return handoff

    def resume_inline(self) -> None:
        """After ``hand_off(payload, wake=False)``, answered elsewhere and taken back
        (``take_handoff``) before the coroutine woke: go on from the protocol
        callback as if ``respond_inline`` had answered, parsing what came
        meanwhile; the coroutine stays parked (one wake-up less per request)."""
        data, self._pending = self._pending, b""
        self._resume_reading()
        reader = self.reader
        if data and not self._parse(data):
            return
        if reader.paused and not reader.requests and not self._resume_parsing():
            return  # (a request pipelined behind is parsed once the one before is answered)
        if self._write_paused:  # the coroutine drains first (receive_request)
            self._wake()
            return
        self._reading = True
        if self._serve_inline() and reader.want_continue:
            reader.want_continue = False
            self.send(CONTINUE_RESPONSE)

    def _serve_inline(self) -> bool:
        """Answer complete requests from the protocol callback (``AppInterface.inline``).

        Returns True when all were answered and the connection waits for more;
        False when the coroutine was woken to take over (or the connection closes).
        """
        reader = self.reader
        respond = self.shared.respond_inline
        self._phase = INLINE
        while reader.requests and self._phase is not CLOSING:
            if not respond(self, reader.take()):
                break  # closing, or handed to the coroutine
            if self._write_paused:
                break
            if reader.paused and not self._resume_parsing():
                break
        else:
            if self._phase is CLOSING:
                return False
            self._phase = WAITING
            self._rx_at = 0.0  # the requests answered: what arrives next is timed afresh
            if reader.in_body:
                self._set_deadline(Deadline.BODY, self.shared.request_body_timeout)
            elif reader.head_started:
                self._set_deadline(Deadline.HEADER, self.shared.request_header_timeout)
            else:
                now = self._loop.time()
                shared = self.shared
                if now >= shared.idle_deadline_until:
                    shared.refresh_idle_deadline(now)
                self.deadline_kind = Deadline.IDLE
                self.deadline = shared.idle_deadline
            return True
        # The coroutine takes over (the phase stays INLINE until it runs): until
        # it runs, bytes that arrive (libuv may deliver two reads in one loop
        # turn) wait in ``_pending``, so no later request is answered, nor a
        # 100 Continue sent, before this one.
        self._reading = False
        if self._wake_on_handoff:
            self._wake()
        else:
            self._clear_deadline()  # answered elsewhere, as if by the coroutine
        return False

    def _resume_parsing(self) -> bool:
        """Parse what followed an Upgrade request; False (and woken) on a bad request."""
        return self._parse(None)

    def _parse(self, data: bytes | None) -> bool:
        """Feed ``data`` to the reader (None: go on after an Upgrade request);
        False (and the coroutine woken to answer the error) on a bad request."""
        try:
            if data is None:
                self.reader.resume()
            else:
                self.reader.feed(data)
        except ProtocolError as exc:
            self._error = exc
            self._wake()
            return False
        return True

    async def receive_request(self, count: int) -> Request | None:
        """The next whole request; None when the inline path handed one over
        (``take_handoff``) or answered one and closed (``count``: requests
        answered before this call).

        Raises ProtocolError or PeerGone.

        The checks come in the order of the phases (``lifecycle.Phase``), each
        of which may have ended while the coroutine was parked or draining:

        1. INLINE, handed over: the inline path took a request and left it to
           the coroutine (``hand_off``): nothing queued behind it may overtake it.
        2. CLOSING: a response said "close" (perhaps from the inline path): what
           was pipelined behind it is never answered, so this comes before any
           queued request.
        3. The response of the previous request is still going out: wait
           (``drain``) before answering more, so a client that does not read
           cannot make us queue responses; the drain may end in CLOSING.
        4. HANDLING: a request is complete (parsing resumed first after an
           Upgrade request the app declined): it is answered before any error
           or EOF that followed it, as a client that pipelined it expects.
        5. A request failed to parse: its error, once the requests before it
           were answered.
        6. Bytes that came while a request was answered (``_pending``): parse
           them and look again from the top.
        7. EOF, or a close since step 2: a request cut short is a 400 (the
           reader's ``eof``), else the peer is gone.
        8. WAITING: nothing to do until bytes arrive: send a 100 Continue if
           asked, arm the deadline (the header, body or idle timeout) and park.
        """
        reader = self.reader
        if self._phase is not CLOSING:
            self._phase = RECEIVING
        while True:
            if self._handoff is not None:
                if self._phase is not CLOSING:
                    self._phase = HANDLING
                self._reading = False
                self._clear_deadline()
                return None
            if self._phase is CLOSING:
                if self.count > count:
                    return None  # the usual end of a Connection: close request
                raise PeerGone("connection closing")
            if self._write_paused:
                await self.drain()
            if reader.paused and not reader.requests:
                self._resume_parsing()
            if reader.requests:
                req = reader.take()
                self._reading = False
                if not self.closing:  # (the drain above may have ended in CLOSING)
                    self._phase = HANDLING
                self._clear_deadline()
                if self._read_paused and len(reader.requests) <= MAX_QUEUED_REQUESTS:
                    self._resume_reading()
                return req
            if self._take_input("connection closed by peer"):
                continue
            self._reading = True
            if reader.want_continue:
                reader.want_continue = False
                self.send(CONTINUE_RESPONSE)
            if self.deadline_kind is Deadline.NONE:
                if reader.in_body:
                    self._set_deadline(Deadline.BODY, self.shared.request_body_timeout)
                elif count == 0 or reader.head_started:
                    self._set_deadline(Deadline.HEADER, self.shared.request_header_timeout)
                else:
                    self._set_deadline(Deadline.IDLE, self.shared.keepalive_idle_timeout)
            waiter = self._waiter = self._loop.create_future()
            # Parked. A request the inline path handed over (step 1) and that
            # this loop has not taken yet keeps it counted as answered: INLINE.
            self._phase = INLINE if self._phase is HANDLING else WAITING
            try:
                await waiter
            finally:
                self._waiter = None
                phase = self._phase
                if phase is WAITING:
                    self._phase = RECEIVING
                elif phase is INLINE:
                    self._phase = HANDLING

    def _take_input(self, gone: str) -> bool:
        """Feed the reader what waits in ``_pending`` or, at the end of the stream,
        its EOF: True when there is something to look at again, False when
        the caller must wait for the peer. Raises the reader's error, or
        PeerGone(``gone``) once the stream has ended."""
        if self._error is not None:
            raise self._error
        if self._pending:
            data, self._pending = self._pending, b""
            self._resume_reading()
            try:
                self.reader.feed(data)
            except ProtocolError as exc:
                self._error = exc
            return True
        closing = self._phase is CLOSING
        if self._eof or closing:
            if not self._lost and not closing:
                try:
                    self.reader.eof()
                except ProtocolError as exc:
                    self._error = exc
                    return True
            raise PeerGone(gone)
        return False

    async def receive_body(self) -> tuple[bytes, bool]:
        """The next piece of the streamed body of the request being answered, and
        whether more follows (``RequestReader.stream_over``).

        Flow control: between calls nothing is parsed and what arrives waits
        in ``_pending``, whose bound pauses reading the socket, so a client
        cannot send faster than the app reads. Raises ProtocolError (413 for
        a chunked body past max_body_size, 400, 408) or PeerGone.
        """
        reader = self.reader
        while True:
            data = reader.take_body()
            if data or reader.body_done:
                self._reading = False
                self._clear_deadline()
                return data, not reader.body_done
            if self._take_input("connection closed inside a request body"):
                continue
            self._reading = True
            self._resume_reading()
            if self.deadline_kind is Deadline.NONE:
                self._set_deadline(Deadline.BODY, self.shared.request_body_timeout)
            waiter = self._waiter = self._loop.create_future()
            try:
                await waiter
            finally:
                self._waiter = None

    async def wait_disconnect(self) -> None:
        """Return once the peer has gone (closed its side, or the connection was lost).

        For app interfaces that report a disconnect while the app runs (ASGI
        ``http.disconnect``); it consumes nothing the peer sent.
        """
        if self._eof or self._lost:
            return
        waiter = self._gone_waiter
        if waiter is None:
            waiter = self._gone_waiter = self._loop.create_future()
        await asyncio.shield(waiter)

    async def drain(self) -> None:
        """Wait while the transport's buffer is full, at most ``response_write_timeout``."""
        if not self._write_paused:
            return
        if self._lost:
            raise PeerGone("connection lost")
        self._set_deadline(Deadline.WRITE, self.shared.response_write_timeout)
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

    def end_http(self) -> None:
        """No HTTP request follows (the connection became a WebSocket): the
        reader's leftover moves to ``read``'s input, the reader goes (~0.3 KiB)."""
        self._take_unparsed()
        self.reader = self.shared.spent_reader

    def _take_unparsed(self) -> None:  # what the reader holds past the last head: read()'s
        leftover = self.reader.take_unparsed()
        if leftover:
            self._pending = leftover + self._pending

    async def read(self, n: int) -> bytes:
        """Up to ``n`` bytes: first what was buffered past the request; ``b""`` at EOF."""
        self._take_unparsed()
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
        self.write_now(data)
        await self.drain()

    def close(self) -> None:
        """Close the connection (after what was written is flushed)."""
        self._close_transport()
