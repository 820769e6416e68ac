"""The llhttp backend (httptools): the fast default."""

from __future__ import annotations

import httptools

from prefork.errors import ProtocolError
from prefork.http.fields import ALL_PRESENT
from prefork.http.request import MALFORMED_HEAD, HeadParts, RawHeaders

NON_ASCII_TARGET = "non-ASCII request target"


def refusal(message: str) -> ProtocolError:
    """The error for a head llhttp refused, from llhttp's text of why."""
    if "HTTP version" in message:
        return ProtocolError(505, "HTTP version not supported")
    # llhttp's own texts name its internals; the same plain line as h11's.
    return ProtocolError(400, MALFORMED_HEAD)


class NotOneHead(Exception):
    """Raised from a callback when a buffer parsed as one head holds more than a head."""


class HttptoolsHeadParser:
    """Parses request heads with one reusable llhttp parser (one per worker: see ServerState)."""

    __slots__ = ("_complete", "_headers", "_parser", "_reused", "_url", "_whole")

    # llhttp rejects control characters, obs-fold, bare CR/LF itself.
    strict_fields = True
    # llhttp says where each message starts: a buffer holding one whole head
    # is parsed as it is, without first searching it for its end (parse_whole).
    whole_heads = True
    lowered_names = False

    def __init__(self) -> None:
        self._parser = httptools.HttpRequestParser(self)
        self._headers: RawHeaders = []
        self._url = b""
        self._complete = True
        self._reused = False
        self._whole = False

    # llhttp callbacks
    def on_url(self, url: bytes) -> None:
        if self._url and self._whole:
            # A second request line (llhttp reports a target in one piece when
            # it has the whole buffer): stop here, the caller splits the buffer.
            raise NotOneHead
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        # llhttp drops the OWS before a value but keeps the OWS after it
        # (RFC 9110 §5.5: not part of the value; h11 strips both). Looked at
        # before the method call: a value seldom ends in OWS, and the call
        # costs more than the rest of this callback.
        if value and (value[-1] == 0x20 or value[-1] == 0x09):
            value = value.rstrip(b" \t")
        self._headers.append((name, value))

    def on_chunk_header(self) -> None:
        # Only a whole buffer (parse_whole) gets this far into a chunked body,
        # whose trailer fields llhttp would pass on as the head's: the reader
        # frames it itself.
        raise NotOneHead

    def on_message_complete(self) -> None:
        self._complete = True

    def _reset(self) -> RawHeaders:
        """Ready the parser for a new head; the list its fields go into."""
        if not self._complete:
            # The last head announced a body, which the reader consumed itself
            # (or a parse stopped half-way): this parser still waits for the
            # rest, so start a fresh one.
            self._parser = httptools.HttpRequestParser(self)
            self._reused = False
        self._complete = False
        headers: RawHeaders = []
        self._headers = headers
        self._url = b""
        return headers

    def parse_whole(self, buf: bytes, line_end: int) -> HeadParts | None:
        """``buf`` as one head, when llhttp finds one whole request in it and no more.

        Searching a ~600-byte head for its CRLF CRLF costs about as much as
        llhttp's whole parse of it; llhttp finds the end anyway. Whatever is
        not plainly one request (a second one, an upgrade, a refusal, a body
        that has not all come) gives None, and the reader goes the usual way.
        """
        headers = self._reset()
        self._whole = True
        try:
            self._parser.feed_data(buf)
        except Exception:  # (NotOneHead, HttpParserUpgrade, HttpParserError)
            self._complete = False  # a fresh parser for the next head
            return None
        finally:
            self._whole = False
        if not self._complete:
            return None
        self._reused = True
        return self._parts(buf, line_end, headers)

    def parse(self, head: bytes, line_end: int = -1) -> HeadParts:
        headers = self._reset()
        try:
            self._parser.feed_data(head)
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
            raise refusal(str(exc)) from None
        self._reused = True
        return self._parts(head, line_end, headers)

    def _parts(self, head: bytes, line_end: int, headers: RawHeaders) -> HeadParts:
        try:
            target = self._url.decode("ascii")
        except UnicodeDecodeError:
            raise ProtocolError(400, NON_ASCII_TARGET) from None
        # llhttp read "HTTP/d.d" at the end of the request line: 1.1 by its
        # digits (httptools' get_http_version formats a string each call).
        first = line_end if line_end >= 0 else head.find(b"\r\n")
        parser = self._parser
        if head[first - 1] == 0x31 and head[first - 3] == 0x31:
            version = "1.1"
        else:
            version = parser.get_http_version()
        return parser.get_method().decode("ascii"), target, version, headers, None, ALL_PRESENT
