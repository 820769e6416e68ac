"""The PROXY protocol header (HAProxy's spec, versions 1 and 2), sans I/O.

A load balancer in TCP mode (HAProxy, an AWS NLB, ...) starts each connection
with one header that names the client's address, before TLS and HTTP. ``parse``
takes the bytes received so far and says how many belong to the header and
what source address it names; the engine reads them off the socket first.
"""

from __future__ import annotations

import ipaddress
import struct
from typing import Final

V2_SIGNATURE: Final = b"\r\n\r\n\x00\r\nQUIT\n"
V1_MAX: Final = 107  # the spec's longest v1 line, CRLF included
V2_HEADER: Final = 16
# Address block sizes by family (v2): TCP/UDP over IPv4 and IPv6, UNIX sockets.
_V2_ADDRESS_BYTES: Final = {0x1: 12, 0x2: 36, 0x3: 216}

Source = tuple[str, int] | None


class ProxyHeaderError(ValueError):
    """Not a valid PROXY protocol header (the connection is closed)."""


def parse(buf: bytes) -> tuple[int, Source] | None:
    """``(header length, source address or None)``, or None when more bytes are needed.

    The source is None for v1 ``UNKNOWN``, v2 ``LOCAL`` (a health check from the
    balancer itself) and families without an IP address: the peer's own
    address stands. Raises ProxyHeaderError.
    """
    if not buf:
        return None
    if buf[:1] == b"P":
        return _parse_v1(buf)
    if buf[:1] == b"\r":
        return _parse_v2(buf)
    raise ProxyHeaderError("no PROXY protocol header")


def _parse_v1(buf: bytes) -> tuple[int, Source] | None:
    end = buf.find(b"\r\n", 0, V1_MAX)
    if end < 0:
        prefix = b"PROXY "
        if len(buf) >= V1_MAX or not (buf.startswith(prefix) or prefix.startswith(buf)):
            raise ProxyHeaderError("PROXY v1 line too long or malformed")
        return None
    try:
        line = buf[:end].decode("ascii")
    except UnicodeDecodeError:
        raise ProxyHeaderError("PROXY v1 line is not ASCII") from None
    parts = line.split(" ")
    if parts[0] != "PROXY" or len(parts) < 2:
        raise ProxyHeaderError("PROXY v1 line malformed")
    if parts[1] == "UNKNOWN":
        return end + 2, None
    if parts[1] not in ("TCP4", "TCP6") or len(parts) != 6:
        raise ProxyHeaderError(f"PROXY v1 protocol {parts[1]!r} unknown or fields missing")
    src, dst, sport, dport = parts[2:]
    version = 4 if parts[1] == "TCP4" else 6
    for address in (src, dst):
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            raise ProxyHeaderError(f"PROXY v1 address {address!r} invalid") from None
        if ip.version != version:
            raise ProxyHeaderError(f"PROXY v1 address {address!r} is not {parts[1]}")
    for port in (sport, dport):
        if not port.isdigit() or (len(port) > 1 and port[0] == "0") or int(port) > 65535:
            raise ProxyHeaderError(f"PROXY v1 port {port!r} invalid")
    return end + 2, (src, int(sport))


def _parse_v2(buf: bytes) -> tuple[int, Source] | None:
    if len(buf) < V2_HEADER:
        if not V2_SIGNATURE.startswith(buf[:12]):
            raise ProxyHeaderError("bad PROXY v2 signature")
        return None
    if buf[:12] != V2_SIGNATURE:
        raise ProxyHeaderError("bad PROXY v2 signature")
    ver_cmd, family, length = struct.unpack_from("!BBH", buf, 12)
    if ver_cmd >> 4 != 2:
        raise ProxyHeaderError(f"PROXY v2 version {ver_cmd >> 4} unknown")
    command = ver_cmd & 0x0F
    if command not in (0, 1):
        raise ProxyHeaderError(f"PROXY v2 command {command} unknown")
    total = V2_HEADER + length
    if len(buf) < total:
        return None
    if command == 0:  # LOCAL: the balancer's own connection
        return total, None
    address_family, transport = family >> 4, family & 0x0F
    if address_family == 0:  # UNSPEC
        return total, None
    needed = _V2_ADDRESS_BYTES.get(address_family)
    if needed is None or transport not in (1, 2):
        raise ProxyHeaderError(f"PROXY v2 family 0x{family:02x} unknown")
    if length < needed:
        raise ProxyHeaderError("PROXY v2 address block too short for its family")
    body = buf[V2_HEADER:total]
    if address_family == 0x1:
        src = str(ipaddress.IPv4Address(body[0:4]))
        (sport,) = struct.unpack_from("!H", body, 8)
    elif address_family == 0x2:
        src = str(ipaddress.IPv6Address(body[0:16]))
        (sport,) = struct.unpack_from("!H", body, 32)
    else:  # UNIX sockets carry no IP address: the peer's stands
        return total, None
    # TLVs after the address block are skipped (total covers them).
    return total, (src, sport)
