"""Sans-I/O HTTP/1.1: request framing, the strict checks and limits, response bytes.

Bytes go in through :meth:`RequestReader.feed`; complete :class:`Request`
objects come out. A parser backend (``parsers/``) only turns one request head
into ``(method, target, version, raw headers)``; everything a backend could get
wrong differently lives here once: where a head ends, the RFC 9112 checks,
413/414/431, body framing (Content-Length and our strict chunked decoder),
query parsing, header joining, the keep-alive decision and response
serialisation. So both backends answer the same bytes the same way.

No asyncio, socket or ssl here.
"""

from __future__ import annotations

import enum
import re
import time
from collections.abc import Mapping
from email.utils import formatdate
from http import HTTPStatus
from typing import Any, Protocol
from urllib.parse import parse_qsl

from .errors import ProtocolError

RawHeaders = list[tuple[bytes, bytes]]

# The request methods llhttp knows; both backends accept exactly these so they
# answer alike (h11 alone would take any token).
_METHODS_TEXT = """
    DELETE GET HEAD POST PUT OPTIONS TRACE COPY LOCK MKCOL MOVE PROPFIND PROPPATCH
    SEARCH UNLOCK BIND REBIND UNBIND ACL REPORT MKACTIVITY CHECKOUT MERGE M-SEARCH
    NOTIFY SUBSCRIBE UNSUBSCRIBE PATCH PURGE MKCALENDAR LINK UNLINK SOURCE QUERY
"""
KNOWN_METHODS = frozenset(_METHODS_TEXT.split())

# The whole head may not exceed this many bytes, whatever the per-line limit
# (a bound on memory per connection): 431.
MIN_HEAD_LIMIT_BYTES = 64 * 1024
# Chunk sizes longer than this many hex digits overflow 64 bits: 400.
MAX_CHUNK_SIZE_DIGITS = 16
# Trailer fields that may not appear after the last chunk (RFC 9110 §6.5.1).
FORBIDDEN_TRAILERS = frozenset(
    (
        b"content-length",
        b"transfer-encoding",
        b"host",
        b"content-encoding",
        b"content-type",
        b"content-range",
        b"trailer",
        b"te",
        b"connection",
        b"expect",
        b"authorization",
        b"set-cookie",
        b"cookie",
    )
)

# RFC 9110 §5.5: field-value = *field-content; VCHAR, obs-text, SP and HTAB only.
_BAD_FIELD_BYTES = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
# RFC 3986 host: reg-name / IPv4 / IP-literal, then an optional port.
_HOST_RE = re.compile(r"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-._~!$&'()*+,;=%]+)(?::[0-9]*)?")
_TOKEN_RE = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_TOKEN = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_QUOTED = rb'"(?:[^"\\\x00-\x08\x0a-\x1f\x7f]|\\[\t !-~\x80-\xff])*"'
# RFC 9112 §7.1.1: chunk-ext = *( BWS ";" BWS ext-name [ BWS "=" BWS ext-val ] )
_CHUNK_EXT_RE = re.compile(
    rb"(?:[ \t]*;[ \t]*" + _TOKEN + rb"(?:[ \t]*=[ \t]*(?:" + _TOKEN + rb"|" + _QUOTED + rb"))?)*"
)
_HEX_DIGITS = frozenset(b"0123456789abcdefABCDEF")
# The request line of every request we serve ends in one of these.
_HTTP_VERSIONS = (b" HTTP/1.1", b" HTTP/1.0")
# A well-formed request line (RFC 9112 §3), to tell 505 from 400 when it does not.
_REQUEST_LINE_RE = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+ [\x21-\x7e]+ HTTP/([0-9])\.([0-9])")
# Line ends, proper or bare, in the order they come.
_LINE_ENDS = re.compile(rb"\r\n|[\r\n]")
# A Content-Length too long for 64 bits: llhttp and h11 refuse it as malformed.
_HUGE_CONTENT_LENGTH = re.compile(rb"(\r\ncontent-length:[ \t]*)[0-9]{20,}", re.IGNORECASE)
# What it is replaced with to parse the rest of the head: 20 digits, still a 413.
_TOO_LARGE_CONTENT_LENGTH = b"1" + b"0" * 19


