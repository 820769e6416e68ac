"""prefork.http.scan: the request path's small scans, C (compiled build) or Python."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

import prefork
from prefork.http.scan import (
    ipv4_by_pattern,
    is_ipv4,
    line_end,
    xff_client,
    xff_client_by_parts,
)


def _is_ipv4(text: str) -> bool:
    try:
        return isinstance(ipaddress.ip_address(text), ipaddress.IPv4Address)
    except ValueError:
        return False


_IPV4_LIKE = st.one_of(
    st.lists(st.integers(0, 300).map(str), min_size=1, max_size=5).map(".".join),
    st.lists(st.text("0123456789.", max_size=4), min_size=1, max_size=5).map(".".join),
    st.text("0123456789.:abf \u0661\u0100\U0001f600", max_size=16),
    st.ip_addresses(v=4).map(str),
)


@given(_IPV4_LIKE)
def test_both_ipv4_recognisers_agree_with_ipaddress(text: str) -> None:
    # The compiled build's is_ipv4 is _scan.c's; a pure Python install's, the pattern.
    assert is_ipv4(text) is ipv4_by_pattern(text) is _is_ipv4(text)


@pytest.mark.parametrize(
    "text", ["0.0.0.0", "255.255.255.255", "10.3.201.17", "256.1.1.1", "01.2.3.4", "1.2.3.04",
             "1.2.3", "1.2.3.4.5", "1..2.3", "1.2.3.", ".1.2.3", "\u0661.2.3.4", "1.2.3.4 ",
             "1.2.3.4\u0100", "1.2.3.4\U0001f600", "1.2.3.\x00", "999.1.1.1", "1.2.3.255"],
)  # fmt: skip
def test_ipv4_recognisers_on_edges(text: str) -> None:
    assert is_ipv4(text) is ipv4_by_pattern(text) is _is_ipv4(text)


def test_the_compiled_build_scans_in_c() -> None:
    try:
        from prefork.http import _scan
    except ImportError:
        built = False
    else:
        built = True
        assert is_ipv4 is _scan.is_ipv4
        assert line_end is _scan.line_end
        with pytest.raises(TypeError, match="takes a str, not bytes"):
            _scan.is_ipv4(b"1.2.3.4")  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="takes bytes, not str"):
            _scan.line_end("a\r\n")  # type: ignore[arg-type]
    assert built is prefork.COMPILED


_CRLF_SOUP = st.lists(st.sampled_from([b"\r", b"\n", b"a", b"\r\n"])).map(b"".join)


@given(st.binary(max_size=40) | _CRLF_SOUP)
@example(b"")
@example(b"\r")
@example(b"\r\n")
@example(b"a\r")
@example(b"\r\r\n")
def test_line_end_is_find_crlf(buf: bytes) -> None:
    """line_end (RequestReader._check_head's) gives what bytes.find does."""
    assert line_end(buf) == buf.find(b"\r\n")


_POOL = ["10.0.0.1", "10.0.0.2", "192.168.1.9", "203.0.113.7", "127.0.0.1"]
_HOP = st.one_of(
    st.sampled_from(_POOL),
    st.ip_addresses(v=4).map(str),
    st.sampled_from(["::1", "2001:db8::1", "unknown", "", "1.2.3", "01.2.3.4", "1.2.3.4:80"]),
)
_SPACE = st.sampled_from(["", " ", "\t", "  ", " \t"])
_XFF = st.lists(st.tuples(_SPACE, _HOP, _SPACE).map("".join), min_size=1, max_size=5).map(",".join)
# (A tuple is compared byte by byte, a set looked up: Trust gives either.)
_TRUSTED = st.none() | st.sets(st.sampled_from(_POOL)) | st.sets(st.sampled_from(_POOL)).map(tuple)


def _xff_oracle(value: str, trusted: tuple[str, ...] | set[str] | None) -> str | None:
    """The rule, spelled out: right to left, the first hop not trusted, else the left-most."""
    hops = [hop.strip(" \t") for hop in value.split(",")]
    for index in reversed(range(len(hops))):
        if not _is_ipv4(hops[index]):
            return None
        if index == 0 or (trusted is not None and hops[index] not in trusted):
            return hops[index]
    raise AssertionError("split gives at least one hop")


@given(_XFF, _TRUSTED)
@example("203.0.113.7, 10.0.0.1", {"10.0.0.1"})
@example("203.0.113.7, 10.0.0.1", set())
@example("203.0.113.7, 10.0.0.1", None)
@example("::1, 10.0.0.1", {"10.0.0.1"})
@example("::1, 10.0.0.1", set())
@example(" 10.0.0.2 ", {"10.0.0.2"})
@example("203.0.113.7, 10.0.0.1", ("10.0.0.1",))
@example("203.0.113.7 ,\t10.0.0.1", ("10.0.0.10", "10.0.0.1"))
@example("10.0.0.1,", set())
def test_xff_client_takes_the_right_most_untrusted_hop(
    value: str, trusted: tuple[str, ...] | set[str] | None
) -> None:
    # The compiled build's xff_client is _scan.c's; a pure Python install's, the split.
    expected = _xff_oracle(value, trusted)
    assert xff_client(value, trusted) == expected
    assert xff_client_by_parts(value, trusted) == expected


def test_xff_client_refuses_what_it_cannot_read() -> None:
    assert xff_client("1.2.3.4\u0100", None) is None  # (a wider str kind)
    assert xff_client("2001:db8::1, 10.0.0.1", {"10.0.0.1"}) is None
    try:
        from prefork.http import _scan
    except ImportError:
        return
    assert xff_client is _scan.xff_client
    with pytest.raises(TypeError, match="xff_client"):
        _scan.xff_client("1.2.3.4", ["1.2.3.4"])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="xff_client"):
        _scan.xff_client(b"1.2.3.4", None)  # type: ignore[arg-type]
