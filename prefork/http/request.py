"""One request head, checked: Request, the limits and the strict RFC 9112/9110 checks.

A parser backend (``parsers/``, behind :class:`HeadParser`) turns one request
head into ``(method, target, version, raw headers)``; :func:`build_request`
applies the semantic checks to those parts once for both backends (version,
method, field values, repeated fields, the target's form, Host, framing,
413/431, Expect), joins repeated header fields and makes the keep-alive
decision. :func:`first_fault` finds the earliest fault in the raw bytes of a
head or trailer line (bare CR/LF, 414/431, a bad request line) however they
were split into reads. :func:`parse_args` parses a query string.
:mod:`prefork.http.protocol` frames the byte stream and calls these.

No asyncio, socket or ssl here.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Final, Protocol
from urllib.parse import parse_qsl

from prefork.errors import ProtocolError
from prefork.http.fields import (
    ALL_PRESENT,
    HAS_CONNECTION,
    HAS_CONTENT_LENGTH,
    HAS_EXPECT,
    HAS_TRANSFER_ENCODING,
    SINGLETON_FIELDS,
    field_name,
    split_fields,
)

RawHeaders = list[tuple[bytes, bytes]]
# What a parser backend makes of a head: method, target, version, raw fields.
# method, target, version, the fields, and the server's fields as a dict when
# the backend made it (http.fields.split_fields' dict; None: not made, or one
# of them repeats), with the mask of those in the head (http.fields.SERVER_ORDER;
# ALL_PRESENT without the dict).
HeadParts = tuple[str, str, str, RawHeaders, dict[str, str] | None, int]
_NO_RAW_HEADERS: Final[RawHeaders] = []
_NO_HEADERS: Final[dict[str, str]] = {}

# The request methods llhttp knows; both backends accept exactly these so they
# answer alike (h11 alone would take any token).
_METHODS_TEXT: Final = """
    DELETE GET HEAD POST PUT OPTIONS TRACE COPY LOCK MKCOL MOVE PROPFIND PROPPATCH
    SEARCH UNLOCK BIND REBIND UNBIND ACL REPORT MKACTIVITY CHECKOUT MERGE M-SEARCH
    NOTIFY SUBSCRIBE UNSUBSCRIBE PATCH PURGE MKCALENDAR LINK UNLINK SOURCE QUERY