class HeadParser(Protocol):
    """A parser backend: one request head in, its parts out."""

    # True when the backend itself rejects control characters and obs-fold in
    # the head, so the shared pre-scan can be skipped for it.
    strict_fields: bool

    def parse(self, head: bytes) -> tuple[str, str, str, RawHeaders]:
        """Parse a head ending in CRLF CRLF; raise ProtocolError on bad syntax."""
        ...


# Parsing and checking a head is a pure function of its bytes (and of the
# worker's fixed limits and parser), and clients repeat byte-identical heads
# (load balancer probes, API clients, keep-alive loops): a worker remembers
# the requests it built for up to this many distinct heads and reuses them.
# Full, it starts over, so varied traffic cannot pin stale entries; heads
# longer than HEAD_CACHE_MAX_HEAD_BYTES are not kept (at most 2 MiB in all).
HEAD_CACHE_MAX_ENTRIES = 512
HEAD_CACHE_MAX_HEAD_BYTES = 4096
HeadCache = dict[bytes, "Request"]


class Limits:
    """The request limits of a config, read once per worker."""

    __slots__ = ("head_limit", "line_limit", "max_body_size", "max_header_count")

    def __init__(self, line_limit: int, max_header_count: int, max_body_size: int) -> None:
        self.line_limit = line_limit
        self.max_header_count = max_header_count
        self.max_body_size = max_body_size
        self.head_limit = max(MIN_HEAD_LIMIT_BYTES, 2 * line_limit)

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> Limits:
        return cls(cfg["request_line_limit"], cfg["max_header_count"], cfg["max_body_size"])


class Request:
    """One parsed request."""

    __slots__ = (
        "body",
        "chunked",
        "content_length",
        "expect_continue",
        "headers",
        "keep_alive",
        "method",
        "path",
        "query",
        "target",
        "version",
    )

    def __init__(
        self,
        method: str,
        target: str,
        path: str,
        query: str,
        version: str,
        headers: dict[str, str],
        keep_alive: bool,
    ) -> None:
        self.method = method
        self.target = target
        self.path = path
        self.query = query
        self.version = version
        self.headers = headers
        self.keep_alive = keep_alive
        self.body = b""
        self.content_length = 0
        self.chunked = False
        self.expect_continue = False

    def __repr__(self) -> str:
        return f"<Request {self.method} {self.target} HTTP/{self.version}>"

    def clone(self) -> Request:
        """A copy with its own headers dict (a handler may change the one it gets)."""
        other = Request.__new__(Request)
        other.method = self.method
        other.target = self.target
        other.path = self.path
        other.query = self.query
        other.version = self.version
        other.headers = self.headers.copy()
        other.keep_alive = self.keep_alive
        other.body = self.body
        other.content_length = self.content_length
        other.chunked = self.chunked
        other.expect_continue = self.expect_continue
        return other


def parse_args(query: str) -> dict[str, Any]:
    """The query string as ``{name: value}``; a repeated name maps to a list."""
    args: dict[str, Any] = {}
    if not query:
        return args
    for name, value in parse_qsl(query, keep_blank_values=True):
        if name in args:
            old = args[name]
            if isinstance(old, list):
                old.append(value)
            else:
                args[name] = [old, value]
        else:
            args[name] = value
    return args


def _split_target(method: str, target: str) -> tuple[str, str]:
    """(path, query) of a request target, checking its form (RFC 9112 §3.2)."""
    if "#" in target:
        raise ProtocolError(400, "fragment in request target")
    if target[:1] == "/":
        path, sep, query = target.partition("?")
        return path, query
    if target == "*":
        if method != "OPTIONS":
            raise ProtocolError(400, "asterisk-form target is only for OPTIONS")
        return "*", ""
    scheme, sep, rest = target.partition("://")
    if sep and scheme.lower() in ("http", "https"):
        # absolute-form: the authority is the part up to the first "/" or "?".
        cut = len(rest)
        for ch in "/?":
            i = rest.find(ch)
            if i != -1 and i < cut:
                cut = i
        authority, rest = rest[:cut], rest[cut:]
        if not authority or not _HOST_RE.fullmatch(authority):
            raise ProtocolError(400, "bad authority in absolute-form target")
        path, _, query = rest.partition("?")
        return path or "/", query
    raise ProtocolError(400, "bad request target")


