"""The h11 backend: pure Python, the fallback and the reference."""

from __future__ import annotations

import re

import h11

from ..errors import ProtocolError
from ..protocol import RawHeaders

_CONTENT_LENGTH_LINE = re.compile(
    rb"(?<=\r\n)(content-length)[ \t]*:[ \t]*([^\r]*?)[ \t]*(?=\r\n)", re.I
)


class H11HeadParser:
    """Parses each request head with a fresh ``h11.Connection``."""

    __slots__ = ()

    # h11 lets control characters and obs-fold through; the shared pre-scan runs.
    strict_fields = False

    def parse(self, head: bytes) -> tuple[str, str, str, RawHeaders]:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=len(head) + 1)
        try:
            conn.receive_data(head)
            event = conn.next_event()
        except h11.RemoteProtocolError as exc:
            raise ProtocolError(400, f"malformed request: {exc}") from None
        if not isinstance(event, h11.Request):
            raise ProtocolError(400, "malformed request head")
        try:
            target = event.target.decode("ascii")
        except UnicodeDecodeError:
            raise ProtocolError(400, "non-ASCII request target") from None
        raw = list(event.headers.raw_items())
        if any(name.lower() == b"content-length" for name, _ in raw):
            # h11 folds repeated or list-form Content-Length ("5, 5") into one
            # value; the shared checks must see the lines as sent.
            raw = [(n, v) for n, v in raw if n.lower() != b"content-length"]
            raw += [(m.group(1), m.group(2)) for m in _CONTENT_LENGTH_LINE.finditer(head)]
        return event.method.decode("ascii"), target, event.http_version.decode("ascii"), raw
