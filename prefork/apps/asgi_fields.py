"""The rules of an ASGI app's response headers, and their text.

``response_fields`` checks an app's ``http.response.start`` headers and turns
them into the header text of the response (``cached_fields`` remembers it per
distinct header list); ``whole_head`` makes (and remembers) the head of a
whole response. Compiled in the compiled build: they run on every response.
"""

from __future__ import annotations

from typing import Any, Final

from prefork.apps.asgi_messages import AsgiMessageError
from prefork.http.response import DATE, encode_head

# Header names whose values the server owns (framing) or reads.
_CONTENT_LENGTH: Final = b"content-length"
_SERVER_OWNED: Final = frozenset((b"content-length", b"transfer-encoding", b"connection", b"date"))
# Checked and lower-cased response header names (a token: RFC 9110 §5.1).
_TOKEN_BYTES: Final = frozenset(
    b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
)
_NAMES: Final[dict[bytes, bytes]] = {}
_NAMES_MAX: Final = 512
# response_fields by the app's headers: apps send the same few header lists
# again and again (a framework's defaults, one Content-Length per body size),
# so the checks and the text are worked out once per distinct list.
_FIELDS_CACHE: Final[dict[tuple[Any, ...], Fields]] = {}
_FIELDS_CACHE_MAX: Final = 256


# (header text, lower-case name -> value, has a Server field, asks to close, Content-Length)
Fields = tuple[str, dict[str, str], bool, bool, int | None]


def cached_fields(headers: Any) -> Fields:
    """``response_fields(headers)``, remembered for hashable header lists."""
    try:
        key = tuple(headers)
        hit = _FIELDS_CACHE.get(key)
    except TypeError:  # not iterable, or lists inside: worked out each time
        return response_fields(headers)
    if hit is None:
        hit = response_fields(headers)
        if len(_FIELDS_CACHE) >= _FIELDS_CACHE_MAX:
            _FIELDS_CACHE.clear()  # start over rather than keep stale lists forever
        _FIELDS_CACHE[key] = hit
    return hit


def response_fields(headers: Any) -> Fields:
    """An app's response headers -> (header text, lower-case map, has Server,
    asks to close, its Content-Length).

    Names must be tokens and values free of CR, LF and NUL (no header
    injection, no split response); both must be bytes. Framing fields
    (Content-Length, Transfer-Encoding, Connection, Date) are the server's:
    they are read, not copied. Raises AsgiMessageError.
    """
    lines: list[bytes] = []
    lower: dict[str, str] = {}
    close = False
    length: int | None = None
    names = _NAMES
    try:
        for name, value in headers:
            lname = names.get(name)
            if lname is None:
                if type(name) is not bytes:
                    raise AsgiMessageError(f"header name {name!r} is not bytes")
                if not name or not _TOKEN_BYTES.issuperset(name):
                    raise AsgiMessageError(f"header name {name!r} is not a token")
                lname = name.lower()
                if len(names) < _NAMES_MAX:
                    names[name] = lname
            if type(value) is not bytes:
                raise AsgiMessageError(f"header {name!r}: value {value!r} is not bytes")
            if lname in _SERVER_OWNED:
                if lname == _CONTENT_LENGTH:
                    text = value.strip()
                    if not text.isdigit() or (length is not None and int(text) != length):
                        raise AsgiMessageError(f"bad Content-Length {value!r}")
                    length = int(text)
                elif lname == b"connection" and b"close" in value.lower():
                    close = True
                continue
            lines.append(b"%s: %s\r\n" % (name, value))
            key = lname.decode("latin-1")
            old = lower.get(key)
            lower[key] = (
                value.decode("latin-1") if old is None else f"{old}, {value.decode('latin-1')}"
            )
    except (TypeError, ValueError) as exc:
        if isinstance(exc, AsgiMessageError):
            raise
        raise AsgiMessageError(f"headers must be (name, value) pairs of bytes: {exc}") from None
    raw = b"".join(lines)
    n = len(lines)
    if raw.count(b"\n") != n or raw.count(b"\r") != n or b"\0" in raw:
        raise AsgiMessageError("a header value contains CR, LF or NUL")
    return raw.decode("latin-1"), lower, "server" in lower, close, length


# Whole responses' heads by header text, then by (body size, status, has a
# Server field, keep-alive, HTTP/1.0) packed into one int, for one Date line:
# an app answers the same few heads again and again, so each is built once a
# second, not per response. (Two lookups that hash a str whose hash it keeps
# and a small int cost less than making, hashing and comparing a 6-tuple.)
_HEADS_MAX: Final = 256


class _WholeHeads:
    __slots__ = ("by_text", "count", "date")

    def __init__(self) -> None:
        self.date = ""
        self.by_text: dict[str, dict[int, bytes]] = {}
        self.count = 0

    def clear(self) -> None:
        self.by_text.clear()
        self.count = 0


_WHOLE_HEADS: Final = _WholeHeads()


def whole_head(
    status: int, text: str, has_server: bool, size: int, keep_alive: bool, http10: bool
) -> bytes:
    """``encode_head`` of a response whose body is ``size`` bytes (Content-Length), remembered."""
    cache = _WHOLE_HEADS
    line = DATE.line
    if cache.date is not line:  # a new second: a new Date line in every head
        cache.date = line
        cache.clear()
    heads = cache.by_text.get(text)
    # (status < 1000: ten bits.)
    key = size << 13 | status << 3 | int(has_server) << 2 | int(keep_alive) << 1 | int(http10)
    head = heads.get(key) if heads is not None else None
    if head is None:
        framing = f"Content-Length: {size}\r\n"
        head = encode_head(status, text, has_server, framing, keep_alive, http10)
        if cache.count >= _HEADS_MAX:
            cache.clear()  # start over: varied sizes cannot pin stale heads
            heads = None
        if heads is None:
            heads = cache.by_text[text] = {}
        heads[key] = head
        cache.count += 1
    return head