def _split_tokens(value: str) -> list[str]:
    return [t.strip().lower() for t in value.split(",") if t.strip()]


_NAME_CACHE: dict[bytes, str] = {}
_HOST_CACHE: set[str] = set()
_CACHE_MAX = 512
# Fields that must not repeat: a second line is an attack or a bug.
_SINGLE_FIELDS = {
    "content-length": "more than one Content-Length",
    "transfer-encoding": "more than one Transfer-Encoding",
    "host": "more than one Host header",
}


def _field_name(raw: bytes) -> str:
    name = _NAME_CACHE.get(raw)
    if name is None:
        name = raw.decode("latin-1").lower()
        if len(_NAME_CACHE) < _CACHE_MAX:
            _NAME_CACHE[raw] = name
    return name


def _valid_host(host: str) -> bool:
    if host in _HOST_CACHE:
        return True
    if not _HOST_RE.fullmatch(host):
        return False
    if len(_HOST_CACHE) < _CACHE_MAX:
        _HOST_CACHE.add(host)
    return True


def build_request(
    method: str,
    target: str,
    version: str,
    raw: RawHeaders,
    limits: Limits,
    check_fields: bool,
) -> Request:
    """Apply the semantic checks of RFC 9112/9110 to a parsed head."""
    if version != "1.1" and version != "1.0":
        raise ProtocolError(505, f"HTTP version {version} not supported")
    if method not in KNOWN_METHODS:
        raise ProtocolError(
            400, "CONNECT is not supported" if method == "CONNECT" else "unknown method"
        )
    headers: dict[str, str] = {}
    for bname, bvalue in raw:
        if check_fields and _BAD_FIELD_BYTES.search(bvalue):
            raise ProtocolError(400, "invalid character in header value")
        name = _field_name(bname)
        if name in headers:
            if name in _SINGLE_FIELDS:
                raise ProtocolError(400, _SINGLE_FIELDS[name])
            sep = "; " if name == "cookie" else ", "
            headers[name] = headers[name] + sep + bvalue.decode("latin-1")
        else:
            headers[name] = bvalue.decode("latin-1")

    path, query = _split_target(method, target)

    host = headers.get("host")
    if host is None:
        if version == "1.1":
            raise ProtocolError(400, "missing Host header")
    elif not _valid_host(host):
        raise ProtocolError(400, "invalid Host header")

    conn_header = headers.get("connection")
    if version == "1.1":
        keep_alive = conn_header is None or "close" not in _split_tokens(conn_header)
    elif conn_header is None:
        keep_alive = False
    else:
        tokens = _split_tokens(conn_header)
        keep_alive = "keep-alive" in tokens and "close" not in tokens

    req = Request(method, target, path, query, version, headers, keep_alive)

    te = headers.get("transfer-encoding")
    cl = headers.get("content-length")
    if te is not None:
        # RFC 9112 §6.1: a request with both is an attack or a bug; we refuse it.
        if cl is not None:
            raise ProtocolError(400, "both Content-Length and Transfer-Encoding")
        if version == "1.0":
            raise ProtocolError(400, "Transfer-Encoding on HTTP/1.0")
        if te.strip().lower() != "chunked":
            raise ProtocolError(400, "Transfer-Encoding other than chunked")
        req.chunked = True
    elif cl is not None:
        cl = cl.strip()
        if not cl.isdigit() or not cl.isascii():
            raise ProtocolError(400, "invalid Content-Length")

    # Only now the limits: a request that is both malformed and too large gets
    # the same 400 from both backends, whichever of them finds the fault first.
    if len(raw) > limits.max_header_count:
        raise ProtocolError(431, "too many header fields")
    if cl is not None and te is None:
        if len(cl) > 19 or int(cl) > limits.max_body_size:
            raise ProtocolError(413, "request body too large")
        req.content_length = int(cl)

    expect = headers.get("expect")
    if expect is not None:
        if expect.strip().lower() != "100-continue":
            raise ProtocolError(417, "unsupported Expect")
        req.expect_continue = version == "1.1" and (req.chunked or req.content_length > 0)
    return req


