"""The opening handshake of a WebSocket (RFC 6455 §4.2), checked by the ``websockets`` library.

``Handshake`` takes the request prefork parsed already (method, target, fields)
and has the library's ``ServerProtocol`` check it and build the answer: the
101 with ``Sec-WebSocket-Accept`` and the negotiated extensions, or a 400 /
405 / 426 / 505 with the reason. The request is handed over as the library's
``Request`` object, not as bytes to parse again: the head was parsed once.

The ``ServerProtocol`` lives only as long as the handshake. The open
connection gets the library's base ``Protocol`` (``Session``), started in the
OPEN state with the extensions the handshake agreed: it has no handshake
parser left suspended on the request (~0.7 KiB on every idle connection).
"""

from __future__ import annotations

import asyncio
import logging
import types
import uuid
from collections.abc import Generator, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

from websockets.datastructures import Headers
from websockets.frames import Frame, Opcode
from websockets.http11 import Request
from websockets.protocol import OPEN, Protocol, Side
from websockets.server import ServerProtocol
from websockets.streams import StreamReader

from prefork import log
from prefork.apps.websocket_deflate import server_factories
from prefork.apps.websocket_reader import Reader

# The library logs "connection open/closed" at INFO for every connection: that
# is the access log's job here, so only its warnings get through.
protocol_logger = logging.getLogger(log.WORKER + ".websocket")
protocol_logger.setLevel(logging.WARNING)
# The id every session of this worker carries (see Handshake).
_SESSION_ID = uuid.uuid4()
# What a session has of extensions, and a request of subprotocols, when there
# are none, and a parked session of received events: one list for all, never
# added to.
_NONE: list[Any] = []


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


# Here rather than in ``websocket`` (which re-exports it): that module is
# compiled, and mypyc cannot compile a subclass of a built-in exception.
class WebSocketClosed(ConnectionError):
    """The WebSocket is closed: ``code`` and ``reason`` say how (1006: lost)."""

    def __init__(self, code: int, reason: str = "") -> None:
        super().__init__(f"WebSocket closed with {code}" + (f": {reason}" if reason else ""))
        self.code = code
        self.reason = reason


# The library's frame parser is a generator (``Protocol.parse``) that waits,
# between two frames, in its reader's ``at_eof``; known by its code object.
_PARSE = Protocol.parse.__code__
# Bound once: ``Opcode.CLOSE`` is a lookup through the enum class (~0.1 us),
# and recv_frame runs for every frame.
_CLOSE = Opcode.CLOSE
# How long a session that received data waits, at most, before its parser is
# dropped if it is idle (see Session). The parsers made within it are freed
# together, and their memory waits for the next ones: at 0.1 s a burst of
# messages left ~1 MiB of it (bench/ws_memory.py). Shorter costs a parser
# made again more often: at most once per period per busy connection, ~0.9 us.
PARK_AFTER_S = 0.02


class Session(Protocol):
    """The library's protocol of an open server-side connection, with three changes.

    Its parser reads from a compiled stand-in for the library's reader
    (``apps.websocket_reader``); the frames are still the library's to parse.

    A close frame in the middle of a fragmented message closes normally (RFC
    6455 §5.4: control frames may come between fragments; Autobahn case
    7.1.5); the library fails such a close with 1002.

    An idle session keeps no parser. The library's is a suspended generator
    (two frames, ~0.45 KiB) that also keeps the last frame it parsed (~0.15
    KiB), with a reader (~0.15 KiB), on every open connection. Up to
    ``PARK_AFTER_S`` after it last received data, a session whose parser
    waits for the next frame's first byte with nothing buffered lets go of
    both (``park``; the reader is then a shared empty one that nothing
    feeds); the next data (or EOF, or ``discard`` when the session fails)
    starts new ones, which are then in the very same state (the top of
    ``parse``'s loop: all its state is the protocol's attributes). A parser
    anywhere else (inside a frame, failed, or ``discard`` after the close)
    is kept. Not at once after each message: a new parser per message would
    cost ~15% of the per-message path (bench/ws_micro.py echo).
    """

    def recv_frame(self, frame: Frame) -> None:
        if frame.opcode is _CLOSE:
            self.current_size = None  # the unfinished message is abandoned
        # The base class named, not super(): ~85 ns less per frame (plain Python).
        Protocol.recv_frame(self, frame)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # This loop's sweeps, found at the first data (a Session may be made
        # outside a loop). Set here, with the library's attributes: one added
        # later would give each instance a dict of its own (~0.1 KiB, and
        # slower attribute reads).
        self.parking: _Parking | None = None
        # Nothing received yet: no parser until the first data. (The one the
        # library's __init__ started waits for the first frame: let go.)
        self.parser = None  # type: ignore[assignment]
        self.reader = _IDLE_READER
        self.events = _NONE

    def receive_data(self, data: bytes | bytearray) -> None:
        if self.parser is None:
            self._unpark()
        Protocol.receive_data(self, data)  # (as in recv_frame)
        parking = self.parking
        if parking is None:
            parking = self.parking = _parking()
            if parking is None:
                return  # no loop: parked by its owner's park() calls only
        sessions = parking.sessions
        if not sessions:  # the first since the last sweep: the next one
            parking.loop.call_later(PARK_AFTER_S, parking.sweep)
        sessions.add(self)

    def receive_eof(self) -> None:
        if self.parser is None:
            self._unpark()
        super().receive_eof()

    def discard(self) -> Generator[None]:
        # (Made by fail(), which may come while parked: it reads the reader.)
        if self.parser is None:
            self.reader = _reader()
        return super().discard()

    def park(self) -> None:
        """Let go of the parser and reader if the parser waits for a frame with nothing buffered."""
        parser = self.parser
        reader = self.reader
        if (
            isinstance(reader, Reader)
            and reader.idle  # waits in at_eof, with nothing buffered
            and isinstance(parser, types.GeneratorType)
            and parser.gi_code is _PARSE  # (not discard(), which also waits there)
        ):
            self.parser = None  # type: ignore[assignment]
            self.reader = _IDLE_READER
            if not self.events:  # (only the parser adds to it)
                self.events = _NONE

    def _unpark(self) -> None:
        self.events = []
        self.reader = _reader()
        self.parser = self.parse()
        next(self.parser)


