"""The compiled build's llhttp binding against httptools' binding of the same llhttp.

``LlhttpHeadParser`` (``_llhttp``, one C call per head) must answer every
head as ``HttptoolsHeadParser`` does: the same parts, or the same error, and
the same "not one whole request" from ``parse_whole``. Hypothesis draws
heads near HTTP's grammar and across its edges (bytes a field may not hold,
bare CR or LF, obs-fold, empty values, trailing OWS, odd versions and
methods, non-ASCII targets, upgrades, bodies and second requests after a
head, more fields than the binding holds) and both backends read each one.

Only where the binding is built (the compiled build, ``PREFORK_COMPILE=1``):
the pure Python install has no ``_llhttp``, and its tests skip here.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from prefork.errors import ProtocolError
from prefork.http.fields import ALL_PRESENT, SERVER_ORDER, split_fields
from prefork.http.parsers import make_parser
from prefork.http.parsers.httptools_parser import HttptoolsHeadParser

llhttp_parser = pytest.importorskip(
    "prefork.http.parsers.llhttp_parser", reason="only the compiled build builds the llhttp binding"
)

# Each part of a head is drawn from the usual (most of the time) or the odd.
GOOD_METHODS = ["GET", "POST", "HEAD", "PUT", "DELETE", "OPTIONS", "PATCH"]
ODD_METHODS = ["CONNECT", "PRI", "get", "FOO", "GE T", ""]
GOOD_TARGETS = ["/", "/a?b=c", "/hello?item=1&page=2", "/p/%C3%A9", "*", "http://h/p"]
ODD_TARGETS = ["/é", "/a b", "/%zz", "h:443", "", "/a\tb", "/\x7f", "//x"]
GOOD_VERSIONS = ["HTTP/1.1", "HTTP/1.0"]
ODD_VERSIONS = ["HTTP/2.0", "HTTP/0.9", "HTTP/1.2", "HTTP/11", "http/1.1", "HTTP/1.1 ", "HTTP/9.9"]
GOOD_NAMES = [
    "Host",
    "Content-Length",
    "Transfer-Encoding",
    "Connection",
    "Upgrade",
    "Expect",
    "X-Forwarded-For",
    "Cookie",
    "Accept",
    "a",
    "X_Under",
    "HOST",
    "content-length",
]
ODD_NAMES = ["Bad Name", "Bad:Colon", "", "Ünï", "X\x00", "X\r"]
GOOD_VALUES = [
    "x",
    "",
    "5",
    "0",
    "chunked",
    "close",
    "keep-alive",
    "upgrade",
    "Upgrade",
    "websocket",
    "100-continue",
    "a\tb",
    "v \t",
    " lead",
    "é",
    "text/html, */*;q=0.8",
]
ODD_VALUES = [
    "gzip, chunked",
    "\x7f",
    "\x00",
    "a\rb",
    "a\nb",
    "12345678901234567890",
    "-1",
    "5, 5",
]
SEPARATORS = [": ", ": ", ":", ":\t", " : ", ":  "]
ENDS = ["\r\n", "\n", "\r"]


def mostly(good: list[str], odd: Any) -> Any:
    """A draw from ``good`` nine times in ten, else from ``odd`` (a list or a strategy)."""
    odd_strategy = st.sampled_from(odd) if isinstance(odd, list) else odd
    return st.integers(0, 9).flatmap(lambda n: st.sampled_from(good) if n else odd_strategy)


@st.composite
def heads(draw: st.DrawFn) -> bytes:
    method = draw(mostly(GOOD_METHODS, ODD_METHODS))
    odd_targets = st.one_of(
        st.sampled_from(ODD_TARGETS),
        st.text(st.characters(min_codepoint=0x21, max_codepoint=0xFF), max_size=12).map(
            lambda t: "/" + t
        ),
    )
    target = draw(mostly(GOOD_TARGETS, odd_targets))
    version = draw(mostly(GOOD_VERSIONS, ODD_VERSIONS))
    lines = [f"{method} {target} {version}"]
    for _ in range(draw(st.integers(0, 8))):
        name = draw(mostly(GOOD_NAMES, st.one_of(st.sampled_from(ODD_NAMES), st.text(max_size=5))))
        odd_values = st.one_of(st.sampled_from(ODD_VALUES), st.text(max_size=8))
        value = draw(mostly(GOOD_VALUES, odd_values))
        lines.append(name + draw(st.sampled_from(SEPARATORS)) + value)
        if draw(st.integers(0, 15)) == 0:
            lines.append(" folded")  # obs-fold
    end = draw(mostly(["\r\n"], ENDS))
    text = end.join(lines) + "\r\n\r\n"
    return text.encode("utf-8", "surrogatepass")


def outcome(parse: Any, *args: Any, lower: bool = False) -> tuple[Any, ...]:
    """What a parser says; ``lower``: as the binding gives it, field names
    lower-cased and the server's fields as a dict (the reader's split_fields)."""
    try:
        parts = parse(*args)
    except ProtocolError as exc:
        return ("refused", exc.status, str(exc))
    if lower and parts is not None:
        method, target, version, fields, _, _ = parts
        lowered = [(name.lower(), value) for name, value in fields]
        split = split_fields(lowered)
        known = None if split is None else split[0]
        parts = (method, target, version, lowered, known, present_mask(known))
    return ("parts", parts)


def present_mask(known: dict[str, str] | None) -> int:
    """The mask of the server's fields in ``known`` (bit i: SERVER_ORDER[i]); -1 without it."""
    if known is None:
        return ALL_PRESENT
    return sum(1 << SERVER_ORDER.index(name) for name in known)


