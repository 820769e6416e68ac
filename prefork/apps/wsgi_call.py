"""One WSGI call, run in a pool thread: ``start_response``, the body, the response bytes.

``Call.run`` calls the app and turns what it returns into an ``Outcome`` for
the event loop. A body that is whole when the app returns (a list, or a first
block as long as the app's ``Content-Length``: what Flask and Django return)
becomes one ``head + body`` that the loop writes in one go, so the common
request costs one hand-off each way. Any other body is streamed: each block is
handed to the loop as it comes (``Stream``), chunked on HTTP/1.1 unless the
app gave a ``Content-Length``, close-delimited on HTTP/1.0; the thread waits
for the loop only when the peer is slow (backpressure). A
``wsgi.file_wrapper`` over a real file on plain TCP goes out with
``os.sendfile`` from the thread (``engine.sendfile``).

PEP 3333 rules enforced here (the status and header checks are in
``wsgi_headers``): ``start_response`` once unless with ``exc_info`` (re-raised
when the head has gone), the body made of bytes, and the iterable's
``close()`` always called.
"""

from __future__ import annotations

import itertools
import logging
import os
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Final, Protocol

from prefork import log
from prefork.apps.wsgi_environ import Environ, FileWrapper
from prefork.apps.wsgi_headers import Head, WsgiError, check_headers, check_status, encode_head
from prefork.apps.wsgi_input import StreamedInput
from prefork.engine.sendfile import sendfile_blocking
from prefork.errors import PeerGone
from prefork.http import compression
from prefork.http.response import (
    LAST_CHUNK,
    NegotiatedCache,
    bodyless_status,
    chunk,
    negotiate,
)

if TYPE_CHECKING:
    from prefork.engine.connection import Connection
    from prefork.http.request import Request

app_logger = logging.getLogger(log.APP)

# A body streamed in blocks is handed to the loop without waiting, unless the
# peer is slow; every this many blocks the thread waits anyway, so a peer that
# reads nothing cannot make the loop buffer more than this many blocks.
_WAIT_EVERY: Final = 16

_END: Final = object()  # the end of the app's iterable


class WsgiServer(Protocol):
    """What a call needs of the interface that runs it (``wsgi.WsgiApp``)."""

    app: Callable[..., Any]
    name: str  # MODULE:ATTR, for the log
    fields_cache: dict[Any, Head]
    policy: compression.Policy
    compress: bool
    negotiated_cache: NegotiatedCache
    tls: bool
    write_timeout: float

    def send_soon(self, conn: Connection, data: bytes) -> None: ...

    def send_and_wait(self, conn: Connection, data: bytes) -> None: ...

    def flush(self, conn: Connection) -> None: ...


class Outcome:
    """What a call left for the loop to do."""

    # BUFFERED: write head + body; STREAMED: all was sent, log it; FAILED: 500
    # (nothing was sent); BROKEN: the head went out, then it failed: cut the
    # connection; GONE: the peer left; CUT: the streamed request body failed,
    # and the loop already answered it (413...) or cut the connection.
    # (One Final per line: the compiled build takes no other statement in a class body.)
    BUFFERED: Final = 0
    STREAMED: Final = 1
    FAILED: Final = 2
    BROKEN: Final = 3
    GONE: Final = 4
    CUT: Final = 5

    __slots__ = ("body", "head", "keep_alive", "kind", "sent", "status")

    def __init__(
        self,
        kind: int,
        status: int = 500,
        head: bytes = b"",
        body: bytes = b"",
        sent: int = 0,
        keep_alive: bool = False,
    ) -> None:
        self.kind = kind
        self.status = status
        self.head = head
        self.body = body
        self.sent = sent
        self.keep_alive = keep_alive


def close_iterable(result: object, app_name: str) -> None:
    """Call the app iterable's ``close()`` (PEP 3333: always); log what it raises."""
    closer = getattr(result, "close", None)
    if closer is not None:
        try:
            closer()
        except Exception:
            app_logger.exception("app %s: close() of the response iterable raised", app_name)


