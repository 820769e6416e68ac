"""prefork.http.request, called directly: build_request (joined fields, keep-alive) and parse_args.

The strict checks and limits that build_request applies run through the reader,
on both parser backends, in test_protocol.py's table.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl

import pytest
from hypothesis import given
from hypothesis import strategies as st

from prefork.errors import ProtocolError
from prefork.http.request import (
    BAD_FIELD_BYTES,
    Limits,
    build_request,
    diagnose,
    has_field_controls,
    parse_args,
)


def small_limits() -> Limits:
    """test_protocol.py's small limits; build_request reads only the field count and body size."""
    return Limits(line_limit=100, max_header_count=8, max_body_size=32)


# -- build_request directly ---------------------------------------------------------


def test_build_request_joins_and_decides_keep_alive() -> None:
    raw = [(b"Host", b"a"), (b"Cookie", b"a=1"), (b"cookie", b"b=2"), (b"Accept", b"x")]
    raw += [(b"ACCEPT", b"y")]
    r = build_request("GET", "/p?q=1", "1.1", raw, small_limits(), check_fields=True)
    assert r.headers == {"host": "a", "cookie": "a=1; b=2", "accept": "x, y"}
    assert (r.path, r.query, r.keep_alive, r.body, r.chunked) == ("/p", "q=1", True, b"", False)


# -- query strings ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("", {}),
        ("a=1", {"a": "1"}),
        ("a", {"a": ""}),
        ("a=", {"a": ""}),
        ("a=1&a=2&a=3", {"a": ["1", "2", "3"]}),
        ("a=1&b=2&a=3", {"a": ["1", "3"], "b": "2"}),
        ("x=a+b%20c", {"x": "a b c"}),
        ("%C3%A9=%E2%82%AC", {"é": "€"}),
        ("a=1&&b=2", {"a": "1", "b": "2"}),
        ("a=x=y", {"a": "x=y"}),
    ],
    ids=[
        "empty",
        "one",
        "bare-name",
        "empty-value",
        "repeated-to-list",
        "repeated-interleaved",
        "plus-and-percent-space",
        "utf8-percent",
        "empty-pair-skipped",
        "equals-in-value",
    ],
)
def test_parse_args(query: str, expected: dict[str, Any]) -> None:
    assert parse_args(query) == expected


def _args_by_parse_qsl(query: str) -> dict[str, Any]:
    """API.md's definition of the args: parse_qsl's pairs, a repeated name to a list."""
    args: dict[str, Any] = {}
    for name, value in parse_qsl(query, keep_blank_values=True):
        if name not in args:
            args[name] = value
        elif isinstance(args[name], list):
            args[name].append(value)
        else:
            args[name] = [args[name], value]
    return args


# The characters that steer parse_args between its paths (no "%" or "+": each
# pair split at "="; a pair without "=", an empty pair, a repeated name: parse_qsl).
_PAIRS = ["a", "b", "a=1", "a=2", "b=", "=x", "a=b=c", "", "%41=1", "a+b=c", "é=1", "b=;"]
_QUERIES = st.one_of(
    st.lists(st.sampled_from(_PAIRS), max_size=5).map("&".join),
    st.text(alphabet="ab=&%+2C3;é ", max_size=24),
)


@given(_QUERIES)
def test_parse_args_is_parse_qsl_folded(query: str) -> None:
    args = parse_args(query)
    assert args == _args_by_parse_qsl(query)
    assert list(args) == list(_args_by_parse_qsl(query))  # the same order


def test_build_request_refuses_a_repeated_singleton_field() -> None:
    raw = [(b"Host", b"a"), (b"Authorization", b"Basic x"), (b"authorization", b"Basic y")]
    with pytest.raises(ProtocolError, match=r"^more than one Authorization header$") as info:
        build_request("GET", "/", "1.1", raw, small_limits(), check_fields=True)
    assert info.value.status == 400


def test_build_request_takes_host_from_an_absolute_form_target() -> None:
    raw = [(b"Host", b"b")]
    r = build_request("GET", "http://a:81/x?q", "1.1", raw, small_limits(), check_fields=True)
    assert (r.headers["host"], r.path, r.query) == ("a:81", "/x", "q")


@pytest.mark.parametrize(
    ("head", "text"),
    [
        (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", "more than one Host header"),
        (b"GET / HTTP/1.1\r\nX: y\r\n\r\n", "missing Host header"),
        (b"GET  / HTTP/1.1\r\nHost: a\r\n\r\n", "malformed request line"),
        (b"GET / HTTP/1.1\r\nHost: a\r\nBad Name: y\r\n\r\n", "malformed request head"),
        (b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", "malformed request head"),
    ],
)
def test_diagnose_names_a_refused_head_in_the_shared_words(head: bytes, text: str) -> None:
    exc = diagnose(head, small_limits())
    assert (exc.status, str(exc)) == (400, text)


@pytest.mark.parametrize("byte", [b for b in range(256) if b not in (0x0A, 0x0D)])
def test_has_field_controls_finds_what_the_value_search_finds(byte: int) -> None:
    # The one-pass test on a whole head stands in for the search of each value:
    # it must find every byte that search refuses, and no other.
    head = b"GET / HTTP/1.1\r\nHost: a\r\nX: a" + bytes((byte,)) + b"b\r\n\r\n"
    assert has_field_controls(head) is bool(BAD_FIELD_BYTES.search(bytes((byte,))))