def _request_line_error(buf: bytes, start: int, end: int) -> ProtocolError:
    """The error for a request line that does not end in HTTP/1.1 or HTTP/1.0."""
    match = _REQUEST_LINE_RE.fullmatch(buf, start, end)
    if match is None:
        return ProtocolError(400, "malformed request line")
    major, minor = match[1].decode(), match[2].decode()
    return ProtocolError(505, f"HTTP version {major}.{minor} not supported")


def _first_fault(
    buf: bytes, pos: int, end: int, limits: Limits, head: bool, checked: int = 0
) -> tuple[ProtocolError | None, int]:
    """The first fault in ``buf[pos:end]``, by where in the stream it shows.

    ``head``: the bytes are (the start of) a request head, else one trailer
    line. A fault "shows" at the byte that proves it: a bare LF at itself, a
    bare CR at the byte after it, a line too long at its first byte past the
    limit that cannot be the CR of a CRLF, a bad request line at its LF.
    Answering the earliest makes the status independent of how the bytes
    were split into reads (a prefix shows the same faults at the same places).

    ``checked``: how many bytes from ``pos`` are whole lines already found
    without fault (by an earlier call on a shorter read), so a head that
    trickles in is not scanned again from its start on every read. Returns
    the fault or None, and the new ``checked``.
    """
    limit = limits.line_limit
    start = pos + checked
    fault: ProtocolError | None = None
    at = end
    crlf = buf.count(b"\r\n", start, end)
    crs = buf.count(b"\r", start, end)
    if buf.count(b"\n", start, end) != crlf or (
        crs != crlf and not (crs == crlf + 1 and buf.endswith(b"\r", start, end))
    ):
        where = "request head" if head else "trailer"
        for match in _LINE_ENDS.finditer(buf, start, end):
            i = match.start()
            if match.end() - i == 2:
                continue
            if buf[i] == 0x0A:
                at, fault = i, ProtocolError(400, f"bare LF in {where}")
                break
            if i + 1 < end:
                at, fault = i + 1, ProtocolError(400, f"bare CR in {where}")
                break
    if head and pos + limits.head_limit < at:
        at, fault = pos + limits.head_limit, ProtocolError(431, "request head too large")
    line = start
    first = head and not checked
    while line < at:
        stop = buf.find(b"\r\n", line, end)
        line_end = end if stop < 0 else stop
        shows = line + limit
        if shows < line_end:
            if buf[shows] == 0x0D:  # this CR may yet begin the CRLF
                shows += 1
            if shows < end and shows <= at:
                at = shows
                if first:
                    fault = ProtocolError(414, "request line too long")
                elif head:
                    fault = ProtocolError(431, "header line too long")
                else:
                    fault = ProtocolError(431, "trailer line too long")
        if stop < 0:
            break
        if first and stop + 1 < at and not buf.endswith(_HTTP_VERSIONS, pos, stop):
            at, fault = stop + 1, _request_line_error(buf, pos, stop)
        line = stop + 2
        first = False
    return fault, line - pos


class ReaderState(enum.Enum):
    HEAD = 1
    BODY = 2
    CHUNK_SIZE = 3
    CHUNK_DATA = 4
    CHUNK_CRLF = 5
    TRAILERS = 6
    FAILED = 7
    PAUSED = 8  # after an Upgrade request: the bytes behind it may not be HTTP