class Call:
    """One request's trip through the app, in a pool thread."""

    __slots__ = (
        "app",
        "body",
        "code",
        "conn",
        "environ",
        "head",
        "http10",
        "keep_alive",
        "req",
        "status",
        "stream",
    )

    def __init__(
        self,
        app: WsgiServer,
        conn: Connection,
        req: Request,
        environ: Environ,
        keep_alive: bool,
        body: StreamedInput | None = None,
    ) -> None:
        self.app = app
        self.conn = conn
        self.req = req
        self.environ = environ
        self.keep_alive = keep_alive
        # The streamed request body (None: it came whole, in environ's wsgi.input).
        self.body = body
        self.http10 = req.version == "1.0"
        self.status: str | None = None
        self.code = 500
        self.head: Head | None = None
        self.stream: Stream | None = None  # set once the head went out

    # -- what the app calls -------------------------------------------------

    def start_response(
        self, status: str, headers: list[tuple[str, str]], exc_info: Any = None
    ) -> Callable[[bytes], None]:
        if exc_info is not None:
            try:
                if self.stream is not None:
                    # PEP 3333: too late to change the response; the app's error goes on.
                    raise exc_info[1].with_traceback(exc_info[2])
            finally:
                exc_info = None  # no cycle through the traceback
        elif self.status is not None:
            raise WsgiError("start_response called a second time without exc_info")
        code = check_status(status)
        self.head = check_headers(self.app.fields_cache, headers)
        self.status = status
        self.code = code
        return self.write

    def write(self, data: object) -> None:
        """The ``write()`` callable (PEP 3333's legacy imperative API): send ``data`` now.

        (``data`` is typed ``object``: an app's wrong type gets the error below,
        not the compiled build's bare TypeError.)
        """
        if type(data) is not bytes:
            raise WsgiError(f"write() takes bytes, not {type(data).__name__}")
        if self.status is None:
            raise WsgiError("write() called before start_response")
        stream = self.stream or self._start_stream()
        if data:
            stream.send(data)

    # -- the server's side --------------------------------------------------

    def run(self) -> Outcome:
        out = self._run()
        body = self.body
        if body is not None and body.cut:
            # Whatever the app made of the InputError: the loop has answered.
            return Outcome(Outcome.CUT)
        return out

    def _run(self) -> Outcome:
        app = self.app
        if self.conn.lost:  # left while the request waited for a thread
            return Outcome(Outcome.GONE)
        try:
            result = app.app(self.environ, self.start_response)
        except PeerGone:
            return Outcome(Outcome.GONE)
        except WsgiError as exc:  # from start_response or write(), through the app
            return self._failed(exc)
        except Exception:
            return self._failed(None)
        try:
            return self._respond(result)
        except PeerGone:
            return Outcome(Outcome.GONE)
        except WsgiError as exc:
            return self._failed(exc)
        except Exception:
            return self._failed(None)
        finally:
            if type(result) is not list:  # (a list has no close(): the usual body)
                close_iterable(result, app.name)

    def _failed(self, broken: WsgiError | None) -> Outcome:
        """Log what went wrong: a broken rule in one line, anything else with its traceback."""
        req = self.req
        if self.body is not None and self.body.cut:
            # (The InputError the app let through: the client left, or 413.)
            app_logger.debug(
                "app %s: the body of %s %s failed", self.app.name, req.method, req.path
            )
            return Outcome(Outcome.CUT)
        if broken is not None:
            app_logger.error(
                "app %s broke PEP 3333 on %s %s: %s", self.app.name, req.method, req.path, broken
            )
        else:
            app_logger.exception("app %s raised on %s %s", self.app.name, req.method, req.path)
        if self.stream is not None:
            return Outcome(Outcome.BROKEN, self.code)
        return Outcome(Outcome.FAILED)

    def _respond(self, result: Iterable[bytes]) -> Outcome:
        if type(result) is list and self.stream is None:
            return self._buffered(result)  # the usual body first: [b"..."]
        if isinstance(result, FileWrapper) and self.stream is None:
            out = self._sendfile(result)
            if out is not None:
                return out
        stream = self.stream
        if stream is not None:  # write() was called: the head went out
            return self._stream_rest(stream, result)
        if type(result) is list or type(result) is tuple:
            return self._buffered(list(result))
        try:
            rest = iter(result)
        except TypeError:
            raise WsgiError(f"the app returned {type(result).__name__}, not an iterable") from None
        first = next(rest, _END)
        stream = self.stream
        if stream is None:
            if first is _END:
                return self._buffered([])
            # Whole already if the first block is as long as the app's
            # Content-Length (Flask's and Django's bodies): no more blocks asked for.
            head = self.head
            if type(first) is bytes and head is not None and head[3] == len(first):
                return self._buffered([first])
            stream = self._stream_head(first)
        elif first is not _END:  # write() was called while the first block was made
            return self._stream_rest(stream, itertools.chain((first,), rest))
        return self._stream_rest(stream, rest)

    def _stream_head(self, first: object) -> Stream:
        if type(first) is not bytes:
            raise WsgiError(f"the response iterable yielded {type(first).__name__}, not bytes")
        if self.status is None:
            raise WsgiError("the response iterable yielded before start_response was called")
        return self._start_stream(first=first)

    def _stream_rest(self, stream: Stream, rest: Iterable[Any]) -> Outcome:
        if stream.discard:
            # HEAD, 204, 304: no body goes out, so none is asked for (close() follows).
            return stream.finish(self.code)
        for item in rest:
            if type(item) is not bytes:
                raise WsgiError(f"the response iterable yielded {type(item).__name__}, not bytes")
            if item:
                stream.send(item)
        return stream.finish(self.code)

    def _buffered(self, items: list[Any]) -> Outcome:
        """The whole body is here: one head + body for the loop to write."""
        for item in items:
            if type(item) is not bytes:
                raise WsgiError(f"the response iterable yielded {type(item).__name__}, not bytes")
        if self.status is None or self.head is None:
            raise WsgiError("the app returned without calling start_response")
        body = items[0] if len(items) == 1 else b"".join(items)
        text, lower, has_server, length = self.head
        req = self.req
        code = self.code
        # (``_keep_alive``, inline: this runs for nearly every request.)
        keep_alive = self.keep_alive and (self.body is None or self.body.complete)
        if code == 204 or code == 304:  # bodyless (a WSGI app sends no 1xx)
            head = encode_head(self.status, text, has_server, "", keep_alive, self.http10)
            return Outcome(Outcome.BUFFERED, code, head, b"", 0, keep_alive)
        app = self.app
        if req.method == "HEAD":
            size = len(body) if length is None else length
            head = encode_head(
                self.status,
                text,
                has_server,
                f"Content-Length: {size}\r\n",
                keep_alive,
                self.http10,
            )
            return Outcome(Outcome.BUFFERED, code, head, b"", 0, keep_alive)
        if length is not None and length != len(body):
            raise WsgiError(f"Content-Length {length} but a body of {len(body)} bytes")
        if app.compress:
            coding, text = negotiate(
                app.policy,
                app.negotiated_cache,
                req,
                code,
                lower,
                text,
                len(body),
            )
            if coding is not None:
                body = compression.compress_body(coding, app.policy.level, body)
        head = encode_head(
            self.status,
            text,
            has_server,
            f"Content-Length: {len(body)}\r\n",
            keep_alive,
            self.http10,
        )
        return Outcome(Outcome.BUFFERED, code, head, body, len(body), keep_alive)

    def _keep_alive(self) -> bool:
        """Whether the connection stays open after this response.

        A streamed body the app did not read to its end closes it after the
        response (as for ASGI apps): the close lingers, reading and dropping
        what the client still sends, rather than read a body nobody wants.
        """
        body = self.body
        return self.keep_alive and (body is None or body.complete)

    def _start_stream(self, sendfile_length: int | None = None, first: bytes = b"") -> Stream:
        """Send the head of a response whose body follows block by block."""
        assert self.status is not None
        assert self.head is not None
        text, lower, has_server, length = self.head
        if sendfile_length is not None:
            length = sendfile_length
        req = self.req
        code = self.code
        keep_alive = self._keep_alive()
        encoder = None
        chunked = False
        discard = False  # no body goes on the wire (HEAD, 204, 304): what the app sends is dropped
        if bodyless_status(code):
            framing = ""
            discard = True
        elif req.method == "HEAD":
            framing = "" if length is None else f"Content-Length: {length}\r\n"
            discard = True
        else:
            app = self.app
            if app.compress and sendfile_length is None:
                coding, text = negotiate(
                    app.policy,
                    app.negotiated_cache,
                    req,
                    code,
                    lower,
                    text,
                    None,
                )
                if coding is not None:
                    encoder = compression.make_encoder(coding, app.policy.level)
                    length = None
            if length is not None:
                framing = f"Content-Length: {length}\r\n"
            elif self.http10:
                framing = ""
                keep_alive = False  # the body ends where the connection does
            else:
                framing = "Transfer-Encoding: chunked\r\n"
                chunked = True
        head = encode_head(self.status, text, has_server, framing, keep_alive, self.http10)
        stream = self.stream = Stream(
            self.app, self.conn, None if discard else length, chunked, encoder, discard
        )
        stream.keep_alive = keep_alive
        if self.body is not None:
            self.body.head_sent = True  # no 100 Continue nor 413 after this
        # The head and the first block in one hand-off to the loop.
        stream.post(head + stream.encode(first) if first else head, False)
        return stream

    def _sendfile(self, wrapper: FileWrapper) -> Outcome | None:
        """Send a file with ``os.sendfile``; None when it cannot be (the caller iterates)."""
        app = self.app
        if app.tls or self.status is None or self.head is None:
            return None
        fd = wrapper.fileno()
        if fd is None:
            return None
        try:
            offset = os.lseek(fd, 0, os.SEEK_CUR)
            size = os.fstat(fd).st_size - offset
        except OSError:
            return None
        length = self.head[3]
        if length is None:
            length = size
        elif length > size:
            return None  # the app promised more than the file has: iterate and fail there
        if (
            app.compress
            and self.req.method != "HEAD"
            and app.policy.choose(
                self.req.method,
                self.code,
                self.req.headers.get("accept-encoding"),
                self.head[1],
                length,
            )[0]
            is not None
        ):
            return None  # compressed: the bytes must pass through here
        stream = self._start_stream(length)
        if stream.length:
            stream.sendfile(fd, offset, length)
        return stream.finish(self.code)


