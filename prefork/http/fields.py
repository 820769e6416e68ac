"""The request fields the server itself reads, and a head's fields without a dict of them all.

The native handler and WSGI are given a dict of every field (``Request.headers``).
An ASGI app is given a list of them (``scope["headers"]``), and the server
itself reads only a few names: the framing, the connection options, Host,
an upgrade, the negotiation of a compressed response and a proxy's
forwarded fields. ``split_fields`` makes, in one pass over the parsed fields,
the dict of those (``Request.fields``) and the lower-cased list, and the
whole dict is only built if something asks for it. The fields that must
not repeat are among those read, so a head the full dict would refuse is
refused all the same.

No asyncio, socket or ssl here.
"""

from __future__ import annotations

from typing import Final

# Fields that must not repeat (RFC 9110 §5.3: their grammar is one value, not
# a list, so two lines cannot be joined into anything meaningful). Joining
# them would let a proxy that reads the first line and an app that reads the
# joined value disagree about the request: refused with 400, as gunicorn does.
# Content-Encoding is a list in the grammar, but a repeated line on a request
# is the same kind of disagreement (which coding is the body in?) and no
# client sends one. The value is the name used in the error text.
SINGLETON_FIELDS: Final = (
    "Content-Length",
    "Transfer-Encoding",
    "Host",
    "Content-Type",
    "Content-Encoding",
    "Content-Location",
    "Content-Range",
    "Authorization",
    "Proxy-Authorization",
    "If-Modified-Since",
    "If-Unmodified-Since",
    "If-Range",
    "Range",
    "Max-Forwards",
)

# What the server reads of a request (lower-cased): build_request's checks,
# the upgrade, response compression's negotiation, the forwarded fields
# (http.forwarded); and the fields that must not repeat. In this order they
# are the bits of a head's ``present`` mask (``Request.present``, made by the
# compiled build's parser): bit i is set when the i-th is in the head. Those
# most heads carry come first, so that a usual mask is a small int (Python
# keeps one object for each up to 256).
_SERVER_FIRST: Final = (
    "host",
    "x-forwarded-for",
    "x-forwarded-proto",
    "accept-encoding",
    "connection",
    "content-length",
    "content-type",
    "authorization",
    "transfer-encoding",
    "expect",
    "upgrade",
    "forwarded",
    "x-forwarded-host",
)
SERVER_ORDER: Final = (
    *_SERVER_FIRST,
    *sorted(name.lower() for name in SINGLETON_FIELDS if name.lower() not in _SERVER_FIRST),
)
SERVER_FIELDS: Final = frozenset(SERVER_ORDER)
# A mask that says nothing (a parser that does not make one): look each up.
ALL_PRESENT: Final = -1
HAS_CONNECTION: Final = 1 << SERVER_ORDER.index("connection")
HAS_CONTENT_LENGTH: Final = 1 << SERVER_ORDER.index("content-length")
HAS_TRANSFER_ENCODING: Final = 1 << SERVER_ORDER.index("transfer-encoding")
HAS_EXPECT: Final = 1 << SERVER_ORDER.index("expect")
HAS_UPGRADE: Final = 1 << SERVER_ORDER.index("upgrade")
HAS_FORWARDED: Final = 1 << SERVER_ORDER.index("forwarded")
HAS_X_FORWARDED_FOR: Final = 1 << SERVER_ORDER.index("x-forwarded-for")
HAS_X_FORWARDED_PROTO: Final = 1 << SERVER_ORDER.index("x-forwarded-proto")
HAS_X_FORWARDED_HOST: Final = 1 << SERVER_ORDER.index("x-forwarded-host")

RawFields = list[tuple[bytes, bytes]]


class FieldName:
    """A field name as sent: lower-cased as text and as bytes; whether the server reads it."""

    __slots__ = ("lower", "raw", "server", "text")

    def __init__(self, raw: bytes) -> None:
        self.raw = raw
        self.text = raw.decode("latin-1").lower()
        self.lower = raw.lower()
        self.server = self.text in SERVER_FIELDS


# By the name's bytes as sent: a few dozen in real traffic. Bounded; full, it
# starts over, so junk names sent once cannot keep real ones out. It flatters
# traffic with fewer than _NAMES_MAX distinct names (all of it, in practice).
_NAMES: Final[dict[bytes, FieldName]] = {}
_NAMES_MAX: Final = 512
# In front of it, the name last seen in each of _SLOTS slots, found by a few
# of its bytes: a dict lookup hashes the name's bytes (a new object each
# time) and compares them through the generic protocol, ~4 times what this
# costs; a name whose slot holds another goes to the dict.
_SLOTS: Final = 256
_RECENT: Final[list[FieldName | None]] = [None] * _SLOTS


def field_name(raw: bytes) -> FieldName:
    """The known name for ``raw``, made the first time it is seen."""
    size = len(raw)
    slot = 0
    if size:
        slot = (size * 7 + raw[0] * 3 + raw[size >> 1] * 5 + raw[size - 1]) & (_SLOTS - 1)
    name = _RECENT[slot]
    if name is not None and name.raw == raw:
        return name
    name = _NAMES.get(raw)
    if name is None:
        name = FieldName(raw)
        if len(_NAMES) >= _NAMES_MAX:
            _NAMES.clear()
        _NAMES[raw] = name
    _RECENT[slot] = name
    return name


def split_fields(raw: RawFields) -> tuple[dict[str, str], RawFields] | None:
    """The fields the server reads, as a dict, and every field with its name
    lower-cased, in order and with repeats (ASGI's ``headers``).

    None when a field the server reads repeats: the whole dict's rules
    (joined, or refused) are then the ones to apply.
    """
    known: dict[str, str] = {}
    lowered: RawFields = []
    for bname, bvalue in raw:
        name = field_name(bname)
        lowered.append((name.lower, bvalue))
        if name.server:
            text = name.text
            if text in known:
                return None
            known[text] = bvalue.decode("latin-1")
    return known, lowered
