"""The status line and header fields a WSGI app gives ``start_response``, checked (PEP 3333).

Sans-I/O: the app's values in, the header text out (or ``WsgiError`` naming
the rule broken). Used from the pool threads (``wsgi_call``).
"""

from __future__ import annotations

import re
from typing import Any, Final

from prefork.http.response import BadHeader, check_text, head_with_line

# PEP 3333 ("Other HTTP Features") and RFC 9110 §7.6.1: an app must not set
# these; the server decides the framing and the connection's fate.
HOP_BY_HOP: Final = frozenset(
    (
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
    )
)
_TOKEN: Final = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# Checked header sets by the app's (name, value) pairs: apps send a few sets again and again.
_FIELDS_CACHE_MAX: Final = 512

# (header text, lower-case name -> value, has Server, the app's Content-Length)
Head = tuple[str, dict[str, str], bool, int | None]


class WsgiError(Exception):
    """The app used the WSGI interface wrongly (PEP 3333)."""


# Good status strings and their codes: apps send a few, again and again.
_STATUSES: Final[dict[str, int]] = {}
_STATUSES_MAX: Final = 256


def check_status(status: object) -> int:
    """The code of a WSGI status string ``"200 OK"``; raises WsgiError."""
    if type(status) is str:
        code = _STATUSES.get(status)
        if code is not None:
            return code
    if (
        type(status) is not str
        or len(status) < 4
        or status[3] != " "
        or not status[:3].isdigit()
        or not status.isprintable()
    ):
        raise WsgiError(f"bad status {status!r}: expected a str like '200 OK'")
    code = int(status[:3])
    if code < 200:
        raise WsgiError(f"bad status {status!r}: a WSGI app cannot send a 1xx response")
    try:
        status.encode("latin-1")
    except UnicodeEncodeError:
        raise WsgiError(f"bad status {status!r}: not latin-1") from None
    if len(_STATUSES) < _STATUSES_MAX:
        _STATUSES[status] = code
    return code


def check_headers(cache: dict[Any, Head], headers: object) -> Head:
    """The header text of ``start_response``'s headers, checked; raises WsgiError."""
    if type(headers) is not list:
        raise WsgiError(f"headers must be a list of (name, value) tuples, got {type(headers)!r}")
    try:
        key = tuple(headers)
        hit = cache.get(key)
    except TypeError:  # something unhashable in there: checked below, and refused
        key, hit = None, None
    if hit is not None:
        return hit
    lines: list[str] = []
    lower: dict[str, str] = {}
    length: int | None = None
    for item in headers:
        if type(item) is not tuple or len(item) != 2:
            raise WsgiError(f"header {item!r} is not a (name, value) tuple")
        name, value = item
        if type(name) is not str or type(value) is not str:
            raise WsgiError(f"header {item!r}: name and value must be str")
        if not _TOKEN.fullmatch(name):
            raise WsgiError(f"header name {name!r} is not a token")
        lname = name.lower()
        if lname in HOP_BY_HOP:
            raise WsgiError(f"hop-by-hop header {name!r}: PEP 3333 leaves it to the server")
        if lname == "content-length":
            if not value.isdigit() or not value.isascii() or length is not None:
                raise WsgiError(f"bad Content-Length {value!r}")
            length = int(value)
            continue  # the server writes the framing
        if lname == "date":
            continue  # the server's own Date line is sent
        lower[lname] = f"{lower[lname]}, {value}" if lname in lower else value
        lines.append(f"{name}: {value}\r\n")
    text = "".join(lines)
    try:
        check_text(text, len(lines))
    except BadHeader as exc:
        raise WsgiError(str(exc)) from None
    out: Head = (text, lower, "server" in lower, length)
    if key is not None:
        if len(cache) >= _FIELDS_CACHE_MAX:
            cache.clear()
        cache[key] = out
    return out


def encode_head(
    status: str, text: str, has_server: bool, framing: str, keep_alive: bool, http10: bool
) -> bytes:
    """The response head with the app's own status line (its reason phrase as given)."""
    return head_with_line(f"HTTP/1.1 {status}\r\n", text, has_server, framing, keep_alive, http10)
