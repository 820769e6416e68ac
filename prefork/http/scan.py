"""Small scans of the request path: C in the compiled build, Python otherwise.

Each is called on every request (``line_end``) or on every forwarded client
address (``is_ipv4``, ``xff_client``). In the compiled build the call itself costs many times
the scan (``bytes.find`` parses an argument tuple, a compiled loop over a str
makes a one-character str per character), so ``_scan.c`` does them; a pure
Python install uses the versions here. tests/unit/test_scan.py holds the two
together.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Final

from prefork._compiled import COMPILED

# A dotted-quad IPv4 address as ipaddress accepts it (decimal octets 0-255,
# no leading zeros).
_OCTET: Final = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_IPV4_RE: Final = re.compile(rf"(?:{_OCTET}\.){{3}}{_OCTET}")


def ipv4_by_pattern(text: str) -> bool:
    """Whether ``text`` is a dotted-quad IPv4 address: the pure Python build's way."""
    return _IPV4_RE.fullmatch(text) is not None


def xff_client_by_parts(value: str, trusted: tuple[str, ...] | set[str] | None) -> str | None:
    """The client an X-Forwarded-For value names: the pure Python build's ``_scan.xff_client``.

    Its right-most hop not in ``trusted`` (None: every address is trusted),
    else its left-most; None when a hop it comes to is not a dotted quad.
    """
    hops = value.split(",")
    for index in range(len(hops) - 1, -1, -1):
        hop = hops[index].strip(" \t")
        if not ipv4_by_pattern(hop):
            return None
        if index == 0 or (trusted is not None and hop not in trusted):
            return hop
    return None  # (not reached: split gives at least one hop)


def find_line_end(head: bytes) -> int:
    """Where the first CRLF in ``head`` starts, or -1: the pure Python build's way."""
    return head.find(b"\r\n")


is_ipv4: Callable[[str], bool] = ipv4_by_pattern
xff_client: Callable[[str, tuple[str, ...] | set[str] | None], str | None] = xff_client_by_parts
line_end: Callable[[bytes], int] = find_line_end
if COMPILED:
    from prefork.http import _scan

    is_ipv4 = _scan.is_ipv4
    xff_client = _scan.xff_client
    line_end = _scan.line_end