class Stream:
    """A response body handed from a pool thread to the loop block by block."""

    __slots__ = (
        "app",
        "chunked",
        "conn",
        "discard",
        "encoder",
        "keep_alive",
        "length",
        "posted",
        "sent",
    )

    def __init__(
        self,
        app: WsgiServer,
        conn: Connection,
        length: int | None,
        chunked: bool,
        encoder: compression.Encoder | None,
        discard: bool,
    ) -> None:
        self.app = app
        self.conn = conn
        self.discard = discard
        self.length = length  # what is left to send of a Content-Length body
        self.chunked = chunked
        self.encoder = encoder
        self.keep_alive = True
        self.posted = 0  # blocks posted since the last wait
        self.sent = 0

    def post(self, data: bytes, wait: bool) -> None:
        """Have the loop send ``data``; wait for it (and the peer) when asked or when slow."""
        conn = self.conn
        if conn.lost or conn.closing:
            raise PeerGone("the peer left while the response was sent")
        self.posted += 1
        if wait or conn.write_paused or self.posted >= _WAIT_EVERY:
            self.posted = 0
            self.app.send_and_wait(conn, data)
        else:
            self.app.send_soon(conn, data)

    def send(self, data: bytes) -> None:
        data = self.encode(data)
        if data:
            self.post(data, False)

    def encode(self, data: bytes) -> bytes:
        """``data`` as it goes on the wire (compressed, chunked); counts it."""
        if self.discard:
            return b""
        length = self.length
        if length is not None:
            if len(data) > length:
                raise WsgiError("the app sent more than its Content-Length")
            self.length = length - len(data)
        encoder = self.encoder
        if encoder is not None:
            data = encoder.compress(data) + encoder.flush()
            if not data:
                return b""
        self.sent += len(data)
        return chunk(data) if self.chunked else data

    def sendfile(self, fd: int, offset: int, count: int) -> None:
        """Send ``count`` bytes of the file ``fd`` straight to the socket (the engine's)."""
        app = self.app
        app.flush(self.conn)  # the head is out of the transport's buffer: the socket is ours
        sent = sendfile_blocking(self.conn, fd, offset, count, app.write_timeout)
        self.sent += sent
        if sent < count:
            raise WsgiError("the file ended before its Content-Length")
        self.length = 0

    def finish(self, code: int) -> Outcome:
        if self.length:
            raise WsgiError(f"the app sent {self.length} bytes less than its Content-Length")
        encoder = self.encoder
        tail = b""
        if encoder is not None:
            tail = encoder.finish()
            self.sent += len(tail)
            if tail and self.chunked:
                tail = chunk(tail)
        if self.chunked:
            tail += LAST_CHUNK
        # Waits: every block is out (or buffered by the transport) before the
        # loop takes the outcome and logs the response.
        self.post(tail, True)
        return Outcome(Outcome.STREAMED, code, sent=self.sent, keep_alive=self.keep_alive)