def _reader() -> StreamReader:
    # The compiled stand-in for the library's reader (apps.websocket_reader),
    # typed as the library's: its Protocol declares that class.
    return cast(StreamReader, Reader())


# What a parked session has for a reader: empty, not at EOF, never fed.
_IDLE_READER = _reader()


class _Parking:
    """The sessions of one loop that received data since the last sweep; one timer."""

    __slots__ = ("loop", "sessions")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.sessions: set[Session] = set()

    def sweep(self) -> None:
        # Cleared, not kept: a set's table shrinks only when cleared.
        sessions, self.sessions = self.sessions, set()
        for session in sessions:
            session.park()


_last_parking: _Parking | None = None


def _parking() -> _Parking | None:
    """The running loop's (a worker runs one loop; tests run one at a time), if any."""
    global _last_parking
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return None
    if _last_parking is None or _last_parking.loop is not loop:
        _last_parking = _Parking(loop)
    return _last_parking


class _Checker(ServerProtocol):
    def select_subprotocol(self, subprotocols: Sequence[str]) -> None:
        # The app chooses when it accepts (``WebSocket.accept``). A method,
        # not the constructor's callback: that one is bound per connection.
        return None


# One checker per process and deflate setting, reused by every handshake:
# ``accept`` keeps nothing but what it negotiated for the request at hand
# (``extensions``, read at once, with no await in between), and a
# ServerProtocol per request would cost a uuid4 (a getrandom syscall) and a
# reference cycle (its parser generator) for the cyclic GC to find.
_checkers: dict[bool, _Checker] = {}


def _checker(per_message_deflate: bool) -> _Checker:
    checker = _checkers.get(per_message_deflate)
    if checker is None:
        factories = server_factories() if per_message_deflate else None
        checker = _checkers[per_message_deflate] = _Checker(
            extensions=factories, logger=protocol_logger
        )
    return checker


class Handshake:
    """The opening handshake of one request, checked, and the protocol it starts.

    ``headers``: the request's fields as (name, value) strings, repeated names
    repeated (or joined by commas, as prefork's request parser does).
    ``protocol`` is the open connection's (None when the handshake failed);
    ``response`` the 101 to send (or the rejection).
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
        checker = _checker(opts.per_message_deflate)
        fields = Headers(list(headers))
        self.protocol: Session | None = None
        if "Transfer-Encoding" in fields or not set(fields.get_all("Content-Length")) <= {"0"}:
            # What the library's own request parser refuses: a handshake has no body.
            self.response = checker.reject(400, "Failed to open a WebSocket connection.\n")
        else:
            request = Request(target, fields, method, f"HTTP/{http_version}")
            self.response = checker.accept(request)
            if self.response.status_code == 101:
                session = Session(
                    Side.SERVER,
                    state=OPEN,
                    max_size=opts.max_message_size,
                    logger=protocol_logger,
                )
                # This request's, just made; the shared checker lets go of
                # them (a deflate extension's tails). None:
                # one shared empty list (the library only reads a session's).
                if checker.extensions:
                    session.extensions, checker.extensions = checker.extensions, []
                else:
                    session.extensions = _NONE
                # The library's asyncio layer logs this id; its sans-I/O
                # protocol, all we use, never reads it: one per worker spares
                # each idle session its own UUID (~0.2 KiB).
                session.id = _SESSION_ID
                self.protocol = session
        # (The ASGI scope keeps this list: when empty, the shared one.)
        self.subprotocols: list[Any] = [
            value.strip()
            for line in fields.get_all("Sec-WebSocket-Protocol")
            for value in line.split(",")
            if value.strip()
        ] or _NONE

    @property
    def ok(self) -> bool:
        return self.protocol is not None

    def rejection(self) -> HandshakeRejected:
        resp = self.response
        kept = {k: v for k, v in resp.headers.raw_items() if k.lower() not in _HTTP_OWNED}
        return HandshakeRejected(resp.status_code, kept, bytes(resp.body))

    def accepted(self, subprotocol: str | None, extra: list[tuple[str, str]]) -> bytes:
        """The 101 response's bytes, with the chosen subprotocol and extra fields."""
        resp = self.response
        if subprotocol is not None:
            resp.headers["Sec-WebSocket-Protocol"] = subprotocol
        for name, value in extra:
            if name.lower() != "sec-websocket-protocol":  # ASGI: use ``subprotocol``
                resp.headers[name] = value
        return resp.serialize()


# Fields the HTTP layer writes itself when it sends a rejection (its
# "Connection: close" stays: after a failed upgrade the connection ends).
_HTTP_OWNED = frozenset(("date", "content-length"))


def header_pairs(headers: Mapping[str, str] | Iterable[tuple[Any, Any]] | None) -> list[Any]:
    """Extra response fields as (str, str) pairs; raises ValueError on CR, LF or NUL."""
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


_last_options: tuple[object, Options] | None = None


def options_for(cfg: Any) -> Options:
    """``Options.from_config(cfg)``, one object per config (not one per connection)."""
    global _last_options
    last = _last_options
    if last is not None and last[0] is cfg:
        return last[1]
    opts = Options.from_config(cfg)
    _last_options = (cfg, opts)
    return opts
