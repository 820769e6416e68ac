"""prefork.http.scan: the request path's small scans, C (compiled build) or Python."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

import prefork
from prefork.http.scan import ipv4_by_pattern, is_ipv4, line_end


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
