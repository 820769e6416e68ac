"""A WebSocket session (RFC 6455) over a connection a handler took over.

The framing, the handshake checks and permessage-deflate (RFC 7692) are the
sans-I/O ``ServerProtocol`` of the ``websockets`` library; this module only
moves bytes between it and a ``ConnectionLike`` (``ctx.client``) and adds what
a server owes: flow control, keep-alive pings, the close handshake and going
away (1001) when the worker stops.

Flow control: bytes are read from the connection only when someone needs the
next frame (the app waiting in ``receive``, the pinger waiting for its pong,
``close`` waiting for the peer's close frame), never ahead of the app by more
than ``BUFFER_BYTES`` of whole messages; the connection itself stops reading
from the socket when its own small buffer is full. ``send`` returns once the
frame is handed to a transport whose buffer is below its high-water mark.

Nothing here knows the HTTP engine: the ASGI layer (``websocket_asgi``) and the
native ``ctx.accept_websocket`` both build a ``Handshake`` from plain values.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from websockets.datastructures import Headers
from websockets.exceptions import InvalidState
from websockets.extensions.permessage_deflate import enable_server_permessage_deflate
from websockets.frames import CloseCode, Frame, Opcode
from websockets.http11 import Request, Response
from websockets.server import ServerProtocol

from prefork import log
from prefork._types import ConnectionLike
from prefork.apps.websocket_ping import ping_wheel
from prefork.errors import PreforkError

logger = logging.getLogger(log.WORKER)
# The library logs "connection open/closed" at INFO for every connection: that
# is the access log's job here, so only its warnings get through.
_protocol_logger = logging.getLogger(log.WORKER + ".websocket")
_protocol_logger.setLevel(logging.WARNING)

# Bytes asked of the connection per read.
READ_BYTES = 64 * 1024
# Whole messages the pinger may read ahead of an app that is not receiving;
# past this the peer counts as alive (it is sending) and reading stops.
BUFFER_BYTES = 64 * 1024
# How long ``close`` waits for the peer's close frame before closing the TCP
# connection anyway (RFC 6455 §7.1.1 lets the server close first).
CLOSE_TIMEOUT_S = 5.0
# How long the last close frame may take to leave before an abort.
ABORT_WRITE_S = 1.0

GOING_AWAY = int(CloseCode.GOING_AWAY)
ABNORMAL = int(CloseCode.ABNORMAL_CLOSURE)


@dataclass(frozen=True, slots=True)
class Options:
    """The ``ws_*`` config keys (0 or None turns the pings off)."""

    max_message_size: int | None = 16 * 1024 * 1024
    ping_interval: float | None = 20.0
    ping_timeout: float | None = 20.0
    per_message_deflate: bool = True

    @classmethod
    def from_config(cls, cfg: Any) -> Options:
        """From a ``Config`` or any object or mapping with the ``ws_*`` keys."""

        def get(name: str) -> Any:
            return cfg[name] if isinstance(cfg, Mapping) else getattr(cfg, name)

        return cls(
            max_message_size=get("ws_max_message_size") or None,
            ping_interval=get("ws_ping_interval") or None,
            ping_timeout=get("ws_ping_timeout") or None,
            per_message_deflate=bool(get("ws_per_message_deflate")),
        )


class WebSocketClosed(ConnectionError):
    """The WebSocket is closed: ``code`` and ``reason`` say how (1006: lost)."""

    def __init__(self, code: int, reason: str = "") -> None:
        super().__init__(f"WebSocket closed with {code}" + (f": {reason}" if reason else ""))
        self.code = code
        self.reason = reason


class HandshakeRejected(Exception):
    """The request is not a valid WebSocket handshake; nothing was sent yet.

    ``result`` is a native handler's answer for it: ``return exc.result``.
    """

    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        super().__init__(f"WebSocket handshake rejected with {status}: {body.decode().strip()}")
        self.status = status
        self.headers = headers
        self.body = body

    @property
    def result(self) -> tuple[bytes, int, dict[str, str]]:
        return self.body, self.status, self.headers


class _ServerProtocol(ServerProtocol):
    """``ServerProtocol``, but a close frame in the middle of a fragmented message
    closes normally (RFC 6455 §5.4: control frames may come between fragments;
    Autobahn case 7.1.5). The library fails such a close with 1002."""

    def recv_frame(self, frame: Frame) -> None:
        if frame.opcode is Opcode.CLOSE:
            self.current_size = None  # the unfinished message is abandoned
        super().recv_frame(frame)

    def select_subprotocol(self, subprotocols: Sequence[str]) -> None:
        # The app chooses when it accepts (see ``WebSocket.accept``). A method,
        # not the constructor's callback: that one is bound per connection.
        return None


class Handshake:
    """The opening handshake of one request, checked, and the protocol it starts.

    ``headers``: the request's fields as (name, value) strings, repeated names
    repeated (or joined by commas, as prefork's request parser does).
    """

    __slots__ = ("protocol", "response", "subprotocols")

    def __init__(
        self,
        method: str,
        target: str,
        headers: Iterable[tuple[str, str]],
        opts: Options,
        http_version: str = "1.1",
    ) -> None:
        extensions = enable_server_permessage_deflate(None) if opts.per_message_deflate else None
        self.protocol = _ServerProtocol(
            extensions=extensions,
            max_size=opts.max_message_size,
            logger=_protocol_logger,
        )
        fields = Headers(list(headers))
        request = Request(target, fields, method, f"HTTP/{http_version}")
        # The protocol starts by parsing the request's bytes: give it the head
        # prefork parsed already, so its state is the one after a handshake
        # request and what follows is read as frames.
        self.protocol.receive_data(request.serialize())
        events = self.protocol.events_received()
        if events and isinstance(events[0], Request):
            self.response = self.protocol.accept(events[0])
            # The library's parser keeps the request for the connection's
            # life: its header fields are not needed any more (~1 KiB).
            events[0].headers.clear()
        else:  # not a request it can read (e.g. non-ASCII target)
            self.response = self.protocol.reject(400, "Failed to open a WebSocket connection.\n")
        self.subprotocols = [
            value.strip()
            for line in fields.get_all("Sec-WebSocket-Protocol")
            for value in line.split(",")
            if value.strip()
        ]

    @property
    def ok(self) -> bool:
        return self.response.status_code == 101

    def rejection(self) -> HandshakeRejected:
        resp = self.response
        kept = {k: v for k, v in resp.headers.raw_items() if k.lower() not in _HTTP_OWNED}
        return HandshakeRejected(resp.status_code, kept, bytes(resp.body))


# Fields the HTTP layer writes itself when it sends a rejection (its
# "Connection: close" stays: after a failed upgrade the connection ends).
_HTTP_OWNED = frozenset(("date", "content-length"))


def _header_pairs(headers: Mapping[str, str] | Iterable[tuple[Any, Any]] | None) -> list[Any]:
    if headers is None:
        return []
    items = headers.items() if isinstance(headers, Mapping) else headers
    out = []
    for name, value in items:
        n = name.decode("latin-1") if isinstance(name, bytes) else str(name)
        v = value.decode("latin-1") if isinstance(value, bytes) else str(value)
        if any(c in n + v for c in "\r\n\0"):
            raise ValueError(f"response header {n!r} contains CR, LF or NUL")
        out.append((n, v))
    return out


class WebSocket:
    """An open WebSocket: ``await receive()``, ``await send(data)``, ``await close()``.

    ``receive`` returns ``str`` (text) or ``bytes`` (binary) messages and
    raises ``WebSocketClosed`` once the connection is closed; so does ``send``.
    ``async for message in ws`` receives until the close.
    """

    # No per-instance __dict__: one of these lives as long as its connection.
    __slots__ = (
        "_buffered",
        "_conn",
        "_decoder",
        "_done",
        "_going_away",
        "_initial",
        "_messages",
        "_opts",
        "_parts",
        "_ping_at",
        "_ping_payload",
        "_pinger",
        "_proto",
        "_reader",
        "_response",
        "_text",
        "_writer",
        "bytes_sent",
        "subprotocol",
    )

    def __init__(
        self, conn: ConnectionLike, handshake: Handshake, opts: Options, initial: bytes = b""
    ) -> None:
        """``initial``: bytes already read past the handshake request, if any."""
        self._conn = conn
        self._initial = initial
        self._proto = handshake.protocol
        self._response: Response | None = handshake.response
        self._opts = opts
        # Rarely more than one message: a list, not a deque (whose first block
        # costs 600 bytes on every idle connection).
        self._messages: list[str | bytes] = []
        self._buffered = 0
        self._reader = asyncio.Lock()  # one read (and its parse) at a time
        self._writer = asyncio.Lock()  # one write (and its backpressure wait) at a time
        self._parts: list[Any] = []
        self._decoder: codecs.IncrementalDecoder | None = None
        self._text = False
        self._ping_payload: bytes | None = None
        # Between pings only a deadline on the loop's shared wheel (no task,
        # no timer: an idle connection stays small).
        self._ping_at: float | None = None
        self._pinger: asyncio.Task[None] | None = None
        self._going_away: asyncio.Task[None] | None = None
        self._done = False
        self.subprotocol: str | None = None
        self.bytes_sent = 0  # payload and framing after the 101

    # -- opening ----------------------------------------------------------

    async def accept(
        self,
        subprotocol: str | None = None,
        headers: Mapping[str, str] | Iterable[tuple[Any, Any]] | None = None,
    ) -> None:
        """Send the 101 response, with the chosen subprotocol and extra headers."""
        resp = self._response
        if resp is None:
            raise RuntimeError("WebSocket already accepted")
        extra = _header_pairs(headers)  # checked before anything is sent
        self._response = None
        if subprotocol is not None:
            resp.headers["Sec-WebSocket-Protocol"] = subprotocol
        for name, value in extra:
            if name.lower() != "sec-websocket-protocol":  # ASGI: use ``subprotocol``
                resp.headers[name] = value
        self.subprotocol = subprotocol
        self._proto.send_response(resp)
        await self._flush()
        self._conn.on_drain(self._on_drain)
        self._schedule_ping()

    # -- receiving --------------------------------------------------------

    async def receive(self) -> str | bytes:
        """The next message; raises ``WebSocketClosed`` when the connection closed."""
        while not self._messages:
            if self._done:
                raise WebSocketClosed(self.close_code, self.close_reason)
            async with self._reader:
                if not self._messages and not self._done:
                    await self._read_once()
        message = self._messages.pop(0)
        self._buffered -= len(message)
        return message

    def __aiter__(self) -> WebSocket:
        return self

    async def __anext__(self) -> str | bytes:
        # ``receive`` again rather than an async generator around it: that
        # object (~200 bytes) would live as long as an idle connection.
        while not self._messages:
            if self._done:
                raise StopAsyncIteration
            async with self._reader:
                if not self._messages and not self._done:
                    await self._read_once()
        message = self._messages.pop(0)
        self._buffered -= len(message)
        return message

    async def _read_once(self) -> None:
        """Read once from the connection, parse, queue whole messages, answer pings."""
        data, self._initial = self._initial, b""
        if not data:
            try:
                data = await self._conn.read(READ_BYTES)
            except (OSError, PreforkError):
                data = b""
        proto = self._proto
        if data:
            proto.receive_data(data)
            for frame in proto.events_received():
                assert isinstance(frame, Frame)  # the request was parsed in Handshake
                self._on_frame(frame.opcode, frame.data, frame.fin)
        else:
            proto.receive_eof()  # abrupt: close code 1006
            self._finish()
            return
        await self._flush()

    def _on_frame(self, opcode: Opcode, data: bytes | bytearray | memoryview, fin: bool) -> None:
        if opcode is Opcode.TEXT or opcode is Opcode.BINARY:
            self._text = opcode is Opcode.TEXT
            if fin:
                if self._text:
                    self._decode(data, final=True, whole=True)
                else:
                    self._queue(bytes(data))
                return
            self._parts = []
            self._decoder = codecs.getincrementaldecoder("utf-8")() if self._text else None
        elif opcode is not Opcode.CONT:
            if opcode is Opcode.PONG and data == self._ping_payload:
                self._ping_payload = None
            if opcode is Opcode.CLOSE:
                self._parts = []  # an unfinished message is abandoned
                self._decoder = None
            return  # PING: the protocol queued the pong; CLOSE: it answered
        if self._text:
            self._decode(data, final=fin, whole=False)
        else:
            self._parts.append(bytes(data))
            if fin:
                self._queue(b"".join(self._parts))
        if fin:
            self._parts = []
            self._decoder = None

    def _decode(self, data: bytes | bytearray | memoryview, final: bool, whole: bool) -> None:
        # Fragments are decoded as they arrive, so invalid UTF-8 fails the
        # connection at once (1007), not after the whole message.
        try:
            if whole:
                self._queue(bytes(data).decode("utf-8"))
                return
            assert self._decoder is not None
            self._parts.append(self._decoder.decode(data, final))
        except UnicodeDecodeError as exc:
            self._proto.fail(CloseCode.INVALID_DATA, f"{exc.reason} at position {exc.start}")
            self._parts = []
            return
        if final:
            self._queue("".join(self._parts))

    def _queue(self, message: str | bytes) -> None:
        self._messages.append(message)
        self._buffered += len(message)

    # -- sending ----------------------------------------------------------

    async def send(self, data: str | bytes | bytearray | memoryview) -> None:
        """Send one message (``str``: text, bytes-like: binary); waits while the peer is slow."""
        try:
            if isinstance(data, str):
                self._proto.send_text(data.encode("utf-8"))
            else:
                self._proto.send_binary(bytes(data))
        except InvalidState:
            raise WebSocketClosed(self.close_code, self.close_reason) from None
        await self._flush()
        if self._done:
            raise WebSocketClosed(self.close_code, self.close_reason)

    async def _flush(self) -> None:
        """Write what the protocol produced, in order; close after its EOF marker."""
        writer = self._writer
        if not writer.locked():
            # Nobody waits on backpressure: take the data now (usually none
            # after a read), and the lock only when there is something to write.
            chunks = self._proto.data_to_send()
            if chunks:
                async with writer:
                    await self._write(chunks)
            return
        async with writer:
            await self._write(self._proto.data_to_send())

    async def _write(self, chunks: list[bytes]) -> None:
        if not chunks:
            return
        data = b"".join(chunks) if len(chunks) > 1 else chunks[0]
        if data and not self._done:
            try:
                await self._conn.write(data)
                self.bytes_sent += len(data)
            except (OSError, PreforkError):
                self._proto.receive_eof()
                self._finish()
                return
        if not chunks[-1]:
            # The EOF marker: after the close handshake (or a failure) the
            # server closes the TCP connection first (RFC 6455 §7.1.1).
            self._finish()

    # -- closing ----------------------------------------------------------

    async def start_close(self, code: int = 1000, reason: str = "") -> None:
        """Send the close frame (once); the peer's answer is read by ``receive``/``close``."""
        if not self._done and self._proto.close_sent is None:
            with contextlib.suppress(InvalidState):
                self._proto.send_close(code, reason)
            await self._flush()

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Start (or finish) the close handshake; returns once the connection is closed."""
        await self.start_close(code, reason)
        # Wait for the peer's close frame; what it sends meanwhile is dropped.
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT_S):
                while not self._done:
                    async with self._reader:
                        if not self._done:
                            await self._read_once()
                    self._messages.clear()
                    self._buffered = 0
        except TimeoutError:
            self._finish()

    @property
    def closed(self) -> bool:
        return self._done

    @property
    def close_code(self) -> int:
        """The peer's close code (1005 if it gave none); else ours; 1006 if none was sent."""
        proto = self._proto
        if proto.close_rcvd is not None:
            return int(proto.close_rcvd.code)
        if proto.close_sent is not None:
            return int(proto.close_sent.code)
        return ABNORMAL

    @property
    def close_reason(self) -> str:
        proto = self._proto
        frame = proto.close_rcvd or proto.close_sent
        return frame.reason if frame is not None else ""

    def _finish(self) -> None:
        """The session is over: close the TCP connection (flushing), stop the pinger."""
        if self._done:
            return
        self._done = True
        self._conn.on_drain(None)
        self._conn.close()
        if self._ping_at is not None:
            ping_wheel().discard(self, self._ping_at)
            self._ping_at = None
        pinger = self._pinger
        if pinger is not None and pinger is not asyncio.current_task():
            pinger.cancel()

    async def _abort(self, code: int, reason: str) -> None:
        """Fail the connection: a close frame if it can leave soon, then cut it."""
        with contextlib.suppress(InvalidState):
            self._proto.fail(code, reason)
        chunks = [c for c in self._proto.data_to_send() if c]
        if chunks and not self._done:
            with contextlib.suppress(OSError, PreforkError, TimeoutError):
                async with asyncio.timeout(ABORT_WRITE_S):
                    await self._conn.write(b"".join(chunks))
        if not self._done:
            self._done = True
            self._conn.on_drain(None)
            self._conn.abort()

    def _on_drain(self) -> None:
        """The worker is stopping: close with 1001 so the client reconnects elsewhere."""
        if self._going_away is None and not self._done:
            self._going_away = asyncio.create_task(self.close(GOING_AWAY, "server shutting down"))

    # -- keep-alive -------------------------------------------------------

    def _schedule_ping(self) -> None:
        interval = self._opts.ping_interval
        if interval and not self._done:
            self._ping_at = ping_wheel().add(self, interval)

    def ping_due(self) -> None:
        self._ping_at = None
        if not self._done:
            self._pinger = asyncio.create_task(self._ping())

    async def _ping(self) -> None:
        """Send one ping; fail the connection (1011) when its pong is late."""
        try:
            if self._proto.close_sent is not None:
                return  # closing already
            payload = os.urandom(4)
            self._ping_payload = payload
            try:
                self._proto.send_ping(payload)
            except InvalidState:
                return
            await self._flush()
            timeout = self._opts.ping_timeout
            if timeout and not await self._pong_within(timeout):
                logger.debug("WebSocket ping timeout: closing with 1011")
                await self._abort(CloseCode.INTERNAL_ERROR, "keepalive ping timeout")
                return
            self._schedule_ping()
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("WebSocket keep-alive failed")
        finally:
            if self._pinger is asyncio.current_task():
                self._pinger = None

    async def _pong_within(self, seconds: float) -> bool:
        """Whether the pong (or, with an app behind, enough data) came in time."""
        try:
            async with asyncio.timeout(seconds):
                while self._ping_payload is not None and not self._done:
                    if self._buffered >= BUFFER_BYTES:
                        return True  # the peer is sending; the app is the slow one
                    async with self._reader:
                        if self._ping_payload is not None and not self._done:
                            await self._read_once()
        except TimeoutError:
            return False
        return True
