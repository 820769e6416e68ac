"""Sans-I/O HTTP/1.1: the request reader (bytes in, requests out) and the response bytes.

Bytes go in through :meth:`RequestReader.feed`; complete :class:`Request`
objects come out. The reader finds where each head ends, runs the shared
checks on its raw bytes, hands it to a parser backend and then to
:func:`~prefork.http.request.build_request`, and frames the body (Content-Length
and our strict chunked decoder, with its trailers); it remembers the requests
built for repeated heads. What a request is, the limits and the checks on a
head live in :mod:`prefork.http.request`. Response serialisation lives here too
(status lines, ``Server``, the once-a-second ``Date``, error responses), so
both backends answer the same bytes the same way.

No asyncio, socket or ssl here.
"""

from __future__ import annotations

import enum
import re
from typing import Final

from prefork.errors import ProtocolError
from prefork.http.head_cache import HeadCache
from prefork.http.request import (
    BAD_FIELD_BYTES,
    HTTP_VERSIONS,
    HeadParser,
    HeadParts,
    Limits,
    Request,
    build_request,
    diagnose,
    first_fault,
    has_field_controls,
    request_line_error,
)
from prefork.http.scan import line_end as _scan_line_end

# Per request: a C static in the compiled build (an imported name is looked
# up in the module's dict on every use).
line_end: Final = _scan_line_end

# Chunk sizes longer than this many hex digits overflow 64 bits: 400.
MAX_CHUNK_SIZE_DIGITS: Final = 16
# Trailer fields that may not appear after the last chunk (RFC 9110 §6.5.1).
FORBIDDEN_TRAILERS: Final = frozenset(
    b"content-length transfer-encoding host content-encoding content-type content-range"
    b" trailer te connection expect authorization set-cookie cookie".split()
)

_TOKEN_RE: Final = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_TOKEN: Final = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_QUOTED: Final = rb'"(?:[^"\\\x00-\x08\x0a-\x1f\x7f]|\\[\t !-~\x80-\xff])*"'
# RFC 9112 §7.1.1: chunk-ext = *( BWS ";" BWS ext-name [ BWS "=" BWS ext-val ] )
_CHUNK_EXT_RE: Final = re.compile(
    rb"(?:[ \t]*;[ \t]*" + _TOKEN + rb"(?:[ \t]*=[ \t]*(?:" + _TOKEN + rb"|" + _QUOTED + rb"))?)*"
)
_HEX_DIGITS: Final = frozenset(b"0123456789abcdefABCDEF")
# A Content-Length too long for 64 bits: llhttp and h11 refuse it as malformed.
_HUGE_CONTENT_LENGTH: Final = re.compile(rb"(\r\ncontent-length:[ \t]*)[0-9]{20,}", re.IGNORECASE)
# What it is replaced with to parse the rest of the head: 20 digits, still a 413.
_TOO_LARGE_CONTENT_LENGTH: Final = b"1" + b"0" * 19


class ReaderState(enum.Enum):
    HEAD = 1
    BODY = 2
    CHUNK_SIZE = 3
    CHUNK_DATA = 4
    CHUNK_CRLF = 5
    TRAILERS = 6
    FAILED = 7
    PAUSED = 8  # after an Upgrade request, or a streamed body: parse no further for now


