"""One ASGI request: the ``receive`` and ``send`` the app gets, and its response.

``http.response.start`` is kept until the first body event, so that a whole
body (``more_body`` false on the first event) goes out in one write with a
Content-Length, compressed like a native response; a body in several events
is streamed, one write per event (chunked unless the app gave a
Content-Length; close-delimited on HTTP/1.0), compressed piece by piece.
Nothing is written before the first body event, so an app that fails before
it still gets an honest 500; one that fails after the head went out has its
connection aborted, so the client sees a truncated response, never a false
complete one.

Request bodies up to ``STREAM_BODIES_OVER`` come whole in one event; larger
and chunked ones are read piece by piece (``Connection.receive_body``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Coroutine, Mapping, MutableMapping
from typing import Any, Final

from prefork import log
from prefork._types import Action
from prefork.apps.asgi_fields import cached_fields, whole_head
from prefork.apps.asgi_messages import AsgiMessageError, ClientDisconnected
from prefork.engine.batch import QUICK_HANDLER_S
from prefork.engine.connection import Connection
from prefork.engine.shared import Shared
from prefork.engine.slices import compress_in_slices
from prefork.errors import PeerGone, ProtocolError
from prefork.http import compression
from prefork.http.request import Request
from prefork.http.response import (
    CONTINUE_RESPONSE,
    LAST_CHUNK,
    bodyless_status,
    chunk,
    encode_head,
    error_response,
    negotiate,
)

monotonic: Final = time.monotonic  # (a C static when compiled: no lookup per call)

logger = logging.getLogger(log.WORKER)
app_logger = logging.getLogger(log.APP)

Message = MutableMapping[str, Any]

# Request bodies up to this size reach the app whole, in one http.request
# event; larger and chunked ones (and those behind Expect: 100-continue) are
# streamed as they arrive (Connection.receive_body).
STREAM_BODIES_OVER: Final = 64 * 1024
# A file sent with http.response.pathsend is read and written this much at a time.
PATHSEND_BLOCK: Final = 256 * 1024

_DISCONNECT: Final = {"type": "http.disconnect"}

# Where the exchange is: nothing sent yet; http.response.start received (not
# written); the head written (a streamed body); the response complete.
IDLE: Final = 0
STARTED: Final = 1
STREAMING: Final = 2
DONE: Final = 3


class Exchange:
    """One request's ``receive`` and ``send``, and the response's progress."""

    __slots__ = (
        "action",
        "app_length",
        "body_read",
        "chunked",
        "client_ip",
        "conn",
        "continued",
        "count",
        "cut",
        "done_waiter",
        "encoder",
        "given",
        "has_server",
        "head_only",
        "keep_alive",
        "lower",
        "name",
        "phase",
        "remaining",
        "req",
        "sent",
        "started",
        "status",
        "streamed",
        "text",
        "wants_close",
    )

    def __init__(
        self,
        name: str,
        conn: Connection,
        req: Request,
        count: int,
        started: float,
        client_ip: str,
    ) -> None:
        self.name = name
        self.conn = conn
        self.req = req
        self.count = count
        self.started = started
        # The client's address for the access log (a trusted proxy's word, or the peer).
        self.client_ip = client_ip
        self.phase = IDLE
        # streamed: the body comes piece by piece (Connection.receive_body);
        # body_read: all of it has reached the app (a whole body has, at once).
        self.streamed = streamed = (
            req.chunked or req.content_length > STREAM_BODIES_OVER or req.expect_continue
        )  # (protocol.streams_body, inline: this runs on every request)
        self.body_read = not streamed
        self.given = False
        self.continued = False
        self.cut = False
        self.status = 0
        self.sent = 0
        self.action: Action = "close"
        self.done_waiter: asyncio.Future[None] | None = None

    # -- receive ----------------------------------------------------------

    async def receive(self) -> dict[str, Any]:
        if not self.given:
            self.given = True
            if not self.streamed:
                return {"type": "http.request", "body": self.req.body, "more_body": False}
        if not self.body_read and self.phase != DONE:
            return await self._receive_piece()
        conn = self.conn
        if self.phase != DONE and not conn.lost:
            # Nothing more to read: the next event is the client leaving (or
            # this response ending, after which the spec says "disconnect").
            done = self.done_waiter = asyncio.get_running_loop().create_future()
            gone = asyncio.ensure_future(conn.wait_disconnect())
            try:
                await asyncio.wait((gone, done), return_when=asyncio.FIRST_COMPLETED)
            finally:
                gone.cancel()
                self.done_waiter = None
        return dict(_DISCONNECT)

    async def _receive_piece(self) -> dict[str, Any]:
        """The next piece of a streamed body."""
        conn = self.conn
        if not self.continued:
            self.continued = True
            if self.req.expect_continue and self.phase != STREAMING:
                # The app reads the body: now the client may send it (and
                # never if the app answers without reading).
                conn.send(CONTINUE_RESPONSE)
        try:
            data, more = await conn.receive_body()
        except ProtocolError as exc:
            self._refuse(exc)
            return dict(_DISCONNECT)
        except PeerGone:
            return dict(_DISCONNECT)
        if not more:
            self.body_read = True
        return {"type": "http.request", "body": data, "more_body": more}

    def _refuse(self, exc: ProtocolError) -> None:
        """The body broke a rule (too large, malformed, too slow): end the exchange."""
        conn = self.conn
        req = self.req
        logger.debug("refusing the body of %s %s: %d %s", req.method, req.path, exc.status, exc)
        if self.phase == STREAMING:
            conn.abort()
        elif self.phase != DONE:
            sent = conn.reply_error_and_close(exc)
            self.status = exc.status
            conn.shared.record(self.client_ip, req, exc.status, sent, self.started)
        self.phase = DONE
        self.cut = True
        self.action = "close"
        waiter = self.done_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- send -------------------------------------------------------------

    def __call__(self, message: Message) -> Coroutine[Any, Any, None]:
        """The exchange is the app's ``send``: no bound method made per request
        (~450 instructions with its lookup and its free), and the app's calls
        go to it directly."""
        return self.send(message)

    async def send(self, message: Message) -> None:
        conn = self.conn
        if conn.lost or self.cut:
            raise ClientDisconnected("the client has gone")
        # A dict, as the spec says messages are (another mapping is copied
        # into one): the compiled build then reads it with dict operations.
        event = message if type(message) is dict else _as_dict(message)
        kind = event.get("type")
        if type(kind) is not str:
            raise AsgiMessageError(f"message {message!r} has no type")
        phase = self.phase
        if kind == "http.response.body":
            body = event.get("body", b"")
            if type(body) is not bytes:
                if not isinstance(body, bytearray | memoryview):
                    raise AsgiMessageError(
                        f"http.response.body: body is {type(body).__name__}, not bytes"
                    )
                body = bytes(body)
            more = bool(event.get("more_body", False))
            if phase == STARTED:
                if more:
                    await self._stream(body)
                else:
                    slow = self._whole(body)
                    if slow is not None:
                        await slow
            elif phase == STREAMING:
                await self._piece(body, more)
            elif phase == IDLE:
                raise AsgiMessageError("http.response.body before http.response.start")
            else:
                raise AsgiMessageError("http.response.body after the response ended")
        elif kind == "http.response.start":
            if phase != IDLE:
                raise AsgiMessageError("http.response.start sent twice")
            self._start(event)
        elif kind == "http.response.pathsend":
            if phase != STARTED:
                raise AsgiMessageError("http.response.pathsend without http.response.start")
            await self._pathsend(event)
        elif kind == "http.response.trailers":
            raise AsgiMessageError("http.response.trailers is not supported by this server")
        else:
            raise AsgiMessageError(f"unexpected message type {kind!r} on an http scope")

    def _start(self, message: dict[str, Any]) -> None:
        status = message.get("status")
        if type(status) is not int or not 100 <= status <= 599:
            raise AsgiMessageError(f"http.response.start: bad status {status!r}")
        if 100 <= status < 200:
            # Informational answers are the server's (100 Continue); a final
            # status is what the app must send here.
            raise AsgiMessageError(f"http.response.start: {status} is not a final status")
        if message.get("trailers"):
            raise AsgiMessageError("http.response.start: trailers are not supported by this server")
        text, lower, has_server, close, length = cached_fields(message.get("headers", ()))
        self.status = status
        self.text = text
        self.lower = lower
        self.has_server = has_server
        self.wants_close = close
        self.app_length = length
        self.phase = STARTED

    def _decide_keep_alive(self) -> bool:
        conn = self.conn
        shared = conn.shared
        self.keep_alive = keep_alive = (
            self.req.keep_alive
            and not self.wants_close
            # A body the app did not read to its end: the rest is not read either.
            and self.body_read
            and self.count + 1 < shared.requests_per_connection
            and not shared.draining
            and not conn.closing
        )
        return keep_alive

    def _whole(self, body: bytes) -> Coroutine[Any, Any, None] | None:
        """The response in one write: a Content-Length, compressed if negotiated.

        Synchronous (most responses need no wait); a body to compress slice
        by slice comes back as a coroutine to await (``_whole_compressed``).
        """
        req = self.req
        status = self.status
        conn = self.conn
        shared = conn.shared
        text = self.text
        length = self.app_length
        framing: str | None
        if status < 200 or status == 204 or status == 304:  # (bodyless_status, inline)
            framing = ""
            body = b""
        elif req.method == "HEAD":
            # The app may send the body (the server drops it) or only its length.
            size = length if length is not None else len(body)
            framing = f"Content-Length: {size}\r\n" if size or length is not None else ""
            body = b""
        else:
            if length is not None and length != len(body):
                raise AsgiMessageError(f"Content-Length {length} but a body of {len(body)} bytes")
            policy = shared.policy
            if policy.enabled and len(body) >= policy.min_size:
                coding, text = negotiate(
                    policy,
                    shared.negotiated_cache,
                    req,
                    status,
                    self.lower,
                    text,
                    len(body),
                )
                if coding is not None:
                    compressed = _compress_now(shared, coding, body)
                    if compressed is None:
                        return self._whole_compressed(body, coding, text)
                    body = compressed
            framing = None  # Content-Length: len(body), in a head from whole_head
        keep_alive = self._decide_keep_alive()
        http10 = req.version == "1.0"
        if framing is None:
            head = whole_head(status, text, self.has_server, len(body), keep_alive, http10)
        else:
            head = encode_head(status, text, self.has_server, framing, keep_alive, http10)
        quick = monotonic() - self.started < QUICK_HANDLER_S  # (batched if from respond_inline)
        conn.write_response(head, body, keep_alive, quick)
        self.sent = len(body)
        self._complete()
        return None

    async def _whole_compressed(self, body: bytes, coding: str, text: str) -> None:
        """A whole body too big to compress at once: slice by slice, then written."""
        shared = self.conn.shared
        out = await compress_in_slices(coding, shared.policy.level, body, shared.compress_turn)
        shared.body_cache.put(coding, body, out)
        keep_alive = self._decide_keep_alive()
        req = self.req
        framing = f"Content-Length: {len(out)}\r\n"
        http10 = req.version == "1.0"
        head = encode_head(self.status, text, self.has_server, framing, keep_alive, http10)
        self.conn.write_response(head, out, keep_alive, False)
        self.sent = len(out)
        self._complete()

    async def _stream(self, first: bytes) -> None:
        """Write the head of a streamed body, and its first piece."""
        req = self.req
        status = self.status
        shared = self.conn.shared
        text = self.text
        length = self.app_length
        http10 = req.version == "1.0"
        self.encoder = None
        self.chunked = False
        self.remaining = -1
        keep_alive = self._decide_keep_alive()
        self.head_only = req.method == "HEAD" or bodyless_status(status)
        if self.head_only:
            framing = ""
            if length is not None and not bodyless_status(status):
                framing = f"Content-Length: {length}\r\n"
        else:
            coding = None
            if shared.policy.enabled:
                coding, text = negotiate(
                    shared.policy,
                    shared.negotiated_cache,
                    req,
                    status,
                    self.lower,
                    text,
                    length,
                )
            if coding is not None:
                self.encoder = compression.make_encoder(coding, shared.policy.level)
            if length is not None and coding is None:
                framing = f"Content-Length: {length}\r\n"
                self.remaining = length
            elif http10:
                framing = ""  # the end of the body is the end of the connection
                keep_alive = self.keep_alive = False
            else:
                framing = "Transfer-Encoding: chunked\r\n"
                self.chunked = True
        head = encode_head(status, text, self.has_server, framing, keep_alive, http10)
        self.phase = STREAMING
        await self._write(head, first, True)

    async def _piece(self, data: bytes, more: bool) -> None:
        await self._write(b"", data, more)

    async def _write(self, head: bytes, data: bytes, more: bool) -> None:
        """Frame, compress and write one body event (after ``head``); wait if the client is slow."""
        conn = self.conn
        transport = conn.transport
        if transport is None or transport.is_closing():
            # A failed write closes the transport at once, and the connection
            # hears of it a loop turn later: an app that streams without ever
            # waiting must learn now that its client has gone.
            raise ClientDisconnected("the client has gone")
        if self.head_only:
            out = head
        else:
            encoder = self.encoder
            if encoder is not None:
                data = encoder.compress(data) + encoder.flush() if data else b""
                if not more:
                    data += encoder.finish()
            if self.remaining >= 0:
                self.remaining -= len(data)
                if self.remaining < 0 or (not more and self.remaining):
                    # Bytes past (or short of) the promised length: the client
                    # must not take what it got for a whole response.
                    conn.abort()
                    raise AsgiMessageError(
                        "the body does not match its Content-Length "
                        f"({'more' if self.remaining < 0 else 'fewer'} bytes)"
                    )
            self.sent += len(data)
            if self.chunked:
                out = head + chunk(data) if data else head
                if not more:
                    out += LAST_CHUNK
            else:
                out = head + data if head else data
        if out:
            conn.send(out)
        if not more:
            self._complete()
        if conn.write_paused:
            try:
                await conn.drain()
            except PeerGone:
                raise ClientDisconnected("the client has gone") from None
        elif conn.lost:
            raise ClientDisconnected("the client has gone")

    async def _pathsend(self, message: dict[str, Any]) -> None:
        """``http.response.pathsend``: the file at ``path`` is the body."""
        path = message.get("path")
        if not isinstance(path, str):
            raise AsgiMessageError(f"http.response.pathsend: path {path!r} is not a str")
        try:
            f = open(path, "rb")  # noqa: ASYNC230, SIM115 - a local file, read in blocks; closed below
        except OSError as exc:
            raise AsgiMessageError(f"http.response.pathsend: cannot open {path!r}: {exc}") from None
        try:
            size = os.fstat(f.fileno()).st_size
            self.app_length = size  # the file's size, whatever the app said
            if size <= PATHSEND_BLOCK:
                slow = self._whole(f.read())
                if slow is not None:
                    await slow
                return
            await self._stream(f.read(PATHSEND_BLOCK))
            left = size - PATHSEND_BLOCK
            while left > 0:
                block = f.read(min(PATHSEND_BLOCK, left))
                if not block:  # the file shrank: the response cannot be completed
                    self.conn.abort()
                    raise AsgiMessageError(f"http.response.pathsend: {path!r} shrank while sent")
                left -= len(block)
                await self._piece(block, left > 0)
        finally:
            f.close()

    def _complete(self) -> None:
        """The response is out: count it, log it, say what the connection does next."""
        self.phase = DONE
        conn = self.conn
        req = self.req
        shared = conn.shared
        shared.record(self.client_ip, req, self.status, self.sent, self.started)
        if self.keep_alive:
            self.action = "keep-alive"
        else:
            conn.close_after_response(asked=not req.keep_alive)
            self.action = "close"
        waiter = self.done_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- the end of the app's call ---------------------------------------

    def returned(self) -> Action:
        """The app returned: the response must be complete."""
        phase = self.phase
        if phase == DONE:
            return self.action
        req = self.req
        if phase == STREAMING:
            app_logger.error(
                "ASGI app %s returned before finishing its response to %s %s",
                self.name,
                req.method,
                req.path,
            )
            self.conn.abort()
            return "close"
        what = "a response" if phase == IDLE else "the response body"
        app_logger.error(
            "ASGI app %s returned without sending %s to %s %s",
            self.name,
            what,
            req.method,
            req.path,
        )
        return self._send_500()

    def failed(self, exc: Exception) -> Action:
        """The app raised ``exc``."""
        req = self.req
        conn = self.conn
        if self.cut:
            return "close"  # the request was refused (413, 408...): that answer stands
        if conn.lost:
            # (Whatever the app made of ClientDisconnected: Starlette raises its own.)
            logger.debug("client %s left during %s %s", conn.client_ip, req.method, req.path)
            return "close"
        if isinstance(exc, AsgiMessageError):
            app_logger.error("ASGI app %s on %s %s: %s", self.name, req.method, req.path, exc)
        else:
            app_logger.error(
                "ASGI app %s raised on %s %s", self.name, req.method, req.path, exc_info=exc
            )
        phase = self.phase
        if phase == DONE:
            return self.action  # the response went out whole: the error is the app's business
        if phase == STREAMING:
            conn.abort()  # the head went out: only a cut connection says "incomplete"
            return "close"
        return self._send_500()

    def _send_500(self) -> Action:
        conn = self.conn
        req = self.req
        data = error_response(500, "Internal Server Error")
        if req.method == "HEAD":
            data = data[: data.index(b"\r\n\r\n") + 4]
        conn.send(data)
        self.status = 500
        conn.shared.record(self.client_ip, req, 500, 0, self.started)
        conn.graceful_close()
        self.phase = DONE
        waiter = self.done_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        return "close"


def _as_dict(message: Any) -> dict[str, Any]:
    """An app's message that is not a dict: a copy if it is a mapping, else AsgiMessageError."""
    if not isinstance(message, Mapping):
        raise AsgiMessageError(f"message {message!r} has no type")
    return dict(message)


def _compress_now(shared: Shared, coding: str, body: bytes) -> bytes | None:
    """``body`` compressed as a native response's would be (from the cache, or at
    once); None when it is big enough to be compressed slice by slice."""
    size = len(body)
    cache = shared.body_cache
    if size >= compression.CACHE_MIN_BYTES and cache.max_bytes:
        cached = cache.get(coding, body)
        if cached is not None:
            return cached
    if size > compression.SLICE_BYTES:
        return None
    out = compression.compress_body(coding, shared.policy.level, body)
    if size >= compression.CACHE_MIN_BYTES:
        cache.put(coding, body, out)
    return out
