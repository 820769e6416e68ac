"""The llhttp backend (httptools): the fast default."""

from __future__ import annotations

import httptools

from prefork.errors import ProtocolError
from prefork.http.request import MALFORMED_HEAD, RawHeaders


class HttptoolsHeadParser:
    """Parses request heads with one reusable llhttp parser (one per worker: see ServerState)."""

    __slots__ = ("_complete", "_headers", "_parser", "_reused", "_url")

    # llhttp rejects control characters, obs-fold, bare CR/LF itself.
    strict_fields = True

    def __init__(self) -> None:
        self._parser = httptools.HttpRequestParser(self)
        self._headers: RawHeaders = []
        self._url = b""
        self._complete = True
        self._reused = False

    # llhttp callbacks
    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        # llhttp drops the OWS before a value but keeps the OWS after it
        # (RFC 9110 §5.5: not part of the value; h11 strips both). Looked at
        # before the method call: a value seldom ends in OWS, and the call
        # costs more than the rest of this callback.
        if value and (value[-1] == 0x20 or value[-1] == 0x09):
            value = value.rstrip(b" \t")
        self._headers.append((name, value))

    def on_message_complete(self) -> None:
        self._complete = True

    def parse(self, head: bytes, line_end: int = -1) -> tuple[str, str, str, RawHeaders]:
        if not self._complete:
            # The last head announced a body, which the reader consumed itself:
            # this parser still waits for it, so start a fresh one.
            self._parser = httptools.HttpRequestParser(self)
            self._reused = False
        self._complete = False
        headers: RawHeaders = []
        self._headers = headers
        self._url = b""
        parser = self._parser
        try:
            parser.feed_data(head)
        except httptools.HttpParserUpgrade:
            # Upgrade/CONNECT: the head is complete; the server decides below.
            self._complete = False
        except httptools.HttpParserError as exc:
            self._complete = False
            if self._reused:
                # State left by the last request (llhttp refuses anything after
                # a `Connection: close` or HTTP/1.0 request): judge this head
                # alone, as h11 does.
                return self.parse(head, line_end)
            message = str(exc)
            if "HTTP version" in message:
                raise ProtocolError(505, "HTTP version not supported") from None
            # llhttp's own texts name its internals; the same plain line as h11's.
            raise ProtocolError(400, MALFORMED_HEAD) from None
        self._reused = True
        try:
            target = self._url.decode("ascii")
        except UnicodeDecodeError:
            raise ProtocolError(400, "non-ASCII request target") from None
        # llhttp read "HTTP/d.d" at the end of the request line: 1.1 by its
        # digits (httptools' get_http_version formats a string each call).
        first = line_end if line_end >= 0 else head.find(b"\r\n")
        if head[first - 1] == 0x31 and head[first - 3] == 0x31:
            version = "1.1"
        else:
            version = parser.get_http_version()
        return parser.get_method().decode("ascii"), target, version, headers
