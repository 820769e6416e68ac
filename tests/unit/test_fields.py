"""prefork.http.fields: known field names, and a request's fields without the whole dict.

The reader's table (test_protocol.py) runs every row with ``fields_as_list``
too; these are the pieces alone.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from prefork.http.fields import SERVER_FIELDS, SINGLETON_FIELDS, field_name, split_fields
from prefork.http.request import Limits, build_request

TOKEN = st.text(
    alphabet="!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ",
    min_size=1,
    max_size=40,
)


@settings(max_examples=300)
@given(st.lists(TOKEN.map(str.encode), min_size=1, max_size=60))
def test_every_name_is_found_as_itself_whatever_shares_its_slot(names: list[bytes]) -> None:
    # Interleaved twice: names that share a slot take it from each other.
    for raw in names + names[::-1]:
        name = field_name(raw)
        assert name.raw == raw
        assert name.text == raw.decode().lower()
        assert name.lower == raw.lower()
        assert name.server == (name.text in SERVER_FIELDS)


def test_the_fields_that_must_not_repeat_are_read_by_the_server() -> None:
    assert {name.lower() for name in SINGLETON_FIELDS} <= SERVER_FIELDS


def test_split_fields_keeps_every_field_in_the_list_and_the_servers_in_the_dict() -> None:
    raw = [
        (b"Host", b"a"),
        (b"X-Trace", b"1"),
        (b"Accept-Encoding", b"gzip"),
        (b"x-trace", b"2"),
        (b"X-Forwarded-For", b"10.0.0.1"),
    ]
    split = split_fields(raw)
    assert split is not None
    known, lowered = split
    assert known == {"host": "a", "accept-encoding": "gzip", "x-forwarded-for": "10.0.0.1"}
    assert lowered == [
        (b"host", b"a"),
        (b"x-trace", b"1"),
        (b"accept-encoding", b"gzip"),
        (b"x-trace", b"2"),
        (b"x-forwarded-for", b"10.0.0.1"),
    ]


def test_split_fields_gives_way_when_a_field_the_server_reads_repeats() -> None:
    assert split_fields([(b"Host", b"a"), (b"Connection", b"x"), (b"connection", b"y")]) is None


LIMITS = Limits(8190, 100, 1 << 20)
RAW = [(b"Host", b"a"), (b"Cookie", b"a=1"), (b"cookie", b"b=2"), (b"Connection", b"close")]


def test_a_request_read_for_a_list_makes_its_whole_dict_when_asked() -> None:
    eager = build_request("GET", "/p?q", "1.1", list(RAW), LIMITS, False)
    req = build_request("GET", "/p?q", "1.1", list(RAW), LIMITS, False, True)
    assert req.fields == {"host": "a", "connection": "close"}
    assert req.lowered == [(n.lower(), v) for n, v in RAW]
    assert not req.keep_alive
    whole = {"host": "a", "cookie": "a=1; b=2", "connection": "close"}
    assert req.headers == eager.headers == whole
    assert eager.fields is eager.headers
    assert eager.lowered is None


def test_a_clone_of_a_request_read_for_a_list_stays_so() -> None:
    req = build_request("GET", "/", "1.1", list(RAW), LIMITS, False, True)
    copy = req.clone()
    assert copy.fields == req.fields
    assert copy.fields is not req.fields
    assert copy.lowered is None  # (a cached request's list is made from raw_headers)
    assert copy.headers == req.headers


def test_dropping_the_fields_but_not_the_dict_keeps_the_whole_dict() -> None:
    req = build_request("GET", "/", "1.1", list(RAW), LIMITS, False, True)
    req.drop_fields(headers=False)
    assert req.headers["cookie"] == "a=1; b=2"


def test_an_absolute_form_target_gets_the_whole_dict_at_once() -> None:
    req = build_request("GET", "http://b/x", "1.1", list(RAW), LIMITS, False, True)
    assert req.lowered is None
    assert req.fields is req.headers
    assert req.headers["host"] == "b"


FIELD_VALUES = st.binary(max_size=12).map(lambda v: v.replace(b"\r", b"").replace(b"\n", b""))
SOME_SERVER_NAMES = st.sampled_from(sorted(SERVER_FIELDS)).map(str.encode)


@settings(max_examples=300)
@given(st.lists(st.tuples(st.one_of(TOKEN.map(str.encode), SOME_SERVER_NAMES), FIELD_VALUES)))
def test_names_lowered_by_the_parser_split_as_names_as_sent(raw: list[tuple[bytes, bytes]]) -> None:
    """Names a parser lower-cased (the compiled build's llhttp binding) give
    the dict and list that names as sent give."""
    lowered = [(name.lower(), value) for name, value in raw]
    split = split_fields(lowered)
    assert split == split_fields(raw)
    if split is not None:
        assert split[1] is not lowered  # a list of its own: the app may change it
