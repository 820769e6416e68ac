"""prefork.http.proxy_protocol: PROXY v1 and v2 headers (HAProxy's spec)."""

from __future__ import annotations

import ipaddress
import struct

import pytest

from prefork.http.proxy_protocol import V2_SIGNATURE, ProxyHeaderError, parse


def v2(command: int, family: int, body: bytes) -> bytes:
    return V2_SIGNATURE + struct.pack("!BBH", 0x20 | command, family, len(body)) + body


def v4_block(src: str, dst: str, sport: int, dport: int) -> bytes:
    return (
        ipaddress.IPv4Address(src).packed
        + ipaddress.IPv4Address(dst).packed
        + struct.pack("!HH", sport, dport)
    )


def test_v1_tcp4_and_tcp6() -> None:
    line = b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\n"
    assert parse(line + b"GET / HTTP/1.1\r\n") == (len(line), ("192.0.2.1", 56324))
    line6 = b"PROXY TCP6 2001:db8::1 2001:db8::2 1000 443\r\n"
    assert parse(line6) == (len(line6), ("2001:db8::1", 1000))


def test_v1_unknown_keeps_the_peer() -> None:
    line = b"PROXY UNKNOWN\r\n"
    assert parse(line) == (len(line), None)


@pytest.mark.parametrize(
    "data",
    [
        b"GET / HTTP/1.1\r\n\r\n",
        b"PROXY TCP4 192.0.2.1 198.51.100.2 56324\r\n",
        b"PROXY TCP4 2001:db8::1 198.51.100.2 1 2\r\n",
        b"PROXY TCP4 192.0.2.1 198.51.100.2 99999 443\r\n",
        b"PROXY TCP4 192.0.2.1 198.51.100.2 0123 443\r\n",
        b"PROXY SCTP 192.0.2.1 198.51.100.2 1 2\r\n",
        b"PROXY " + b"1" * 120,
    ],
)
def test_v1_bad_headers(data: bytes) -> None:
    with pytest.raises(ProxyHeaderError):
        parse(data)


def test_incomplete_headers_ask_for_more() -> None:
    assert parse(b"PROX") is None
    assert parse(b"PROXY TCP4 192.0.2.1") is None
    assert parse(V2_SIGNATURE[:7]) is None
    full = v2(1, 0x11, v4_block("192.0.2.1", "198.51.100.2", 5, 6))
    assert parse(full[:20]) is None


def test_v2_proxy_tcp4_with_tlvs_skipped() -> None:
    tlv = b"\x04\x00\x03abc"  # a NOOP TLV
    data = v2(1, 0x11, v4_block("192.0.2.1", "198.51.100.2", 56324, 443) + tlv)
    assert parse(data + b"GET /") == (len(data), ("192.0.2.1", 56324))


def test_v2_tcp6() -> None:
    block = (
        ipaddress.IPv6Address("2001:db8::7").packed
        + ipaddress.IPv6Address("2001:db8::8").packed
        + struct.pack("!HH", 1234, 443)
    )
    data = v2(1, 0x21, block)
    assert parse(data) == (len(data), ("2001:db8::7", 1234))


def test_v2_local_and_unspec_keep_the_peer() -> None:
    local = v2(0, 0x00, b"")
    assert parse(local) == (len(local), None)
    unspec = v2(1, 0x00, b"")
    assert parse(unspec) == (len(unspec), None)


@pytest.mark.parametrize(
    "data",
    [
        b"\r\n\r\n\x00\r\nQUIX\n" + b"\x21\x11\x00\x0c" + bytes(12),  # bad signature
        V2_SIGNATURE + b"\x31\x11\x00\x0c" + bytes(12),  # version 3
        V2_SIGNATURE + b"\x22\x11\x00\x0c" + bytes(12),  # command 2
        V2_SIGNATURE + b"\x21\x41\x00\x0c" + bytes(12),  # family 4 unknown
        V2_SIGNATURE + b"\x21\x11\x00\x04" + bytes(4),  # too short for TCP4
    ],
)
def test_v2_bad_headers(data: bytes) -> None:
    with pytest.raises(ProxyHeaderError):
        parse(data)
