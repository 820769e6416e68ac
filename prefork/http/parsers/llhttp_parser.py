"""The llhttp backend of the compiled build: a whole head read in one C call.

``_llhttp`` (built only with ``PREFORK_COMPILE=1``, from the llhttp release
httptools wraps, vendored in ``vendor/llhttp``) hands the head to llhttp with
callbacks that only note where each span is, and makes the parts once at the
end; httptools' binding calls back into Python for every span, which costs
three times llhttp's own parse on a typical head. Same parser, same mode,
same answers (``tests/unit/test_llhttp_parser.py`` holds the two together);
what ``_llhttp`` cannot say (more fields than it holds) goes to httptools'.
"""

from __future__ import annotations

from typing import Final

from prefork.errors import ProtocolError
from prefork.http.fields import ALL_PRESENT, SERVER_ORDER, field_name
from prefork.http.parsers._llhttp import configure
from prefork.http.parsers._llhttp import parse as _parse
from prefork.http.parsers.httptools_parser import (
    NON_ASCII_TARGET,
    HttptoolsHeadParser,
    refusal,
)
from prefork.http.request import HeadParts

# Per head: a C static in the compiled build (an imported name is looked up
# in the module's dict on every use).
parse_head: Final = _parse

# The fields the binding also gives as a dict (the reader's split_fields, in C),
# and as bits of its present mask, in this order.
configure(SERVER_ORDER)


class LlhttpHeadParser:
    """HttptoolsHeadParser's answers through one C call per head."""

    __slots__ = ("_fallback", "_known")

    # As HttptoolsHeadParser: llhttp refuses control characters, obs-fold,
    # bare CR/LF itself, and says where a whole request ends.
    strict_fields = True
    whole_heads = True
    # _llhttp lower-cases them (the fallback's are lower-cased here).
    lowered_names = True

    def __init__(self, server_fields: bool = False) -> None:
        self._fallback = HttptoolsHeadParser()
        # The server's fields as a dict too (HeadParts' fifth item): for an
        # app given a list of fields (ASGI); the others get the whole dict.
        self._known = server_fields

    def parse_whole(self, buf: bytes, line_end: int) -> HeadParts | None:
        """``buf`` as one head, when llhttp finds one whole request in it and no more."""
        try:
            parts = parse_head(buf, True, self._known)
        except UnicodeDecodeError:
            raise ProtocolError(400, NON_ASCII_TARGET) from None
        return None if isinstance(parts, str) else parts

    def parse(self, head: bytes, line_end: int = -1) -> HeadParts:
        try:
            parts = parse_head(head, False, self._known)
        except UnicodeDecodeError:
            raise ProtocolError(400, NON_ASCII_TARGET) from None
        if isinstance(parts, str):
            raise refusal(parts)
        if parts is None:
            method, target, version, raw, _, _ = self._fallback.parse(head, line_end)
            lowered = [(field_name(n).lower, v) for n, v in raw]
            return method, target, version, lowered, None, ALL_PRESENT
        return parts