"""
KNOWN_METHODS: Final = frozenset(_METHODS_TEXT.split())

# The whole head may not exceed this many bytes, whatever the per-line limit
# (a bound on memory per connection): 431.
MIN_HEAD_LIMIT_BYTES: Final = 64 * 1024

# RFC 9110 §5.5: field-value = *field-content; VCHAR, obs-text, SP and HTAB only.
BAD_FIELD_BYTES: Final = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
# Each byte BAD_FIELD_BYTES finds, but CR and LF (a head has them at every
# line end), translated to NUL, and NUL itself: see has_field_controls.
_CONTROLS_TO_NUL: Final = bytes(
    0 if b not in (0x0A, 0x0D) and BAD_FIELD_BYTES.match(bytes((b,))) else b for b in range(256)
)
# RFC 3986 host: reg-name / IPv4 / IP-literal, then an optional port.
_HOST_RE: Final = re.compile(r"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-._~!$&'()*+,;=%]+)(?::[0-9]*)?")
# The request line of every request we serve ends in one of these.
HTTP_VERSIONS: Final = (b" HTTP/1.1", b" HTTP/1.0")
# A well-formed request line (RFC 9112 §3), to tell 505 from 400 when it does not.
_REQUEST_LINE_RE: Final = re.compile(
    rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+ [\x21-\x7e]+ HTTP/([0-9])\.([0-9])"
)
# What a backend says of a head it cannot parse: one plain line, the same for
# both (their own texts differ and show internals).
MALFORMED_HEAD: Final = "malformed request head"
# Line ends, proper or bare, in the order they come.
_LINE_ENDS: Final = re.compile(rb"\r\n|[\r\n]")


class HeadParser(Protocol):
    """A parser backend: one request head in, its parts out."""

    # True when the backend itself rejects control characters and obs-fold in
    # the head, so the shared pre-scan can be skipped for it.
    strict_fields: bool

    # True when ``parse_whole`` can tell a buffer that is one whole head.
    whole_heads: bool

    # True when the fields' names come lower-cased (else as sent).
    lowered_names: bool

    def parse(self, head: bytes, line_end: int = -1) -> HeadParts:
        """Parse a head ending in CRLF CRLF; raise ProtocolError on bad syntax.

        ``line_end``: where the request line's CRLF is, if the caller knows.
        """
        ...

    def parse_whole(self, buf: bytes, line_end: int) -> HeadParts | None:
        """Parse ``buf``, which ends in CRLF CRLF, as one head if it is one.

        None when it holds more than one message or the backend refuses it:
        then ``parse`` judges the head found by its end alone. (Not asked of a
        backend whose ``whole_heads`` is False.) A head whose fields frame a
        body may come back with that body parsed as part of it: the caller
        tells those by their request.
        """
        ...


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
        "_headers",
        "body",
        "cached",
        "chunked",
        "content_length",
        "expect_continue",
        "fields",
        "keep_alive",
        "logged",
        "lowered",
        "method",
        "path",
        "present",
        "query",
        "raw_headers",
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
        whole: bool = True,
    ) -> None:
        """``headers``: every field, or (``whole`` False) only the server's
        (``http.fields``), the rest then read from ``raw_headers`` when asked."""
        self.method = method
        self.target = target
        self.path = path
        self.query = query
        self.version = version
        # What the server itself reads (http.fields.SERVER_FIELDS): the whole
        # dict, or only those fields when no one has asked for the rest.
        self.fields = headers
        self._headers: dict[str, str] | None = headers if whole else None
        # The fields with lower-cased names, made with ``fields`` (None: not
        # made): ASGI's scope["headers"] of this request.
        self.lowered: list[tuple[bytes, bytes]] | None = None
        # Which of the server's fields the head holds, when the parser said
        # (http.fields.SERVER_ORDER's bits): a field whose bit is clear is not
        # looked up in ``fields``. ALL_PRESENT: look each up.
        self.present = ALL_PRESENT
        self.keep_alive = keep_alive
        self.body = b""
        self.content_length = 0
        self.chunked = False
        self.expect_continue = False
        # The fields as the parser gave them (names as sent, repeats apart):
        # ASGI's scope["headers"]. The parser's own list, kept, not copied.
        self.raw_headers: RawHeaders = _NO_RAW_HEADERS
        # Built from the reader's cache of parsed heads (a clone of a template):
        # its raw_headers list is the template's, shared by every request of
        # that head, so what an app interface derives from it may be
        # remembered by that list's identity. False for a freshly parsed head
        # (remembering those would keep every varied head alive for nothing).
        self.cached = False
        # The access log's log_headers values, taken before the handler could change headers.
        self.logged: tuple[str | None, ...] | None = None

    def __repr__(self) -> str:
        return f"<Request {self.method} {self.target} HTTP/{self.version}>"

    @property
    def headers(self) -> dict[str, str]:
        """Every field by lower-cased name, repeats joined (made when first asked for)."""
        headers = self._headers
        if headers is None:
            # (A head whose fields the whole dict would refuse was refused
            # when it was read: split_fields gave way to it.)
            headers = self._headers = _join_fields(self.raw_headers, False)
        return headers

    @headers.setter
    def headers(self, headers: dict[str, str]) -> None:
        self._headers = self.fields = headers

    def drop_fields(self, headers: bool = True) -> None:
        """Let go of the parsed fields of a request that outlives its exchange
        (a WebSocket's, kept for its access line): the parser's list, and the
        dict unless ``headers`` is False (a handler that was given it keeps it).
        Shared empty ones stand in: nothing adds to a parsed request's fields."""
        if not headers and self._headers is None:
            self._headers = _join_fields(self.raw_headers, False)  # kept: made now
        self.raw_headers = _NO_RAW_HEADERS
        self.lowered = None
        if headers:
            self.headers = _NO_HEADERS

    def clone(self) -> Request:
        """A copy with its own headers dict (a handler may change the one it gets);
        one whose fields are the server's only stays so."""
        # Through __init__ rather than Request.__new__: a compiled (mypyc) class
        # cannot be made without it.
        whole = self._headers is self.fields
        other = Request(
            self.method,
            self.target,
            self.path,
            self.query,
            self.version,
            self.fields.copy(),
            self.keep_alive,
            whole,
        )
        other.body = self.body
        other.content_length = self.content_length
        other.chunked = self.chunked
        other.expect_continue = self.expect_continue
        other.present = self.present  # (of the head: true of the copy's fields too)
        raw = self.raw_headers
        # Shared, as nothing changes it; unless it is also the app's list
        # (build_request's lowered), which the app may change.
        other.raw_headers = raw.copy() if self.lowered is raw else raw
        other.cached = True
        return other


def parse_args(query: str) -> dict[str, Any]:
    """The query string as ``{name: value}``; a repeated name maps to a list.

    What ``parse_qsl(query, keep_blank_values=True)`` gives, folded into a dict.
    """
    if not query:
        return {}
    args: dict[str, Any] = {}
    if "%" not in query and "+" not in query:
        # Nothing to unquote, so each pair is its text split at the first "="
        # when every pair has an "=" and names do not repeat (the usual
        # query), else parse_qsl below (a pair without "=", an empty pair, a
        # repeated name). (A loop over partition: faster than building the
        # dict from map(str.split, ...), compiled or not.)
        for part in query.split("&"):
            name, sep, value = part.partition("=")
            if not sep or name in args:
                args.clear()
                break
            args[name] = value
        else:
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


def _split_target(method: str, target: str) -> tuple[str, str, str | None]:
    """(path, query, authority) of a request target, checking its form (RFC 9112 §3.2).

    ``authority`` is None except for the absolute form.
    """
    if "#" in target:
        raise ProtocolError(400, "fragment in request target")
    if target[:1] == "/":
        path, sep, query = target.partition("?")
        return path, query, None
    if target == "*":
        if method != "OPTIONS":
            raise ProtocolError(400, "asterisk-form target is only for OPTIONS")
        return "*", "", None
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
        return path or "/", query, authority
    raise ProtocolError(400, "bad request target")


def _split_tokens(value: str) -> list[str]:
    return [t.strip().lower() for t in value.split(",") if t.strip()]


# Host values known good: a few dozen in real traffic. Bounded (it flatters
# traffic with fewer than _CACHE_MAX virtual hosts).
_HOST_CACHE: Final[set[str]] = set()
_CACHE_MAX: Final = 512
_SINGLE_FIELDS: Final = {name.lower(): name for name in SINGLETON_FIELDS}


def _join_fields(raw: RawHeaders, check_fields: bool) -> dict[str, str]:
    """The header dict, line by line: repeated fields joined, refused or checked.

    ``check_fields``: refuse control characters in values (a backend that
    does not refuse them itself).
    """
    headers: dict[str, str] = {}
    for bname, bvalue in raw:
        if check_fields and BAD_FIELD_BYTES.search(bvalue):
            raise ProtocolError(400, "invalid character in header value")
        name = field_name(bname).text
        if name in headers:
            if name in _SINGLE_FIELDS:
                raise ProtocolError(400, f"more than one {_SINGLE_FIELDS[name]} header")
            sep = "; " if name == "cookie" else ", "
            headers[name] = headers[name] + sep + bvalue.decode("latin-1")
        else:
            headers[name] = bvalue.decode("latin-1")
    return headers


def _valid_host(host: str) -> bool:
    if host in _HOST_CACHE:
        return True
    if not _HOST_RE.fullmatch(host):
        return False
    if len(_HOST_CACHE) < _CACHE_MAX:
        _HOST_CACHE.add(host)
    return True


def has_field_controls(head: bytes) -> bool:
    """Whether a head holds a byte BAD_FIELD_BYTES finds, other than CR and LF.

    One pass over a head whose line ends were checked (no bare CR or LF):
    when it says no, no field value in it can hold such a byte, and the
    per-value search of ``check_fields`` (~10x the cost) can be skipped.
    """
    return b"\0" in head.translate(_CONTROLS_TO_NUL)


def build_request(
    method: str,
    target: str,
    version: str,
    raw: RawHeaders,
    limits: Limits,
    check_fields: bool,
    server_only: bool = False,
    known: dict[str, str] | None = None,
    present: int = ALL_PRESENT,
) -> Request:
    """Apply the semantic checks of RFC 9112/9110 to a parsed head.

    ``server_only``: the request's dict gets only the fields the server reads
    and its ``lowered`` list every field (``http.fields.split_fields``); the
    whole dict is made if asked for. (Not with ``check_fields``.)
    ``known``: the parser made split_fields' dict itself (its names are then
    lower-cased in ``raw``, whose pairs the list shares), and ``present``
    says which of its fields the head holds: the others are not looked up.
    """
    if version != "1.1" and version != "1.0":
        raise ProtocolError(505, f"HTTP version {version} not supported")
    if method not in KNOWN_METHODS:
        raise ProtocolError(
            400, "CONNECT is not supported" if method == "CONNECT" else "unknown method"
        )
    headers: dict[str, str] | None = None
    lowered: RawHeaders | None = None
    # (startswith: a slice would make a one-character str to compare.)
    origin_form = target.startswith("/")
    if server_only and not check_fields and origin_form:
        # (An absolute-form target sets Host below: the whole dict for those.)
        if known is not None:
            # (The parser's list itself, which the app may change: a head
            # cache entry made from this request gets a copy, in clone.)
            headers, lowered = known, raw
        else:
            split = split_fields(raw)
            if split is not None:
                headers, lowered = split
    elif not check_fields:
        # One comprehension when no name repeats (the usual head): the same
        # dict as _join_fields gives, at about half its cost. A repeat takes
        # the line-by-line path, with its errors.
        headers = {field_name(bname).text: bvalue.decode("latin-1") for bname, bvalue in raw}
    if headers is None or (lowered is None and len(headers) != len(raw)):
        headers = _join_fields(raw, check_fields)
    if headers is not known:
        present = ALL_PRESENT  # (the mask is of the parser's dict)

    if origin_form and "#" not in target:
        # origin-form, nearly every request: what _split_target gives, inline.
        path, _, query = target.partition("?")
        authority = None
    else:
        path, query, authority = _split_target(method, target)

    host = headers.get("host")
    if host is None:
        if version == "1.1":
            raise ProtocolError(400, "missing Host header")
    elif not _valid_host(host):
        raise ProtocolError(400, "invalid Host header")
    if authority is not None:
        # RFC 9112 §3.2.2: with an absolute-form target the server ignores
        # Host and uses the target's authority; the app sees that one.
        headers["host"] = authority

    conn_header = headers.get("connection") if present & HAS_CONNECTION else None
    if version == "1.1":
        keep_alive = conn_header is None or "close" not in _split_tokens(conn_header)
    elif conn_header is None:
        keep_alive = False
    else:
        tokens = _split_tokens(conn_header)
        keep_alive = "keep-alive" in tokens and "close" not in tokens

    req = Request(method, target, path, query, version, headers, keep_alive, lowered is None)
    req.raw_headers = raw
    req.lowered = lowered
    req.present = present

    te = headers.get("transfer-encoding") if present & HAS_TRANSFER_ENCODING else None
    cl = headers.get("content-length") if present & HAS_CONTENT_LENGTH else None
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

    expect = headers.get("expect") if present & HAS_EXPECT else None
    if expect is not None:
        if expect.strip().lower() != "100-continue":
            raise ProtocolError(417, "unsupported Expect")
        req.expect_continue = version == "1.1" and (req.chunked or req.content_length > 0)
    return req


_TOKEN_BYTES: Final = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


def diagnose(head: bytes, limits: Limits) -> ProtocolError:
    """The error for a head a parser backend refused, named as the other would name it.

    h11 and llhttp refuse different heads (h11 checks Host itself, llhttp
    the framing fields...), in words of their own. So that both answer the
    same line, the head is split leniently (request line at single spaces,
    fields at the colon) and put through the checks of :func:`build_request`:
    their error if they find one, else a plain "malformed request head".
    Only on the error path, so it may be slow.
    """
    lines = head[:-4].split(b"\r\n")
    parts = lines[0].split(b" ")
    if len(parts) != 3 or not _TOKEN_BYTES.fullmatch(parts[0]):
        return ProtocolError(400, "malformed request line")
    method, target, version = parts
    if any(byte < 0x21 or byte > 0x7E for byte in target):
        return ProtocolError(400, "malformed request line")
    raw: RawHeaders = []
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon or not _TOKEN_BYTES.fullmatch(name):
            return ProtocolError(400, MALFORMED_HEAD)
        raw.append((name, value.strip(b" \t")))
    try:
        build_request(
            method.decode("ascii"),
            target.decode("ascii"),
            version[5:].decode("ascii"),
            raw,
            limits,
            check_fields=True,
        )
    except ProtocolError as exc:
        return exc
    return ProtocolError(400, MALFORMED_HEAD)


def request_line_error(buf: bytes, start: int, end: int) -> ProtocolError:
    """The error for a request line that does not end in HTTP/1.1 or HTTP/1.0."""
    match = _REQUEST_LINE_RE.fullmatch(buf, start, end)
    if match is None:
        return ProtocolError(400, "malformed request line")
    major, minor = match[1].decode(), match[2].decode()
    return ProtocolError(505, f"HTTP version {major}.{minor} not supported")


def first_fault(
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
        if first and stop + 1 < at and not buf.endswith(HTTP_VERSIONS, pos, stop):
            at, fault = stop + 1, request_line_error(buf, pos, stop)
        line = stop + 2
        first = False
    return fault, line - pos
