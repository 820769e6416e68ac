"""A WebSocket session (RFC 6455) over a connection a handler took over.

The framing, the handshake checks and permessage-deflate (RFC 7692) are the
sans-I/O protocol of the ``websockets`` library (``websocket_handshake``),
but for the two commonest frames: a client's whole small message and a
server's message without extensions (``websocket_frames``). This module
moves bytes between them and a ``ConnectionLike``
(``ctx.client``) and adds what a server owes: flow control, keep-alive pings,
the close handshake and going away (1001) when the worker stops.

Flow control: bytes are read from the connection only when someone needs the
next frame (the app waiting in ``receive``, the pinger waiting for its pong,
``close`` waiting for the peer's close frame), never ahead of the app by more
than ``BUFFER_BYTES`` of whole messages; the connection itself stops reading
from the socket when its own small buffer is full. ``send`` hands each frame
to the transport at once (so frames leave in the order they were made) and
returns once the transport's buffer is below its high-water mark.

The per-message path is direct calls: no lock, task or future unless someone
must wait (a second reader, a full transport). Without an extension the
outgoing frames are built by the library's ``Frame.serialize`` rather than its
generic send path (state machine and write queue), and the last one is kept:
the same ``str``/``bytes`` object sent to many connections (a broadcast) is
framed once per worker.

Nothing here knows the HTTP engine: the ASGI layer (``websocket_asgi``) and the
native ``ctx.accept_websocket`` both build a ``Handshake`` from plain values.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import logging
import os
from collections.abc import Coroutine, Iterable, Mapping
from typing import Any, Final

from websockets.exceptions import InvalidState
from websockets.frames import CloseCode, Frame, Opcode

from prefork import log
from prefork._types import ConnectionLike
from prefork.apps.websocket_frames import BINARY, TEXT, FrameCache, take_messages
from prefork.apps.websocket_handshake import Handshake as Handshake
from prefork.apps.websocket_handshake import HandshakeRejected as HandshakeRejected
from prefork.apps.websocket_handshake import Options as Options
from prefork.apps.websocket_handshake import Session, header_pairs
from prefork.apps.websocket_handshake import WebSocketClosed as WebSocketClosed
from prefork.apps.websocket_ping import ping_wheel
from prefork.apps.websocket_reader import Reader
from prefork.errors import PreforkError

logger = logging.getLogger(log.WORKER)

# Bytes asked of the connection per read.
READ_BYTES: Final = 64 * 1024
# Whole messages the pinger may read ahead of an app that is not receiving;
# past this the peer counts as alive (it is sending) and reading stops.
BUFFER_BYTES: Final = 64 * 1024
# How long ``close`` waits for the peer's close frame before closing the TCP
# connection anyway (RFC 6455 §7.1.1 lets the server close first).
CLOSE_TIMEOUT_S: Final = 5.0
# How long the last close frame may take to leave before an abort.
ABORT_WRITE_S: Final = 1.0

# What ``_next`` does with a message or the close: return it or raise
# WebSocketClosed (``receive``), raise StopAsyncIteration at the close
# (``async for``), or wrap either in an ASGI event (``receive_event``).
_RAISE: Final = 0
_STOP: Final = 1
_EVENT: Final = 2

GOING_AWAY: Final = int(CloseCode.GOING_AWAY)
ABNORMAL: Final = int(CloseCode.ABNORMAL_CLOSURE)
# The opcodes, bound once: each ``Opcode.X`` is a lookup on the enum class
# (~0.9k instructions compiled), several per message. (TEXT and BINARY come
# from websocket_frames.)
CONT: Final = Opcode.CONT
PONG: Final = Opcode.PONG
CLOSE: Final = Opcode.CLOSE


_frames: Final = FrameCache()
# A message size limit of None (ws_max_message_size 0), for take_messages.
_NO_LIMIT: Final = 1 << 62


def _between_frames(session: Session) -> bool:
    """Whether the session's parser waits for the first byte of a frame with
    nothing buffered: parked (``Session.park``), or in ``parse``'s ``at_eof``.
    (Asked while the session is OPEN: after a close, ``discard`` waits there.)"""
    if session.parser is None:
        return True
    reader = session.reader
    return isinstance(reader, Reader) and reader.idle


class WebSocket:
    """An open WebSocket: ``await receive()``, ``await send(data)``, ``await close()``.

    ``receive`` returns ``str`` (text) or ``bytes`` (binary) messages and
    raises ``WebSocketClosed`` once the connection is closed; so does ``send``.
    ``async for message in ws`` receives until the close.
    """

    # No per-instance __dict__: one of these lives as long as its connection.
    __slots__ = (
        "_conn",
        "_decoder",
        "_done",
        "_going_away",
        "_handshake",
        "_initial",
        "_messages",
        "_opts",
        "_parts",
        "_ping_at",
        "_ping_payload",
        "_pinger",
        "_plain",
        "_proto",
        "_reading",
        "_turn",
        "_write_lock",
        "bytes_sent",
        "subprotocol",
    )

    def __init__(
        self, conn: ConnectionLike, handshake: Handshake, opts: Options, initial: bytes = b""
    ) -> None:
        """``initial``: bytes already read past the handshake request, if any."""
        proto = handshake.protocol
        if proto is None:
            raise ValueError("WebSocket of a rejected handshake")
        self._conn = conn
        self._initial = initial
        self._proto = proto
        # Data frames built here, not by the protocol (websocket_frames.FrameCache).
        self._plain = not proto.extensions
        self._handshake: Handshake | None = handshake  # until the 101 is sent
        self._opts = opts
        # Whole messages not yet received (None while there are none: an idle
        # connection holds no list).
        self._messages: list[str | bytes] | None = None
        # One coroutine reads (and parses) at a time; the others wait for its
        # turn to end on ``_turn`` (made only when someone waits).
        self._reading = False
        self._turn: asyncio.Future[None] | None = None
        # Made when the transport's buffer first fills: one waits on it at a time.
        self._write_lock: asyncio.Lock | None = None
        # A fragmented message being put together.
        self._parts: list[Any] | None = None
        self._decoder: codecs.IncrementalDecoder | None = None
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
        handshake = self._handshake
        if handshake is None:
            raise RuntimeError("WebSocket already accepted")
        extra = header_pairs(headers)  # checked before anything is sent
        self._handshake = None
        self.subprotocol = subprotocol
        conn = self._conn
        if conn.lost:
            self._finish()
            raise WebSocketClosed(ABNORMAL, "connection lost before the accept")
        conn.send(handshake.accepted(subprotocol, extra))
        conn.on_drain(self._on_drain)
        self._schedule_ping()
        initial, self._initial = self._initial, b""
        if initial:
            self._feed(initial)
        await self._drained()

    # -- receiving --------------------------------------------------------

    def receive(self) -> Coroutine[Any, Any, str | bytes]:
        """The next message; raises ``WebSocketClosed`` when the connection closed."""
        return self._next(_RAISE)

    def __aiter__(self) -> WebSocket:
        return self

    def __anext__(self) -> Coroutine[Any, Any, str | bytes]:
        # The same coroutine as ``receive``: no extra frame (or async
        # generator) lives as long as an idle connection.
        return self._next(_STOP)

    def receive_event(self) -> Coroutine[Any, Any, dict[str, Any]]:
        """The next message as an ASGI event: ``websocket.receive`` (``text`` or
        ``bytes``), or ``websocket.disconnect`` (``code``, ``reason``) once closed.

        The same coroutine as ``receive`` again: an ASGI app parked in its
        ``receive()`` keeps this one frame, not one more of the ASGI layer's
        around it (~0.25 KiB per idle connection).
        """
        return self._next(_EVENT)

    async def _next(self, mode: int) -> Any:
        conn = self._conn
        while True:
            messages = self._messages
            if messages:
                message = messages.pop(0)
                if not messages:
                    self._messages = None
                if mode == _EVENT:
                    if isinstance(message, str):
                        return {"type": "websocket.receive", "text": message}
                    return {"type": "websocket.receive", "bytes": message}
                return message
            if self._done:
                if mode == _STOP:
                    raise StopAsyncIteration
                if mode == _EVENT:
                    return {
                        "type": "websocket.disconnect",
                        "code": self.close_code,
                        "reason": self.close_reason,
                    }
                raise WebSocketClosed(self.close_code, self.close_reason)
            if self._reading:
                await self._wait_turn()
                continue
            # _read, inline: the frame a parked receive() keeps is this one.
            self._reading = True
            try:
                data = await conn.read(READ_BYTES)
            except (OSError, PreforkError):
                data = b""
            finally:
                self._end_turn()
            self._feed(data)
            if conn.write_paused:
                await self._drained()

    async def _read(self) -> None:
        """Read once from the connection and parse (or wait while another coroutine does)."""
        if self._reading:
            await self._wait_turn()
            return
        self._reading = True
        try:
            data = await self._conn.read(READ_BYTES)
        except (OSError, PreforkError):
            data = b""
        finally:
            self._end_turn()
        self._feed(data)
        await self._drained()

    async def _wait_turn(self) -> None:
        turn = self._turn
        if turn is None:
            turn = self._turn = asyncio.get_running_loop().create_future()
        # Shielded: a waiter that times out (the pinger) must not end the turn
        # of the others.
        await asyncio.shield(turn)

    def _end_turn(self) -> None:
        self._reading = False
        turn = self._turn
        if turn is not None:
            self._turn = None
            if not turn.done():
                turn.set_result(None)

    def _feed(self, data: bytes) -> None:
        """Parse ``data`` (``b""``: the end of the stream), queue whole messages,
        and send what the protocol answers (pongs, the close handshake)."""
        proto = self._proto
        if not data:
            proto.receive_eof()  # abrupt: close code 1006
            self._finish()
            return
        if proto.close_sent is None and proto.current_size is None and _between_frames(proto):
            # Whole small messages first, without the library (take_messages);
            # it parses what follows them, if anything does.
            messages = self._messages
            if messages is None:
                messages = []
            taken = take_messages(data, self._opts.max_message_size or _NO_LIMIT, messages)
            if messages:
                self._messages = messages
            if taken == len(data):
                return
            if taken:
                data = data[taken:]
        proto.receive_data(data)
        for frame in proto.events_received():
            assert isinstance(frame, Frame)  # the handshake was done by Handshake
            opcode = frame.opcode
            if frame.fin and (opcode is TEXT or opcode is BINARY):
                # A whole message in one frame, the usual case, inline. (One
                # in the middle of a fragmented message the protocol refuses.)
                if opcode is TEXT:
                    try:
                        message: str | bytes = str(frame.data, "utf-8")
                    except UnicodeDecodeError as exc:
                        self._invalid_utf8(exc)
                        break  # what the library parsed after it is not delivered
                else:
                    message = bytes(frame.data)
                self._queue(message)
            elif not self._on_frame(frame):
                break  # (as above)
        writes = proto.data_to_send()
        if writes:
            self._send_writes(writes)

    def _on_frame(self, frame: Frame) -> bool:
        """A frame other than a whole message (``_feed`` takes those); False
        when it failed the session (a fragment that is not UTF-8)."""
        opcode, data, fin = frame.opcode, frame.data, frame.fin
        if opcode is TEXT or opcode is BINARY:  # a first fragment
            self._parts = []
            text = opcode is TEXT
            self._decoder = codecs.getincrementaldecoder("utf-8")() if text else None
        elif opcode is not CONT:
            if opcode is PONG and data == self._ping_payload:
                self._ping_payload = None
            if opcode is CLOSE:
                self._parts = None  # an unfinished message is abandoned
                self._decoder = None
            return True  # PING: the protocol queued the pong; CLOSE: it answered
        parts, decoder = self._parts, self._decoder
        if parts is None:  # (the protocol refuses a CONT without a start)
            return True
        if decoder is not None:
            # Fragments are decoded as they arrive, so invalid UTF-8 fails the
            # connection at once (1007), not after the whole message.
            try:
                parts.append(decoder.decode(data, fin))
            except UnicodeDecodeError as exc:
                self._invalid_utf8(exc)
                return False
            if fin:
                self._queue("".join(parts))
        else:
            parts.append(bytes(data))
            if fin:
                self._queue(b"".join(parts))
        if fin:
            self._parts = None
            self._decoder = None
        return True

    def _invalid_utf8(self, exc: UnicodeDecodeError) -> None:
        self._proto.fail(CloseCode.INVALID_DATA, f"{exc.reason} at position {exc.start}")
        self._parts = None

    def _queue(self, message: str | bytes) -> None:
        messages = self._messages
        if messages is None:
            self._messages = [message]
        else:
            messages.append(message)

    # -- sending ----------------------------------------------------------

    async def send(self, data: str | bytes | bytearray | memoryview) -> None:
        """Send one message (``str``: text, bytes-like: binary); waits while the peer is slow."""
        if self.send_nowait(data):
            await self.wait_sent()

    def send_nowait(self, data: str | bytes | bytearray | memoryview) -> bool:
        """Hand one message to the transport now; True when the caller must then
        ``await wait_sent()`` (the peer is slow). Raises ``WebSocketClosed``.

        ``send`` is these two; a caller that sends often (the ASGI layer) calls
        them itself and skips a coroutine per message when the peer keeps up.
        """
        proto = self._proto
        # Not OPEN: a close frame was sent or received (the library sets
        # close_sent as it leaves OPEN for CLOSING, in send_close, recv_frame
        # and fail), or the stream ended (CLOSED: _done is set with it here).
        # An attribute read where ``state`` is a property (a Python call).
        if self._done or proto.close_sent is not None:
            raise WebSocketClosed(self.close_code, self.close_reason)
        conn = self._conn
        if conn.lost:
            self._lost()
            raise WebSocketClosed(self.close_code, self.close_reason)
        if self._plain:
            # A mutable buffer goes as a copy: the frame cache keys by identity.
            frame = _frames.frame_of(data if isinstance(data, (str, bytes)) else bytes(data))
            conn.send(frame)
            self.bytes_sent += len(frame)
        else:
            if isinstance(data, str):
                proto.send_text(data.encode())
            else:
                proto.send_binary(bytes(data))
            self._send_writes(proto.data_to_send())
        return conn.write_paused

    async def wait_sent(self) -> None:
        """Wait until the transport takes more (after ``send_nowait`` said so)."""
        await self._drained()
        if self._done:
            raise WebSocketClosed(self.close_code, self.close_reason)

    def _send_writes(self, chunks: list[bytes]) -> None:
        """Hand what the protocol produced to the connection; close after its EOF marker."""
        if not chunks:
            return
        data = b"".join(chunks) if len(chunks) > 1 else chunks[0]
        if data and not self._done:
            conn = self._conn
            if conn.lost:
                self._lost()
                return
            conn.send(data)
            self.bytes_sent += len(data)
        if not chunks[-1]:
            # The EOF marker: after the close handshake (or a failure) the
            # server closes the TCP connection first (RFC 6455 §7.1.1).
            self._finish()

    async def _drained(self) -> None:
        """Wait while the transport's buffer is full (one waiter at a time)."""
        conn = self._conn
        if not conn.write_paused or self._done:
            return
        lock = self._write_lock
        if lock is None:
            lock = self._write_lock = asyncio.Lock()
        async with lock:
            if conn.write_paused and not self._done:
                try:
                    await conn.drain()
                except (OSError, PreforkError):
                    self._lost()

    def _lost(self) -> None:
        self._proto.receive_eof()
        self._finish()

    # -- closing ----------------------------------------------------------

    async def start_close(self, code: int = 1000, reason: str = "") -> None:
        """Send the close frame (once); the peer's answer is read by ``receive``/``close``."""
        proto = self._proto
        if not self._done and proto.close_sent is None:
            with contextlib.suppress(InvalidState):
                proto.send_close(code, reason)
            writes = proto.data_to_send()
            if writes:
                self._send_writes(writes)
            await self._drained()

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Start (or finish) the close handshake; returns once the connection is closed."""
        await self.start_close(code, reason)
        # Wait for the peer's close frame; what it sends meanwhile is dropped.
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT_S):
                while not self._done:
                    await self._read()
                    self._messages = None
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
        proto = self._proto
        with contextlib.suppress(InvalidState):
            proto.fail(code, reason)
        data = b"".join(proto.data_to_send())
        conn = self._conn
        if data and not self._done and not conn.lost:
            conn.send(data)
            with contextlib.suppress(OSError, PreforkError, TimeoutError):
                async with asyncio.timeout(ABORT_WRITE_S):
                    await conn.drain()
        if not self._done:
            self._done = True
            conn.on_drain(None)
            conn.abort()

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
            proto = self._proto
            if proto.close_sent is not None:
                return  # closing already
            payload = os.urandom(4)
            self._ping_payload = payload
            try:
                proto.send_ping(payload)
            except InvalidState:
                return
            self._send_writes(proto.data_to_send())
            await self._drained()
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

    def _buffered(self) -> int:
        """The size of the messages not yet received (``len``: characters of a text).

        Counted here, while the pinger waits for its pong, rather than kept
        up to date on every message.
        """
        messages = self._messages
        return sum(map(len, messages)) if messages else 0

    async def _pong_within(self, seconds: float) -> bool:
        """Whether the pong (or, with an app behind, enough data) came in time."""
        try:
            async with asyncio.timeout(seconds):
                while self._ping_payload is not None and not self._done:
                    if self._buffered() >= BUFFER_BYTES:
                        return True  # the peer is sending; the app is the slow one
                    await self._read()
        except TimeoutError:
            return False
        return True