class RequestReader:
    """Turns a byte stream into complete requests, strictly.

    ``feed()`` appends complete requests to ``requests``. The first error
    raises ProtocolError and leaves the reader FAILED: nothing after a
    rejected request is ever parsed. ``head_started`` tells the caller that
    part of a head has arrived (for the header deadline); ``in_body`` that the
    body is being read (for the body deadline); ``want_continue`` that a
    ``100 Continue`` should be sent now.

    Streamed bodies (``stream_over``, None for never): a request whose body
    ``streams_body`` is queued as soon as its head is complete, and its body
    then comes out piece by piece through ``take_body`` (``body_done`` once
    the last piece has been parsed). No ``100 Continue`` is asked for: the
    app reading the body is what warrants one. After a streamed body the
    reader parses no further (PAUSED, as after an Upgrade) until ``resume``,
    so a pipelined request's body can never mix with the streamed one.

    ``one_ahead`` (the connection sets it): parse no request while a whole one
    waits to be taken, so that a handler that takes the connection over after
    a request (``take_unparsed``) gets the bytes that followed it as sent.
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
        "_streaming",
        "_whole_heads",
        "body_done",
        "fields_as_list",
        "one_ahead",
        "requests",
        "stream_over",
        "want_continue",
    )

    def __init__(
        self, parser: HeadParser, limits: Limits, head_cache: HeadCache | None = None
    ) -> None:
        self._parser = parser
        self._limits = limits
        self._head_cache = head_cache
        self._head_prescan = not parser.strict_fields
        self._whole_heads = parser.whole_heads
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
        self.one_ahead = False
        self.stream_over: int | None = None
        # The app is given the fields as a list (ASGI; the connection sets it
        # from its app interface): requests get the dict of the fields the
        # server reads, and the whole dict only if asked (build_request).
        self.fields_as_list = False
        self._streaming = False
        self.body_done = False

    def take(self) -> Request:
        """Remove and return the first complete request (``requests`` is not empty).

        The last one is taken with ``clear()``, not ``pop()``: a list shrunk to
        nothing by ``pop`` gets its item array back from the C allocator rather
        than Python's (which cannot hand out 0 bytes), and from then on every
        request paid two C ``realloc`` calls on a heap chunk that, with many
        connections, is out of cache. ``clear()`` frees the array, and the next
        append takes a fresh one from Python's allocator. (A new list per
        request instead would be freed a request later, after a collection
        moved it among other connections' objects: unlinking it touches those.)
        """
        requests = self.requests
        req = requests[0]
        if len(requests) == 1:
            requests.clear()
        else:
            del requests[0]
        return req

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

    def take_body(self) -> bytes:
        """The streamed body's bytes parsed since the last call (``b""`` if none yet)."""
        parts = self._body_parts
        if not parts:
            return b""
        data = parts[0] if len(parts) == 1 else b"".join(parts)
        parts.clear()
        return data

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
        except ProtocolError as exc:
            self._fail(exc)
            raise

    def _fail(self, exc: ProtocolError) -> None:
        self._state = ReaderState.FAILED
        self._buf = b""
        if exc.method is None and self._current is not None:
            exc.method = self._current.method  # a fault in the body of a request

    def eof(self) -> None:
        """The peer closed its side: a partial request is an error."""
        if self._state is ReaderState.HEAD:
            if self._buf.strip(b"\r\n"):
                self._state = ReaderState.FAILED
                raise ProtocolError(400, "connection closed inside a request head")
        elif self._state is not ReaderState.FAILED:
            exc = ProtocolError(400, "connection closed inside a request body")
            self._fail(exc)
            raise exc

    # -- the state machine ------------------------------------------------

    def _consume(self, buf: bytes) -> bytes:
        pos = 0
        end = len(buf)
        whole = self._whole_heads
        while pos < end:
            state = self._state
            if state is ReaderState.HEAD:
                if self.one_ahead and self.requests:
                    # A whole request waits for the app: parse no further (see
                    # ``one_ahead``); ``resume`` goes on once it is answered.
                    self._state = ReaderState.PAUSED
                    break
                # RFC 9112 §2.2: ignore CRLFs before a request line. (The byte
                # first: startswith with a start parses its arguments.)
                while pos < end and buf[pos] == 0x0D and buf.startswith(b"\r\n", pos):
                    pos += 2
                if pos >= end:
                    break
                if (
                    whole
                    and end - pos <= self._limits.line_limit
                    and buf[end - 1] == 0x0A
                    and buf[end - 2] == 0x0D
                    and buf[end - 3] == 0x0A
                    and buf[end - 4] == 0x0D
                    and buf[pos] > 0x20
                ):
                    # Most reads are one whole head: the backend may take the
                    # rest of the buffer as it is (parse_whole), rather than
                    # it being searched for its end first. Once it says no,
                    # this buffer goes the usual way.
                    if self._start_request(buf if pos == 0 else buf[pos:], True):
                        pos = end
                        continue
                    whole = False
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
                    fault = first_fault(buf, pos, end, self._limits, head=False)[0]
                    if fault is not None:
                        raise fault
                    break
                if stop - pos > self._limits.line_limit:
                    # Too long; but a bare CR or LF before the limit came first.
                    fault = first_fault(buf, pos, stop + 2, self._limits, head=False)[0]
                    raise fault or ProtocolError(431, "trailer line too long")
                line = buf[pos:stop]
                if b"\r" in line or b"\n" in line:
                    # Named as when the line arrives in pieces.
                    fault = first_fault(buf, pos, stop + 2, self._limits, head=False)[0]
                    raise fault or ProtocolError(400, "bare CR or LF in trailer")
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
        fault, self._head_checked = first_fault(
            buf, pos, len(buf), self._limits, True, self._head_checked
        )
        if fault is not None:
            raise fault

    def _check_head(self, head: bytes) -> int:
        """The shared checks on a whole head, before a backend parses it; returns
        where its request line ends (for ``_check_request_line``)."""
        size = len(head)
        # (llhttp skips any CR or LF before a request line; leading CRLFs are
        # gone already, so one here is bare.)
        checked, self._head_checked = self._head_checked, 0
        if size > self._limits.line_limit or head[0] < 0x21:
            fault = first_fault(head, 0, size, self._limits, True, checked)[0]
            if fault is not None:
                raise fault
        first = line_end(head)
        # The version before anything else in the head: llhttp takes HTTP/2.0,
        # RTSP/1.0 and ICE/1.0 and h11 any digit.digit; both then go on to
        # look at the fields, which would give 400 where the other says 505.
        # (A slice and two compares: endswith with bounds parses its arguments
        # at several times the cost, on every request.)
        version = head[first - 9 : first] if first >= 9 else b""
        if version != HTTP_VERSIONS[0] and version != HTTP_VERSIONS[1]:
            if head.find(b"\n", 0, first) >= 0 or head.find(b"\r", 0, first) >= 0:
                # A bare CR or LF ended the line: named as when it arrives alone.
                fault = first_fault(head, 0, size, self._limits, True)[0]
                if fault is not None:
                    raise fault
            raise request_line_error(head, 0, first)
        if self._head_prescan:
            # llhttp rejects these itself; h11 would accept them.
            self._prescan(head, checked)
        return first

    def _check_request_line(self, head: bytes, first: int) -> None:
        """llhttp's leniencies in a request line, refused as h11 refuses them.

        llhttp takes runs of spaces between the parts, and ends the line at a
        bare LF, then finds no version (505); h11's prescan says 400, as does
        a split read, and names the faults of its prescan before a malformed
        line. Run on a head llhttp refused, before its error is named; on one
        it took, ``_start_request`` checks the parts' lengths instead.
        """
        if head.count(b" ", 0, first) != 2 or head.find(b"\n", 0, first) >= 0:
            self._prescan(head)
            raise ProtocolError(400, "malformed request line")

    def _prescan(self, head: bytes, checked: int = 0) -> None:
        """Raise the fault in a head that llhttp refuses itself and h11 would take.

        Run before h11 parses a head, and after llhttp refused one: so both
        backends name these faults alike (the backends' own texts differ).
        """
        crlf = head.count(b"\r\n")
        if head.count(b"\n") != crlf or head.count(b"\r") != crlf:
            fault = first_fault(head, 0, len(head), self._limits, True, checked)[0]
            raise fault or ProtocolError(400, "bare CR or LF in request head")
        if b"\n " in head or b"\n\t" in head:
            raise ProtocolError(400, "obsolete line folding in request head")

    def _named(self, exc: ProtocolError, head: bytes) -> ProtocolError:
        """A backend's error on ``head`` in the words both backends use."""
        if exc.status != 400:
            return exc
        if not self._head_prescan:
            self._prescan(head)  # raises what h11 would have met first
        return diagnose(head, self._limits)

    def _start_request(self, head: bytes, whole: bool = False) -> bool:
        """Start the request of ``head``; False if ``whole`` and it is not one head.

        ``whole``: ``head`` is the rest of the buffer, which may hold more than
        one head (``HeadParser.parse_whole``). What is checked before the
        backend parses it looks at its first line only (its size is within
        the line limit), as it would at the head alone.
        """
        cache = self._head_cache
        if cache is not None:
            copy = cache.lookup(head)
            if copy is not None:
                self._head_checked = 0
                self._begin(copy)
                return True
        first = self._check_head(head)
        if whole:
            parts = self._parser.parse_whole(head, first)
            if parts is None:
                return False
            method, target, version, raw, known, present = parts
        else:
            method, target, version, raw, known, present = self._parse(head, first)
        if not self._head_prescan and len(method) + len(target) + 10 != first:
            # "METHOD SP target SP HTTP/x.y" is longer: llhttp took more than
            # one space somewhere (cheaper to see here than to count before).
            self._check_request_line(head, first)
        # (A backend that lets control characters through has its values
        # searched one by one only when the head holds one somewhere.)
        check_fields = self._head_prescan and has_field_controls(head)
        try:
            req = build_request(
                method,
                target,
                version,
                raw,
                self._limits,
                check_fields,
                self.fields_as_list,
                known,
                present,
            )
        except ProtocolError as exc:
            # (Whole or not, the same fields: the same answer.)
            exc.method = method
            raise
        if whole and (req.chunked or req.content_length):
            return False  # its body came with it: the head ends before the buffer does
        if cache is not None:
            cache.remember(head, req)
        self._begin(req)
        return True

    def _parse(self, head: bytes, first: int) -> HeadParts:
        """The backend's parts of ``head``; its refusal in the words both backends use."""
        try:
            return self._parser.parse(head, first)
        except ProtocolError as exc:
            if not self._head_prescan:
                self._check_request_line(head, first)
            if exc.status != 400 or _HUGE_CONTENT_LENGTH.search(head) is None:
                raise self._named(exc, head) from None
            # A Content-Length too long for 64 bits is a number, just too
            # large: parse the rest of the head with a stand-in that gets 413.
            head = _HUGE_CONTENT_LENGTH.sub(rb"\g<1>" + _TOO_LARGE_CONTENT_LENGTH, head)
            try:
                return self._parser.parse(head, first)
            except ProtocolError as exc:
                raise self._named(exc, head) from None

    def _begin(self, req: Request) -> None:
        """Start reading the body of ``req``, or queue it when it has none."""
        over = self.stream_over
        if over is not None and streams_body(req, over):
            # Queued now; the body follows through take_body().
            self.requests.append(req)
            self._streaming = True
            self.body_done = False
            self._current = req
            self._body_parts = []
            if req.chunked:
                self._received = 0
                self._state = ReaderState.CHUNK_SIZE
            else:
                self._chunk_left = req.content_length
                self._state = ReaderState.BODY
        elif req.chunked:
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
            if "upgrade" in req.fields and "upgrade" in req.fields.get("connection", "").lower():
                # What follows may be another protocol for a handler that takes
                # the connection over (ctx.client.read): keep it unparsed.
                self._state = ReaderState.PAUSED

    def _finish_request(self) -> None:
        req = self._current
        assert req is not None
        if self._streaming:
            # The pieces stay for take_body(); nothing more is parsed until resume().
            self._streaming = False
            self.body_done = True
            self._current = None
            self._state = ReaderState.PAUSED
            return
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
        if b"\n" in line or b"\r" in line:
            raise ProtocolError(400, "bare CR or LF in chunk size line")
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
        if BAD_FIELD_BYTES.search(value.strip(b" \t")):
            raise ProtocolError(400, "invalid character in trailer value")
        if name.lower() in FORBIDDEN_TRAILERS:
            raise ProtocolError(400, "forbidden trailer field")
        # Trailer fields are checked and dropped: never merged into headers
        # (RFC 9112 §7.1.2).


def streams_body(req: Request, over: int) -> bool:
    """Whether a reader with ``stream_over`` set streams ``req``'s body.

    Chunked bodies (their size is unknown), bodies over ``over`` bytes, and
    bodies behind ``Expect: 100-continue`` (the client waits for the app);
    smaller bodies are read whole first, one event for the app.
    """
    return req.chunked or req.content_length > over or req.expect_continue