def same(ours: tuple[Any, ...], theirs: tuple[Any, ...]) -> bool:
    """The same answer; the server's dict (and with it the mask) may be missing
    from ours (not made: a head the binding passed to httptools' binding),
    never different."""
    if ours[0] == "parts" and ours[1] is not None and ours[1][4] is None and theirs[1] is not None:
        return bool(ours[1][:4] == theirs[1][:4] and ours[1][5] == ALL_PRESENT)
    return ours == theirs


# One of each for the whole run: httptools' parser carries state from head to
# head (it is reused), the binding carries none; the answers must not differ.
OURS = llhttp_parser.LlhttpHeadParser(server_fields=True)
THEIRS = HttptoolsHeadParser()

RELAXED = settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@RELAXED
@given(heads())
@example(b"GET / HTTP/1.1\r\nHost: x\r\nEmpty:\r\nX: v \t\r\n\r\n")
@example(b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
@example(b"CONNECT h:443 HTTP/1.1\r\nHost: h:443\r\n\r\n")
@example(b"GET /\xc3\xa9 HTTP/1.1\r\nHost: x\r\n\r\n")
@example(b"GET / HTTP/1.0\r\nConnection: close\r\n\r\n")
@example(b"GET / HTTP/3.0\r\nHost: x\r\n\r\n")
# A repeat whose values are one shared str (empty, or one character).
@example(b"GET / HTTP/1.1\r\nHost: \r\nHost: \r\n\r\n")
@example(b"GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n")
def test_a_head_gets_the_same_answer(head: bytes) -> None:
    assert same(outcome(OURS.parse, head), outcome(THEIRS.parse, head, lower=True))


AFTER = [b"", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"abcde", b"0\r\n\r\n"]


@RELAXED
@given(heads(), st.sampled_from(AFTER))
@example(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n", b"abcde")
@example(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n", b"0\r\n\r\n")
@example(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
def test_a_buffer_is_one_whole_request_for_both_or_neither(head: bytes, after: bytes) -> None:
    buf = head + after
    if not buf.endswith(b"\r\n\r\n"):
        buf += b"\r\n\r\n"
    line_end = buf.find(b"\r\n")
    # A fresh httptools parser: a reused one refuses whatever follows a
    # request that closes the connection (its parse_whole then says None and
    # its parse retries with a fresh one); the binding's parser is always fresh.
    theirs = HttptoolsHeadParser()
    ours = outcome(OURS.parse_whole, buf, line_end)
    assert same(ours, outcome(theirs.parse_whole, buf, line_end, lower=True))


@pytest.mark.parametrize("count", [1, 63, 64, 65, 200])
def test_many_fields_give_the_same_list(count: int) -> None:
    """Past the fields the binding holds, httptools' binding reads the head: the same list."""
    fields = "".join(f"X-{i}: {i}\r\n" for i in range(count))
    head = f"GET / HTTP/1.1\r\nHost: x\r\n{fields}\r\n".encode()
    ours = OURS.parse(head)
    theirs = outcome(THEIRS.parse, head, lower=True)[1]
    assert ours[:4] == theirs[:4]
    # (Past them, no dict: the reader makes it from the list.)
    assert ours[4:] == (theirs[4:] if count + 1 <= 64 else (None, ALL_PRESENT))
    assert len(ours[3]) == count + 1
    assert ours[3][-1] == (f"x-{count - 1}".encode(), str(count - 1).encode())
    whole = OURS.parse_whole(head, head.find(b"\r\n"))
    assert whole == (ours if count + 1 <= 64 else None)


def test_common_names_come_as_one_shared_object() -> None:
    """A common name is one bytes object in every head (its hash kept in it); others are new."""
    first = OURS.parse(b"GET / HTTP/1.1\r\nHOST: a\r\nX-Own: 1\r\n\r\n")[3]
    second = OURS.parse(b"GET / HTTP/1.1\r\nhost: b\r\nx-own: 2\r\n\r\n")[3]
    assert first == [(b"host", b"a"), (b"x-own", b"1")]
    assert second == [(b"host", b"b"), (b"x-own", b"2")]
    assert first[0][0] is second[0][0]
    assert first[1][0] is not second[1][0]


def test_the_compiled_build_reads_heads_through_the_binding() -> None:
    assert type(make_parser("httptools")) is llhttp_parser.LlhttpHeadParser


def test_the_servers_fields_come_as_a_dict_and_a_repeat_gives_none() -> None:
    head = b"GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 1.2.3.4\r\nAccept: */*\r\n\r\n"
    assert OURS.parse(head)[4] == {"host": "a", "x-forwarded-for": "1.2.3.4"}
    again = b"GET / HTTP/1.1\r\nHost: a\r\nConnection: x\r\nconnection: y\r\n\r\n"
    assert OURS.parse(again)[4] is None


def test_a_servers_field_value_that_repeats_comes_as_the_same_str() -> None:
    """A repeated value (the Host of every head from one client) is one str, its hash
    kept in it; another value, or one past the size held, is a str of its own."""
    long_value = "h" * 200
    heads = [
        f"GET / HTTP/1.1\r\nHost: {host}\r\nX-Forwarded-Proto: https\r\n\r\n".encode()
        for host in ("example.com", "example.com", "example.org", long_value, long_value)
    ]
    known = [OURS.parse(head)[4] for head in heads]
    assert [k["host"] for k in known] == [
        "example.com",
        "example.com",
        "example.org",
        *[long_value] * 2,
    ]
    assert known[0]["host"] is known[1]["host"]
    assert known[1]["host"] is not known[2]["host"]
    assert known[3]["host"] is not known[4]["host"]
    assert known[0]["x-forwarded-proto"] is known[4]["x-forwarded-proto"] == "https"
    # (Not a bytes-level match of another field's last value: each name has its own.)
    other = OURS.parse(b"GET / HTTP/1.1\r\nHost: https\r\n\r\n")[4]
    assert other == {"host": "https"}
    assert other["host"] is not known[4]["x-forwarded-proto"]


def test_configure_takes_only_names_it_shares_and_changes_nothing_when_it_refuses() -> None:
    from prefork.http.parsers import _llhttp

    head = b"GET / HTTP/1.1\r\nHost: a\r\nAccept: b\r\n\r\n"
    with pytest.raises(ValueError, match="'x-own' is not among the binding's common names"):
        _llhttp.configure(["accept", "x-own"])
    assert OURS.parse(head)[4] == {"host": "a"}
    try:
        _llhttp.configure(["accept"])
        assert OURS.parse(head)[4:] == ({"accept": "b"}, 1)  # (its bit: the first name's)
        with pytest.raises(ValueError, match="at most 62 names"):
            _llhttp.configure(["accept"] * 63)
    finally:
        _llhttp.configure(SERVER_ORDER)
    assert OURS.parse(head)[4] == {"host": "a"}


def test_the_servers_dict_is_made_only_when_asked_for() -> None:
    """A worker whose app gets the whole dict (native, WSGI) does not pay for the other."""
    plain = llhttp_parser.LlhttpHeadParser()
    head = b"GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 1.2.3.4\r\n\r\n"
    assert plain.parse(head)[4] is None
    assert plain.parse_whole(head, head.find(b"\r\n")) == (*OURS.parse(head)[:4], None, -1)
    assert OURS.parse(head)[5] == present_mask(OURS.parse(head)[4]) == 0b11  # Host, X-F-For
    assert OURS.parse(head)[4] == {"host": "a", "x-forwarded-for": "1.2.3.4"}
