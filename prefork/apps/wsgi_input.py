"""``wsgi.input`` over a streamed request body: read from a pool thread, piece by piece.

Bodies bigger than ``STREAM_BODIES_OVER``, chunked ones and those behind
``Expect: 100-continue`` are not read before the app is called (the rule ASGI
follows too, ``http.protocol.streams_body``). ``StreamedInput`` asks the
event loop for the next piece (``Connection.receive_body``) only when the app
reads past what it holds, so while the app is not reading nothing is parsed,
the connection stops reading its socket once its small buffer is full, and
TCP flow control holds the client back: whatever its size, a body costs the
worker a piece at a time (what the socket delivered while the loop waited
for it: 256 KiB and up, more from a fast client on loopback).

Reads follow PEP 3333 and ``io.BufferedReader``: ``read(n)`` returns ``n``
bytes unless the body ends first, ``read()`` the rest, ``b""`` at the end
(``wsgi.input_terminated``). A body that cannot be read to its end makes
every read raise an ``InputError`` (an ``OSError``): ``ClientDisconnected``
when the client left, else the status the server answered with (413 for a
chunked body past ``max_body_size``, 408 for a body that stopped coming).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from prefork.engine.connection import Connection
    from prefork.http.request import Request

# Streamed: bodies over this size (as for ASGI apps), chunked bodies, and
# bodies behind ``Expect: 100-continue``; smaller ones are read whole first.
STREAM_BODIES_OVER = 64 * 1024
# A chunked body (without Expect) is read ahead by the loop up to this much
# before the app is called: one that ends by then reaches the app whole with
# a CONTENT_LENGTH, as apps that read CONTENT_LENGTH bytes (Django, many raw
# apps) need; a longer one is streamed from there, without CONTENT_LENGTH.
CHUNKED_WHOLE_UP_TO = 1024 * 1024


class InputError(OSError):
    """``wsgi.input`` cannot be read to the end of the body.

    ``status``: the response the server sent instead of the app's (413, 400,
    408), or 0 when the client left. The app's response is not sent.
    """

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


class ClientDisconnected(InputError, ConnectionError):
    """The client closed the connection before the end of the body it announced."""


class BodySource(Protocol):
    """Where the pieces come from (``wsgi.WsgiApp``): waits for the loop's answer."""

    def receive_piece(self, body: StreamedInput) -> tuple[bytes, bool]:
        """The next piece and whether more follows; raises InputError."""
        ...


class StreamedInput:
    """``wsgi.input`` of a streamed body; used from the app's thread only."""

    __slots__ = (
        "_buf",
        "_error",
        "_more",
        "_pos",
        "_source",
        "conn",
        "continued",
        "cut",
        "head_sent",
        "req",
    )

    def __init__(
        self,
        source: BodySource,
        conn: Connection,
        req: Request,
        first: bytes = b"",
        more: bool = True,
    ) -> None:
        self._source = source
        self.conn = conn
        self.req = req
        self._buf = first  # what the app has not read yet starts at _pos
        self._pos = 0
        self._more = more  # pieces still to come from the connection
        self._error: InputError | None = None
        # Set by wsgi_call.Call once the response head was handed to the loop:
        # a 100 Continue must not follow it, nor a 413 replace it.
        self.head_sent = False
        # The client was told to send the body (100 Continue) or needed no telling.
        self.continued = not req.expect_continue
        # The body failed (InputError): the loop answered or cut the connection.
        self.cut = False

    @property
    def complete(self) -> bool:
        """Every byte of the body has come off the connection (so it may be kept alive)."""
        return not self._more and self._error is None

    def _fetch(self) -> bytes:
        """The next piece from the loop; ``b""`` once the body has ended."""
        if self._error is not None:
            raise self._error
        if not self._more:
            return b""
        try:
            data, self._more = self._source.receive_piece(self)
        except InputError as exc:
            self._error = exc
            self._more = False
            self.cut = True
            raise
        return data

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            return self._read_all()
        buf = self._buf
        pos = self._pos
        end = pos + size
        if end <= len(buf):  # the usual read: from what is here
            self._pos = end
            return buf[pos:end]
        parts = [buf[pos:]]
        want = end - len(buf)
        self._buf = b""
        self._pos = 0
        while want > 0:
            data = self._fetch()
            if not data:
                break
            if len(data) > want:
                parts.append(data[:want])
                self._buf = data
                self._pos = want
                break
            parts.append(data)
            want -= len(data)
        return b"".join(parts)

    def _read_all(self) -> bytes:
        parts = [self._buf[self._pos :]]
        self._buf = b""
        self._pos = 0
        while True:
            data = self._fetch()
            if not data:
                return b"".join(parts)
            parts.append(data)

    def readline(self, size: int | None = -1) -> bytes:
        limit = -1 if size is None else size
        if limit == 0:
            return b""
        parts: list[bytes] = []
        got = 0
        while True:
            buf = self._buf
            pos = self._pos
            stop = len(buf) if limit < 0 else min(len(buf), pos + limit - got)
            newline = buf.find(b"\n", pos, stop)
            end = stop if newline < 0 else newline + 1
            if end > pos:
                parts.append(buf[pos:end])
                got += end - pos
                self._pos = end
            if newline >= 0 or got == limit:
                break
            data = self._fetch()
            if not data:
                break
            self._buf = data
            self._pos = 0
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def readlines(self, hint: int | None = -1) -> list[bytes]:
        lines: list[bytes] = []
        total = 0
        while True:
            line = self.readline()
            if not line:
                return lines
            lines.append(line)
            total += len(line)
            if hint is not None and 0 < hint <= total:
                return lines

    def __iter__(self) -> Iterator[bytes]:
        while True:
            line = self.readline()
            if not line:
                return
            yield line

    def close(self) -> None:
        """Nothing to release: what the app did not read is the server's business."""
