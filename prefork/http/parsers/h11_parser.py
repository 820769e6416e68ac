"""The h11 backend: pure Python, the fallback and the reference."""

from __future__ import annotations

from typing import Final

import h11

from prefork.errors import ProtocolError
from prefork.http.fields import ALL_PRESENT
from prefork.http.request import MALFORMED_HEAD, HeadParts

# Fields h11 rewrites: it folds repeated or list-form Content-Length ("5, 5")
# into one value and lower-cases Transfer-Encoding. Found as the start of a
# line of the lower-cased head: h11 allows no space before the colon, and the
# reader refused bare CR/LF and obs-fold, so each CRLF starts one field line.
_FRAMING_LINES: Final = (b"\r\ncontent-length:", b"\r\ntransfer-encoding:")


class H11HeadParser:
    """Parses each request head with a fresh ``h11.Connection``."""

    __slots__ = ()

    # h11 lets control characters and obs-fold through; the shared pre-scan runs.
    strict_fields = False
    # A fresh h11.Connection per head cannot say where one ends: the reader finds it.
    whole_heads = False
    lowered_names = False  # (raw_items(): as sent)

    def parse_whole(self, buf: bytes, line_end: int) -> HeadParts | None:
        return None

    def parse(self, head: bytes, line_end: int = -1) -> HeadParts:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=len(head) + 1)
        try:
            conn.receive_data(head)
            event = conn.next_event()
        except h11.RemoteProtocolError:
            # h11's texts show its internals (reprs of its buffers): the same
            # plain line as llhttp's instead.
            raise ProtocolError(400, MALFORMED_HEAD) from None
        if not isinstance(event, h11.Request):
            raise ProtocolError(400, MALFORMED_HEAD)
        try:
            target = event.target.decode("ascii")
        except UnicodeDecodeError:
            raise ProtocolError(400, "non-ASCII request target") from None
        raw = event.headers.raw_items()
        lowered = head.lower()
        if _FRAMING_LINES[0] in lowered or _FRAMING_LINES[1] in lowered:
            # The shared checks must see these lines as sent. h11 has checked
            # every line's syntax (and the reader refused obs-fold), so each
            # line is name ":" OWS value OWS.
            lines = head[head.index(b"\r\n") + 2 : -4].split(b"\r\n")
            raw = []
            for line in lines:
                name, _, value = line.partition(b":")
                value = value.lstrip(b" \t")
                if b"\t" in value and name.lower() == b"transfer-encoding":
                    # llhttp refuses "chunked<HTAB>"; the stricter answer for both.
                    raise ProtocolError(400, MALFORMED_HEAD)
                raw.append((name, value.rstrip(b" \t")))
        version = event.http_version.decode("ascii")
        return event.method.decode("ascii"), target, version, raw, None, ALL_PRESENT
