"""The response side, sans I/O: a handler's header fields, compression's header
changes, and the bytes of a response head and of chunks.

Everything here takes values and returns text or bytes; the caches it uses are
plain dicts that the caller owns (one set per worker). Writing is the engine's
job (``prefork.engine.connection``).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from email.utils import formatdate
from http import HTTPStatus
from typing import Any, Final

from prefork.http import compression
from prefork.http.request import Request

# Header names the server owns: a handler's value is replaced or interpreted.
FRAMING: Final = frozenset(("content-length", "transfer-encoding", "connection", "date"))
DEFAULT_CONTENT_TYPE: Final = "text/plain; charset=utf-8"
LAST_CHUNK: Final = b"0\r\n\r\n"

# (header text, lower-case name -> value, has a Server field, asks to close)
Fields = tuple[str, Mapping[str, str], bool, bool]
FieldsCache = dict[tuple[Any, ...], Fields]
NegotiatedCache = dict[tuple[str, str | None, bool], str]

# The text of a response's header fields, by the handler's (name, value)
# pairs: handlers return the same few header sets again and again, so the
# checks and the lower-casing run once per distinct set and worker.
FIELDS_CACHE_MAX_ENTRIES: Final = 256
# The header text after compression's changes by (text, coding, vary), a pure
# function of those; a handler sends few distinct header sets. At most 256 x 2
# KiB per worker.
NEGOTIATED_MAX_ENTRIES: Final = 256
NEGOTIATED_MAX_TEXT: Final = 2048

_NO_FIELDS: Final[Fields] = ("", {}, False, False)


class BadHeader(Exception):
    """A response header the app set cannot be sent (CR/LF/NUL, not latin-1)."""


def body_length(response: bytes) -> int:
    """The body bytes of a whole response (what follows the head)."""
    return len(response) - response.find(b"\r\n\r\n") - 4


def fields(cache: FieldsCache, headers: Mapping[str, Any] | None, text_body: bool) -> Fields:
    """Handler headers -> (header text, lower-case map, has Server, asks to close).

    ``text_body``: a ``str`` body, which gets a text/plain content type when the
    handler set none. The map may be shared through ``cache``: never change it.
    Raises BadHeader.
    """
    if not headers and not text_body:
        return _NO_FIELDS
    try:
        key = (text_body, *headers.items()) if headers else (text_body,)
        hit = cache.get(key)
    except TypeError:  # an unhashable value: work it out every time
        key, hit = None, None
    if hit is not None:
        return hit
    out = build_fields(headers, text_body)
    if key is not None:
        if len(cache) >= FIELDS_CACHE_MAX_ENTRIES:
            cache.clear()  # start over rather than keep stale sets forever
        cache[key] = out
    return out


def build_fields(headers: Mapping[str, Any] | None, text_body: bool) -> Fields:
    lines: list[str] = []
    lower: dict[str, str] = {}
    close = False
    for name, value in (headers or {}).items():
        if not isinstance(value, str):
            value = str(value)
        if not isinstance(name, str):
            raise BadHeader(f"header name {name!r} is not a string")
        lname = name.lower()
        if lname in FRAMING:
            if lname == "connection" and "close" in value.lower():
                close = True
            continue
        lower[lname] = value
        lines.append(f"{name}: {value}\r\n")
    if text_body and "content-type" not in lower:
        lower["content-type"] = DEFAULT_CONTENT_TYPE
        lines.append(f"content-type: {DEFAULT_CONTENT_TYPE}\r\n")
    text = "".join(lines)
    check_text(text, len(lines))
    return text, lower, "server" in lower, close


def check_text(text: str, lines: int) -> None:
    """Raise BadHeader unless ``text`` is ``lines`` latin-1 lines, each ending in CRLF.

    An app's CR, LF or NUL must never inject a header or split the response.
    """
    if text.count("\n") != lines or text.count("\r") != lines or "\0" in text:
        raise BadHeader("response header contains CR, LF or NUL")
    try:
        text.encode("latin-1")
    except UnicodeEncodeError:
        raise BadHeader("response header is not latin-1 text") from None


def negotiate(
    policy: compression.Policy,
    cache: NegotiatedCache,
    req: Request,
    status: int,
    lower: Mapping[str, str],
    text: str,
    body_len: int | None,
) -> tuple[str | None, str]:
    """The coding to apply to the response to ``req`` (or None) and the header
    text, with Vary etc. updated. ``body_len``: None for a stream."""
    method = req.method
    if not policy.enabled or method == "HEAD" or bodyless_status(status):
        return None, text
    if body_len is not None and body_len < policy.min_size:
        return None, text
    coding, vary = policy.choose(method, status, req.fields.get("accept-encoding"), lower, body_len)
    if coding is not None or vary:
        key = (text, coding, vary)
        new = cache.get(key)
        if new is None:
            changed = dict(lower)  # ``lower`` may be shared through the fields cache
            compression.apply_headers(changed, coding, vary)
            new = replace_fields(text, lower, changed)
            if len(text) <= NEGOTIATED_MAX_TEXT:
                if len(cache) >= NEGOTIATED_MAX_ENTRIES:
                    cache.clear()
                cache[key] = new
        text = new
    return coding, text


def replace_fields(text: str, before: Mapping[str, str], after: Mapping[str, str]) -> str:
    """``text`` with the fields that differ between ``before`` and ``after`` replaced.

    Every other line stays as the handler wrote it, in its case and repeated if it
    was (two ``Set-Cookie`` keys differing in case are two lines). ``text`` holds
    one CRLF per line and no other CR or LF (``build_fields`` checked).
    """
    touched = {name for name in before.keys() | after.keys() if before.get(name) != after.get(name)}
    lines = [
        line + "\r\n"
        for line in text.split("\r\n")[:-1]
        if line.partition(":")[0].lower() not in touched
    ]
    lines += [f"{name}: {value}\r\n" for name, value in after.items() if name in touched]
    return "".join(lines)


def encode_head(
    status: int,
    text: str,
    has_server: bool,
    framing: str,
    keep_alive: bool,
    http10: bool,
) -> bytes:
    """The response head: status line, Server, Date, ``text``, ``framing``, Connection."""
    return head_with_line(status_line(status), text, has_server, framing, keep_alive, http10)


def head_with_line(
    line: str, text: str, has_server: bool, framing: str, keep_alive: bool, http10: bool
) -> bytes:
    """``encode_head`` with the status line given (``line``, CRLF included)."""
    if keep_alive:
        # An HTTP/1.0 client that asked to keep the connection must be told it is kept.
        connection = "Connection: keep-alive\r\n" if http10 else ""
    else:
        connection = "Connection: close\r\n"
    server = "" if has_server else SERVER_HEADER
    return f"{line}{server}{DATE.line}{text}{framing}{connection}\r\n".encode("latin-1")


def chunk(data: bytes) -> bytes:
    """One chunk of a chunked body (``data`` must not be empty)."""
    return b"%x\r\n%b\r\n" % (len(data), data)


# -- status lines, the Server and Date fields, error responses ----------------

STATUS_LINES: Final[dict[int, str]] = {
    s.value: f"HTTP/1.1 {s.value} {s.phrase}\r\n" for s in HTTPStatus
}
SERVER_HEADER: Final = "Server: prefork\r\n"
CONTINUE_RESPONSE: Final = b"HTTP/1.1 100 Continue\r\n\r\n"


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


DATE: Final = DateHeader()


def status_line(status: int) -> str:
    line = STATUS_LINES.get(status)
    if line is None:
        line = f"HTTP/1.1 {status} \r\n"
    return line


def bodyless_status(status: int) -> bool:
    """1xx, 204 and 304 responses never have a body (RFC 9110 §6.4.1)."""
    return status < 200 or status == 204 or status == 304


def error_response(status: int, message: str, method: str | None = None) -> bytes:
    """A complete close-delimited error response with a short text body.

    ``method``: the refused request's, when known; to HEAD the head alone is
    sent (RFC 9110 §9.3.2), its Content-Length the size a GET would have got.
    """
    body = f"{message}\n".encode("latin-1", "replace")
    head = (
        f"{status_line(status)}{SERVER_HEADER}{DATE.line}"
        f"Content-Type: text/plain; charset=utf-8\r\nContent-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    ).encode("latin-1")
    return head if method == "HEAD" else head + body