class RequestReader:
    """Turns a byte stream into complete requests, strictly.

    ``feed()`` appends complete requests to ``requests``. The first error
    raises ProtocolError and leaves the reader FAILED: nothing after a
    rejected request is ever parsed. ``head_started`` tells the caller that
    part of a head has arrived (for the header deadline); ``in_body`` that the
    body is being read (for the body deadline); ``want_continue`` that a
    ``100 Continue`` should be sent now.
    """

    __slots__ = (
        "_body_parts",
        "_buf",
        "_chunk_left",
        "_current",
        "_head_cache",
        "_head_checked",
        "_head_prescan",
        "_limits",
        "_parser",
        "_received",
        "_state",
        "requests",
        "want_continue",
    )

    def __init__(
        self, parser: HeadParser, limits: Limits, head_cache: HeadCache | None = None
    ) -> None:
        self._parser = parser
        self._limits = limits
        self._head_cache = head_cache
        self._head_prescan = not parser.strict_fields
        self._head_checked = 0
        self._buf = b""
        self._state = ReaderState.HEAD
        self._current: Request | None = None
        self._body_parts: list[bytes] = []
        self._received = 0
        self._chunk_left = 0
        # A list, not a deque: it rarely holds more than one request, and an
        # empty deque costs ~600 bytes on every idle connection.
        self.requests: list[Request] = []
        self.want_continue = False

    @property
    def head_started(self) -> bool:
        return self._state is ReaderState.HEAD and bool(self._buf)

    @property
    def in_body(self) -> bool:
        return self._state is not ReaderState.HEAD and self._state is not ReaderState.FAILED

    @property
    def buffered(self) -> int:
        return len(self._buf)

    @property
    def paused(self) -> bool:
        return self._state is ReaderState.PAUSED

    def resume(self) -> None:
        """Parse again after an Upgrade request the handler answered itself or declined."""
        if self._state is ReaderState.PAUSED:
            self._state = ReaderState.HEAD
            data, self._buf = self._buf, b""
            if data:
                self.feed(data)

    def take_unparsed(self) -> bytes:
        """Hand over the bytes not yet parsed (for a handler that proxies the connection)."""
        data, self._buf = self._buf, b""
        return data

    def feed_failed(self) -> None:
        """Stop parsing for good (a deadline passed); nothing more is read as a request."""
        self._state = ReaderState.FAILED
        self._buf = b""
        self.requests.clear()

    def feed(self, data: bytes) -> None:
        if self._state is ReaderState.FAILED:
            return
        if self._state is ReaderState.PAUSED:
            self._buf += data
            return
        buf = self._buf + data if self._buf else data
        try:
            self._buf = self._consume(buf)
        except ProtocolError:
            self._state = ReaderState.FAILED
            self._buf = b""
            raise

    def eof(self) -> None:
        """The peer closed its side: a partial request is an error."""
        if self._state is ReaderState.HEAD:
            if self._buf.strip(b"\r\n"):
                self._state = ReaderState.FAILED
                raise ProtocolError(400, "connection closed inside a request head")
        elif self._state is not ReaderState.FAILED:
            self._state = ReaderState.FAILED
            raise ProtocolError(400, "connection closed inside a request body")

    # -- the state machine ------------------------------------------------

    def _consume(self, buf: bytes) -> bytes:
        pos = 0
        end = len(buf)
        while pos < end:
            state = self._state
            if state is ReaderState.HEAD:
                # RFC 9112 §2.2: ignore CRLFs before a request line.
                while buf.startswith(b"\r\n", pos):
                    pos += 2
                if pos >= end:
                    break
                stop = buf.find(b"\r\n\r\n", pos)
                if stop < 0:
                    self._check_partial_head(buf, pos)
                    break
                stop += 4
                head = buf if (pos == 0 and stop == end) else buf[pos:stop]
                pos = stop
                self._start_request(head)
            elif state is ReaderState.BODY:
                take = min(self._chunk_left, end - pos)
                self._body_parts.append(buf[pos : pos + take] if take != end or pos else buf)
                pos += take
                self._chunk_left -= take
                if not self._chunk_left:
                    self._finish_request()
            elif state is ReaderState.CHUNK_SIZE:
                stop = buf.find(b"\r\n", pos)
                if stop < 0:
                    self._check_partial_chunk_line(buf[pos:])
                    break
                self._chunk_size_line(buf[pos:stop])
                pos = stop + 2
            elif state is ReaderState.CHUNK_DATA:
                take = min(self._chunk_left, end - pos)
                self._body_parts.append(buf[pos : pos + take])
                pos += take
                self._chunk_left -= take
                if not self._chunk_left:
                    self._state = ReaderState.CHUNK_CRLF
            elif state is ReaderState.CHUNK_CRLF:
                if end - pos < 2:
                    if buf[pos:] != b"\r":
                        raise ProtocolError(400, "chunk data not followed by CRLF")
                    break
                if buf[pos : pos + 2] != b"\r\n":
                    raise ProtocolError(400, "chunk data not followed by CRLF")
                pos += 2
                self._state = ReaderState.CHUNK_SIZE
            elif state is ReaderState.TRAILERS:
                stop = buf.find(b"\r\n", pos)
                if stop < 0:
                    fault = _first_fault(buf, pos, end, self._limits, head=False)[0]
                    if fault is not None:
                        raise fault
                    break
                if stop - pos > self._limits.line_limit:
                    # Too long; but a bare CR or LF before the limit came first.
                    fault = _first_fault(buf, pos, stop + 2, self._limits, head=False)[0]
                    raise fault or ProtocolError(431, "trailer line too long")
                line = buf[pos:stop]
                pos = stop + 2
                if not line:
                    self._finish_request()
                else:
                    self._trailer_line(line)
            elif state is ReaderState.PAUSED:
                break
            else:  # FAILED
                return b""
        return buf[pos:] if pos < end else b""

    def _check_partial_head(self, buf: bytes, pos: int) -> None:
        """Limits, line endings and the request line of a head whose end has not arrived.

        A bare LF or CR would never end the head: it is refused now, as llhttp does.
        """
        fault, self._head_checked = _first_fault(
            buf, pos, len(buf), self._limits, True, self._head_checked
        )
        if fault is not None:
            raise fault

    def _check_head(self, head: bytes) -> None:
        """The shared checks on a whole head, before a backend parses it."""
        size = len(head)
        # (llhttp skips any CR or LF before a request line; leading CRLFs are
        # gone already, so one here is bare.)
        checked, self._head_checked = self._head_checked, 0
        if size > self._limits.line_limit or head[0] < 0x21:
            fault = _first_fault(head, 0, size, self._limits, True, checked)[0]
            if fault is not None:
                raise fault
        first = head.find(b"\r\n")
        # The version before anything else in the head: llhttp takes HTTP/2.0,
        # RTSP/1.0 and ICE/1.0 and h11 any digit.digit; both then go on to
        # look at the fields, which would give 400 where the other says 505.
        if not head.endswith(_HTTP_VERSIONS, 0, first):
            raise _request_line_error(head, 0, first)
        if self._head_prescan:
            # llhttp rejects these itself; h11 would accept them.
            crlf = head.count(b"\r\n")
            if head.count(b"\n") != crlf or head.count(b"\r") != crlf:
                fault = _first_fault(head, 0, size, self._limits, True, checked)[0]
                raise fault or ProtocolError(400, "bare CR or LF in request head")
            if b"\n " in head or b"\n\t" in head:
                raise ProtocolError(400, "obsolete line folding in request head")
        elif head.count(b" ", 0, first) != 2:
            raise ProtocolError(400, "malformed request line")

    def _start_request(self, head: bytes) -> None:
        cache = self._head_cache
        if cache is not None:
            template = cache.get(head)
            if template is not None:
                self._head_checked = 0
                self._begin(template.clone())
                return
        self._check_head(head)
        try:
            method, target, version, raw = self._parser.parse(head)
        except ProtocolError as exc:
            if exc.status != 400 or _HUGE_CONTENT_LENGTH.search(head) is None:
                raise
            # A Content-Length too long for 64 bits is a number, just too
            # large: parse the rest of the head with a stand-in that gets 413.
            head = _HUGE_CONTENT_LENGTH.sub(rb"\g<1>" + _TOO_LARGE_CONTENT_LENGTH, head)
            method, target, version, raw = self._parser.parse(head)
        req = build_request(method, target, version, raw, self._limits, self._head_prescan)
        if cache is not None and len(head) <= HEAD_CACHE_MAX_HEAD_BYTES:
            if len(cache) >= HEAD_CACHE_MAX_ENTRIES:
                cache.clear()
            cache[head] = req.clone()
        self._begin(req)

    def _begin(self, req: Request) -> None:
        """Start reading the body of ``req``, or queue it when it has none."""
        if req.chunked:
            self._current = req
            self._received = 0
            self._body_parts = []
            self._state = ReaderState.CHUNK_SIZE
            self.want_continue = req.expect_continue
        elif req.content_length:
            self._current = req
            self._body_parts = []
            self._chunk_left = req.content_length
            self._state = ReaderState.BODY
            self.want_continue = req.expect_continue
        else:
            self.requests.append(req)
            if "upgrade" in req.headers and "upgrade" in req.headers.get("connection", "").lower():
                # What follows may be another protocol for a handler that takes
                # the connection over (ctx.client.read): keep it unparsed.
                self._state = ReaderState.PAUSED

    def _finish_request(self) -> None:
        req = self._current
        assert req is not None
        parts = self._body_parts
        req.body = parts[0] if len(parts) == 1 else b"".join(parts)
        self._body_parts = []
        self._current = None
        self._state = ReaderState.HEAD
        self.want_continue = False
        self.requests.append(req)

    def _check_partial_chunk_line(self, part: bytes) -> None:
        # A final CR may be the start of the CRLF: not part of the line (yet).
        size = len(part) - 1 if part.endswith(b"\r") else len(part)
        if size > self._limits.line_limit:
            raise ProtocolError(400, "chunk size line too long")
        if b"\n" in part or b"\r" in part[:size]:
            raise ProtocolError(400, "bare CR or LF in chunk size line")

    def _chunk_size_line(self, line: bytes) -> None:
        if len(line) > self._limits.line_limit:
            raise ProtocolError(400, "chunk size line too long")
        digits = 0
        for byte in line:
            if byte not in _HEX_DIGITS:
                break
            digits += 1
        if digits == 0:
            raise ProtocolError(400, "invalid chunk size")
        if digits > MAX_CHUNK_SIZE_DIGITS:
            raise ProtocolError(400, "chunk size overflow")
        ext = line[digits:]
        if ext and not _CHUNK_EXT_RE.fullmatch(ext):
            raise ProtocolError(400, "invalid chunk extension")
        size = int(line[:digits], 16)
        self._received += size
        if self._received > self._limits.max_body_size:
            raise ProtocolError(413, "request body too large")
        if size == 0:
            self._state = ReaderState.TRAILERS
        else:
            self._chunk_left = size
            self._state = ReaderState.CHUNK_DATA

    def _trailer_line(self, line: bytes) -> None:
        name, colon, value = line.partition(b":")
        if not colon or not _TOKEN_RE.fullmatch(name):
            raise ProtocolError(400, "invalid trailer field")
        if _BAD_FIELD_BYTES.search(value.strip(b" \t")):
            raise ProtocolError(400, "invalid character in trailer value")
        if name.lower() in FORBIDDEN_TRAILERS:
            raise ProtocolError(400, "forbidden trailer field")
        # Trailer fields are checked and dropped: never merged into headers
        # (RFC 9112 §7.1.2).


# -- responses --------------------------------------------------------------

STATUS_LINES: dict[int, str] = {s.value: f"HTTP/1.1 {s.value} {s.phrase}\r\n" for s in HTTPStatus}
SERVER_HEADER = "Server: prefork\r\n"
CONTINUE_RESPONSE = b"HTTP/1.1 100 Continue\r\n\r\n"


class DateHeader:
    """The ``Date`` header line, formatted at most once a second."""

    __slots__ = ("_second", "line")

    def __init__(self) -> None:
        self._second = -1
        self.line = ""
        self.refresh()

    def refresh(self, now: float | None = None) -> None:
        now = time.time() if now is None else now
        second = int(now)
        if second != self._second:
            self._second = second
            self.line = f"Date: {formatdate(second, usegmt=True)}\r\n"


DATE = DateHeader()


def status_line(status: int) -> str:
    line = STATUS_LINES.get(status)
    if line is None:
        line = f"HTTP/1.1 {status} \r\n"
    return line


def bodyless_status(status: int) -> bool:
    """1xx, 204 and 304 responses never have a body (RFC 9110 §6.4.1)."""
    return status < 200 or status == 204 or status == 304


def error_response(status: int, message: str) -> bytes:
    """A complete close-delimited error response with a short text body."""
    body = f"{message}\n".encode("latin-1", "replace")
    head = (
        f"{status_line(status)}{SERVER_HEADER}{DATE.line}"
        f"Content-Type: text/plain; charset=utf-8\r\nContent-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode("latin-1") + body
