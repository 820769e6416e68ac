"""prefork.http.protocol: the sans-I/O RequestReader, Expect: 100-continue, response bytes.

The table covers what the reader answers to bytes, including the strict checks
and limits of prefork.http.request that it applies (test_request.py calls
build_request and parse_args directly). Every row runs against both parser
backends and is fed whole, in two pieces split at every byte boundary, and one
byte at a time: the answer (the parsed requests, then the error status or none)
is the same every time.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import pytest

from prefork.errors import ProtocolError
from prefork.http.fields import SERVER_FIELDS
from prefork.http.head_cache import MISS_RUN, SAMPLE_EVERY, HeadCache
from prefork.http.parsers import make_parser
from prefork.http.protocol import FORBIDDEN_TRAILERS, RequestReader
from prefork.http.request import Limits
from prefork.http.response import (
    CONTINUE_RESPONSE,
    DATE,
    DateHeader,
    bodyless_status,
    error_response,
    status_line,
)
from tests.unit.conftest import snapshot

BACKENDS = ["httptools", "h11"]

# Small limits keep the rows short enough to split at every byte.
LINE_LIMIT = 100
MAX_FIELDS = 8
MAX_BODY = 32
HEAD_LIMIT = 400


def small_limits() -> Limits:
    limits = Limits(LINE_LIMIT, MAX_FIELDS, MAX_BODY)
    limits.head_limit = HEAD_LIMIT  # the real floor is 64 KiB; see the default-limit tests
    return limits


def req(
    target: str = "/",
    method: str = "GET",
    *,
    version: str = "1.1",
    headers: dict[str, str] | None = None,
    body: bytes = b"",
    keep_alive: bool | None = None,
    path: str | None = None,
    query: str | None = None,
) -> dict[str, Any]:
    """The expected parsed request; path and query default to the origin-form split."""
    if path is None:
        path, _, split_query = target.partition("?")
        query = split_query if query is None else query
    return {
        "method": method,
        "target": target,
        "path": path,
        "query": query or "",
        "version": version,
        "headers": {"host": "a"} if headers is None else headers,
        "body": body,
        "keep_alive": (version == "1.1") if keep_alive is None else keep_alive,
    }


@dataclasses.dataclass(frozen=True)
class Case:
    id: str
    raw: bytes
    requests: tuple[dict[str, Any], ...] = ()
    status: int | None = None
    eof: bool = False


def ok(id: str, raw: bytes, *requests: dict[str, Any], eof: bool = False) -> Case:
    return Case(id, raw, tuple(requests), None, eof)


def fail(id: str, raw: bytes, status: int, *before: dict[str, Any], eof: bool = False) -> Case:
    return Case(id, raw, tuple(before), status, eof)


def head(first: bytes, *fields: bytes) -> bytes:
    return first + b"\r\n" + b"".join(f + b"\r\n" for f in fields) + b"\r\n"


def get(*fields: bytes, target: bytes = b"/", version: bytes = b"1.1") -> bytes:
    return head(b"GET " + target + b" HTTP/" + version, b"Host: a", *fields)


def post(body: bytes, *fields: bytes) -> bytes:
    return head(b"POST / HTTP/1.1", b"Host: a", *fields) + body


def chunked(body: bytes, *fields: bytes) -> bytes:
    return post(body, b"Transfer-Encoding: chunked", *fields)


CL5 = b"Content-Length: 5"
TE = b"Transfer-Encoding: chunked"
CHUNKED_HELLO = b"5\r\nhello\r\n0\r\n\r\n"
POST_HELLO = req(method="POST", headers={"host": "a", "content-length": "5"}, body=b"hello")
POST_CHUNKED = {"host": "a", "transfer-encoding": "chunked"}
AT_LIMIT_TARGET = b"/" + b"t" * (LINE_LIMIT - len(b"GET / HTTP/1.1"))
AT_LIMIT_VALUE = b"v" * (LINE_LIMIT - len(b"X: "))

CASES = [
    # -- accepted requests and what they parse to --------------------------------
    ok("get", get(), req()),
    ok("query-string", get(target=b"/p/q?a=1&b=&c"), req("/p/q?a=1&b=&c")),
    ok(
        "repeated-fields-joined",
        get(b"X-A: 1", b"x-a: 2"),
        req(headers={"host": "a", "x-a": "1, 2"}),
    ),
    ok(
        "cookies-joined-with-semicolon",
        get(b"Cookie: a=1", b"Cookie: b=2"),
        req(headers={"host": "a", "cookie": "a=1; b=2"}),
    ),
    ok("names-lower-cased", get(b"X-MiXeD: V"), req(headers={"host": "a", "x-mixed": "V"})),
    ok("value-ows-stripped", get(b"X: \t v v \t "), req(headers={"host": "a", "x": "v v"})),
    ok("empty-value", get(b"X:"), req(headers={"host": "a", "x": ""})),
    ok(
        "htab-and-obs-text-in-value",
        get(b"X: a\tb\xe9"),
        req(headers={"host": "a", "x": "a\tb\xe9"}),
    ),
    ok("post-content-length", post(b"hello", CL5), POST_HELLO),
    ok(
        "content-length-zero",
        post(b"", b"Content-Length: 0"),
        req(method="POST", headers={"host": "a", "content-length": "0"}),
    ),
    ok(
        "content-length-leading-zeros",
        post(b"hello", b"Content-Length: 005"),
        req(method="POST", headers={"host": "a", "content-length": "005"}, body=b"hello"),
    ),
    ok(
        "chunked",
        chunked(b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"),
        req(method="POST", headers=POST_CHUNKED, body=b"hello world"),
    ),
    ok(
        "chunked-hex-sizes-and-extensions",
        chunked(b'A;n=v;q="x y" ; t\r\n0123456789\r\n00;z\r\n\r\n'),
        req(method="POST", headers=POST_CHUNKED, body=b"0123456789"),
    ),
    ok(
        "chunked-coding-case-insensitive",
        post(b"0\r\n\r\n", b"Transfer-Encoding: Chunked"),
        req(method="POST", headers={"host": "a", "transfer-encoding": "Chunked"}),
    ),
    ok(
        "allowed-trailer-dropped",
        chunked(b"5\r\nhello\r\n0\r\nX-Checksum: abc\r\nX-Other:\r\n\r\n", b"Trailer: X-Checksum"),
        req(
            method="POST",
            headers={**POST_CHUNKED, "trailer": "X-Checksum"},
            body=b"hello",
        ),
    ),
    ok("http10-without-host", head(b"GET / HTTP/1.0"), req(version="1.0", headers={})),
    ok(
        "http10-keep-alive",
        head(b"GET / HTTP/1.0", b"Connection: keep-alive"),
        req(version="1.0", headers={"connection": "keep-alive"}, keep_alive=True),
    ),
    ok(
        "http10-keep-alive-and-close",
        head(b"GET / HTTP/1.0", b"Connection: Keep-Alive, close"),
        req(version="1.0", headers={"connection": "Keep-Alive, close"}, keep_alive=False),
    ),
    ok(
        "http11-connection-close",
        get(b"Connection: close"),
        req(headers={"host": "a", "connection": "close"}, keep_alive=False),
    ),
    ok(
        "http11-close-in-token-list",
        get(b"Connection: Upgrade, CLOSE"),
        req(headers={"host": "a", "connection": "Upgrade, CLOSE"}, keep_alive=False),
    ),
    ok("leading-crlf-ignored", b"\r\n" + get(), req()),
    # A buffer that ends in CRLF CRLF is first offered to llhttp whole
    # (HeadParser.parse_whole): these hold more than one head, or a body.
    ok("crlfs-after-a-request", get() + b"\r\n\r\n", req()),
    ok(
        "body-ending-in-crlf-crlf",
        post(b"a\r\n\r\n", CL5),
        req(method="POST", headers={"host": "a", "content-length": "5"}, body=b"a\r\n\r\n"),
    ),
    ok(
        "body-that-looks-like-a-head",
        post(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n", b"Content-Length: 28"),
        req(
            method="POST",
            headers={"host": "a", "content-length": "28"},
            body=b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n",
        ),
    ),
    ok(
        "chunked-with-trailer-in-one-buffer",
        chunked(b"0\r\nX-Checksum: abc\r\n\r\n"),
        req(method="POST", headers=POST_CHUNKED),
    ),
    ok("two-heads-in-one-buffer", get(target=b"/1") + get(target=b"/2"), req("/1"), req("/2")),
    fail("a-good-head-then-a-bad-one", get() + head(b"GET / HTTP/1.1", b"X : a"), 400, req()),
    ok("crlf-between-requests-ignored", get() + b"\r\n" + get(), req(), req()),
    ok(
        "pipelined-in-order",
        get(target=b"/1") + post(b"hello", CL5) + chunked(CHUNKED_HELLO) + get(target=b"/4"),
        req("/1"),
        POST_HELLO,
        req(method="POST", headers=POST_CHUNKED, body=b"hello"),
        req("/4"),
    ),
    ok(
        "pipelined-after-connection-close",
        get(b"Connection: close") + get(target=b"/2"),
        req(headers={"host": "a", "connection": "close"}, keep_alive=False),
        req("/2"),
    ),
    ok(
        "pipelined-after-http10",
        head(b"GET / HTTP/1.0") + get(target=b"/2"),
        req(version="1.0", headers={}),
        req("/2"),
    ),
    # The bytes behind an Upgrade request stay unparsed until the connection
    # resumes the reader (they may be the new protocol's).
    ok(
        "upgrade-pauses-parsing",
        get(b"Upgrade: websocket", b"Connection: upgrade") + get(target=b"/2"),
        req(headers={"host": "a", "upgrade": "websocket", "connection": "upgrade"}),
    ),
    # RFC 9112 §3.2.2: the authority of an absolute-form target replaces Host.
    ok(
        "absolute-form",
        get(target=b"http://example.com/x?y=1"),
        req("http://example.com/x?y=1", path="/x", query="y=1", headers={"host": "example.com"}),
    ),
    ok(
        "absolute-form-without-path",
        get(target=b"HTTPS://example.com:8443"),
        req("HTTPS://example.com:8443", path="/", headers={"host": "example.com:8443"}),
    ),
    ok(
        "absolute-form-query-without-path",
        get(target=b"http://[::1]?y"),
        req("http://[::1]?y", path="/", query="y", headers={"host": "[::1]"}),
    ),
    ok(
        "absolute-form-http10-without-host",
        head(b"GET http://b:81/ HTTP/1.0"),
        req("http://b:81/", path="/", version="1.0", headers={"host": "b:81"}),
    ),
    fail("absolute-form-still-needs-host", head(b"GET http://b/ HTTP/1.1"), 400),
    ok("asterisk-form-options", get(target=b"*").replace(b"GET", b"OPTIONS"), req("*", "OPTIONS")),
    ok("host-with-port", head(b"GET / HTTP/1.1", b"Host: a:80"), req(headers={"host": "a:80"})),
    ok(
        "host-ipv6",
        head(b"GET / HTTP/1.1", b"Host: [::1]:8080"),
        req(headers={"host": "[::1]:8080"}),
    ),
    ok(
        "request-line-at-limit",
        get(target=AT_LIMIT_TARGET),
        req(AT_LIMIT_TARGET.decode()),
    ),
    ok(
        "field-line-at-limit",
        get(b"X: " + AT_LIMIT_VALUE),
        req(headers={"host": "a", "x": AT_LIMIT_VALUE.decode()}),
    ),
    ok(
        "head-longer-than-line-limit",
        get(b"X: " + AT_LIMIT_VALUE, b"Y: " + AT_LIMIT_VALUE),
        req(headers={"host": "a", "x": AT_LIMIT_VALUE.decode(), "y": AT_LIMIT_VALUE.decode()}),
    ),
    ok(
        "max-header-count-fields",
        get(*(b"X-%d: v" % i for i in range(MAX_FIELDS - 1))),
        req(headers={"host": "a", **{f"x-{i}": "v" for i in range(MAX_FIELDS - 1)}}),
    ),
    ok(
        "content-length-at-max",
        post(b"b" * MAX_BODY, b"Content-Length: %d" % MAX_BODY),
        req(
            method="POST",
            headers={"host": "a", "content-length": str(MAX_BODY)},
            body=b"b" * MAX_BODY,
        ),
    ),
    ok(
        "chunked-at-max",
        chunked(b"10\r\n" + b"b" * 16 + b"\r\n10\r\n" + b"b" * 16 + b"\r\n0\r\n\r\n"),
        req(method="POST", headers=POST_CHUNKED, body=b"b" * MAX_BODY),
    ),
    ok(
        "expect-100-continue",
        post(b"hello", CL5, b"Expect: 100-Continue"),
        req(
            method="POST",
            headers={"host": "a", "content-length": "5", "expect": "100-Continue"},
            body=b"hello",
        ),
    ),
    ok("eof-after-request", get(), req(), eof=True),
    ok("eof-after-crlf", get() + b"\r\n", req(), eof=True),
    # -- framing: Content-Length and Transfer-Encoding ---------------------------
    fail("cl-and-te", chunked(CHUNKED_HELLO, CL5), 400),
    fail("te-and-cl", post(b"hello", CL5, TE), 400),
    fail("te-on-http10", head(b"POST / HTTP/1.0", TE) + CHUNKED_HELLO, 400),
    fail("te-chunked-gzip", post(CHUNKED_HELLO, b"Transfer-Encoding: chunked, gzip"), 400),
    fail("te-gzip-chunked", post(CHUNKED_HELLO, b"Transfer-Encoding: gzip, chunked"), 400),
    fail("te-xchunked", post(CHUNKED_HELLO, b"Transfer-Encoding: xchunked"), 400),
    fail("te-identity", post(b"", b"Transfer-Encoding: identity"), 400),
    fail(
        "te-chunked-twice-in-list", post(CHUNKED_HELLO, b"Transfer-Encoding: chunked, chunked"), 400
    ),
    fail("te-two-lines", chunked(CHUNKED_HELLO, TE), 400),
    fail("te-empty", post(b"", b"Transfer-Encoding:"), 400),
    fail("te-trailing-htab", post(CHUNKED_HELLO, b"Transfer-Encoding: chunked\t"), 400),
    fail("te-trailing-sp-htab", post(CHUNKED_HELLO, b"Transfer-Encoding: chunked \t"), 400),
    ok(
        "te-trailing-sp",
        post(CHUNKED_HELLO, b"Transfer-Encoding: chunked  "),
        req(method="POST", headers=POST_CHUNKED, body=b"hello"),
    ),
    fail("cl-list-form", post(b"hello", b"Content-Length: 5, 5"), 400),
    fail("cl-two-equal-lines", post(b"hello", CL5, CL5), 400),
    fail("cl-two-different-lines", post(b"hello", CL5, b"Content-Length: 6"), 400),
    fail("cl-plus-sign", post(b"hello", b"Content-Length: +5"), 400),
    fail("cl-negative", post(b"hello", b"Content-Length: -5"), 400),
    fail("cl-hex", post(b"hello", b"Content-Length: 0x5"), 400),
    fail("cl-inner-space", post(b"hello", b"Content-Length: 5 5"), 400),
    fail("cl-empty", post(b"hello", b"Content-Length:"), 400),
    fail("cl-over-max", post(b"", b"Content-Length: %d" % (MAX_BODY + 1)), 413),
    fail("cl-19-digits", post(b"", b"Content-Length: " + b"9" * 19), 413),
    fail("cl-20-digits", post(b"", b"Content-Length: " + b"9" * 20), 413),
    fail("cl-21-digits", post(b"", b"Content-Length: " + b"9" * 21), 413),
    fail("cl-40-digits", post(b"", b"Content-Length: " + b"1" * 40), 413),
    fail("cl-huge-and-te", post(b"", b"Content-Length: " + b"9" * 30, TE), 400),
    fail("cl-huge-then-bad-field", post(b"", b"Content-Length: " + b"9" * 30, b"X: \x07"), 400),
    fail(
        "cl-over-max-with-expect-100-continue",
        post(b"", b"Content-Length: 99", b"Expect: 100-continue"),
        413,
    ),
    # -- field syntax ------------------------------------------------------------
    fail("obs-fold-sp", get(b"X: one", b" two"), 400),
    fail("obs-fold-htab", get(b"X: one", b"\ttwo"), 400),
    fail("whitespace-before-first-field", head(b"GET / HTTP/1.1", b" Host: a"), 400),
    fail("space-before-colon", get(b"X : v"), 400),
    fail("htab-before-colon", get(b"X\t: v"), 400),
    fail("empty-field-name", get(b": v"), 400),
    fail("field-without-colon", get(b"X"), 400),
    fail("nul-in-value", get(b"X: a\x00b"), 400),
    fail("bel-in-value", get(b"X: a\x07b"), 400),
    fail("esc-in-value", get(b"X: a\x1bb"), 400),
    fail("del-in-value", get(b"X: a\x7fb"), 400),
    fail("vt-in-value", get(b"X: a\x0bb"), 400),
    fail("bel-at-end-of-value", get(b"X: ab\x07"), 400),
    fail("ctl-in-name", get(b"X\x07Y: v"), 400),
    fail("non-token-in-name", get(b"X(Y): v"), 400),
    fail("bare-cr-in-value", get(b"X: a\rb"), 400),
    fail("bare-lf-after-request-line", b"GET / HTTP/1.1\nHost: a\r\n\r\n", 400),
    fail("bare-lf-after-field", b"GET / HTTP/1.1\r\nHost: a\n\r\n", 400),
    fail("bare-lf-ends-head", b"GET / HTTP/1.1\r\nHost: a\r\n\n", 400),
    fail("bare-lf-everywhere", b"GET / HTTP/1.1\nHost: a\n\n", 400),
    fail("bare-cr-after-request-line", b"GET / HTTP/1.1\rHost: a\r\n\r\n", 400),
    fail("leading-bare-lf", b"\nGET / HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    fail("leading-bare-cr", b"\r\rGET / HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    fail(
        "bare-lf-after-a-body-ending-in-cr",
        post(b"\r", b"Content-Length: 1") + b"\n" + get(),
        400,
        req(method="POST", headers={"host": "a", "content-length": "1"}, body=b"\r"),
    ),
    # -- Host --------------------------------------------------------------------
    fail("host-missing", head(b"GET / HTTP/1.1"), 400),
    fail("host-twice", get(b"Host: a"), 400),
    fail("host-twice-differing", get(b"Host: b"), 400),
    fail("host-empty", head(b"GET / HTTP/1.1", b"Host:"), 400),
    fail("host-with-space", head(b"GET / HTTP/1.1", b"Host: a b"), 400),
    fail("host-with-userinfo", head(b"GET / HTTP/1.1", b"Host: u@a"), 400),
    fail("host-bad-port", head(b"GET / HTTP/1.1", b"Host: a:b"), 400),
    fail("host-with-path", head(b"GET / HTTP/1.1", b"Host: a/b"), 400),
    fail("http10-bad-host", head(b"GET / HTTP/1.0", b"Host: u@a"), 400),
    # RFC 9110 §5.3: a field whose value is one item cannot be joined; a repeat is refused.
    *(
        fail(f"repeated-{name.lower()}", get(f"{name}: x".encode(), f"{name}: y".encode()), 400)
        for name in (
            "Content-Type",
            "Content-Encoding",
            "Content-Location",
            "Content-Range",
            "Authorization",
            "Proxy-Authorization",
            "If-Modified-Since",
            "If-Unmodified-Since",
            "If-Range",
            "Range",
            "Max-Forwards",
        )
    ),
    fail("repeated-content-type-any-case", get(b"Content-Type: a/b", b"content-TYPE: a/b"), 400),
    # -- the request line and target ---------------------------------------------
    fail("fragment-in-target", get(target=b"/a#b"), 400),
    fail("asterisk-form-for-get", get(target=b"*"), 400),
    fail("authority-form", get(target=b"a:443"), 400),
    fail("connect", head(b"CONNECT a:443 HTTP/1.1", b"Host: a:443"), 400),
    fail("relative-target", get(target=b"a/b"), 400),
    fail("query-only-target", get(target=b"?a"), 400),
    fail("absolute-form-with-userinfo", get(target=b"http://u@a/x"), 400),
    fail("absolute-form-without-host", get(target=b"http:///x"), 400),
    fail("absolute-form-other-scheme", get(target=b"ftp://a/x"), 400),
    fail("non-ascii-in-target", get(target=b"/\xe9"), 400),
    fail("ctl-in-target", get(target=b"/a\x07b"), 400),
    fail("unknown-method", head(b"FOO / HTTP/1.1", b"Host: a"), 400),
    fail("lower-case-method", head(b"get / HTTP/1.1", b"Host: a"), 400),
    fail("double-space-in-request-line", head(b"GET  / HTTP/1.1", b"Host: a"), 400),
    fail("double-space-before-version", head(b"GET /a  HTTP/1.1", b"Host: a"), 400),
    fail("spaces-and-no-host", head(b"GET   /a HTTP/1.1", b"X: y"), 400),
    fail("trailing-space-in-request-line", head(b"GET / HTTP/1.1 ", b"Host: a"), 400),
    fail("htab-in-request-line", head(b"GET\t/ HTTP/1.1", b"Host: a"), 400),
    fail("no-version", head(b"GET /", b"Host: a"), 400),
    fail("lower-case-protocol", head(b"GET / http/1.1", b"Host: a"), 400),
    fail("version-two-digit-minor", head(b"GET / HTTP/1.10", b"Host: a"), 400),
    fail("http-2.0", get(version=b"2.0"), 505),
    fail("http-1.2", get(version=b"1.2"), 505),
    fail("http-0.9", get(version=b"0.9"), 505),
    fail("http-3.0", get(version=b"3.0"), 505),
    fail("http-2.0-with-bad-field", get(b"X: \x07", version=b"2.0"), 505),
    fail("http-1.2-with-bad-field", get(b"X: \x00", version=b"1.2"), 505),
    # -- chunked bodies ----------------------------------------------------------
    fail("chunk-ext-bare-cr", chunked(b"5;ext=val\rue\r\nhello\r\n0\r\n\r\n"), 400),
    fail("chunk-ext-bare-lf", chunked(b"5;ext=val\nue\r\nhello\r\n0\r\n\r\n"), 400),
    fail("chunk-size-trailing-space", chunked(b"5 \r\nhello\r\n0\r\n\r\n"), 400),
    fail("chunk-size-leading-space", chunked(b" 5\r\nhello\r\n0\r\n\r\n"), 400),
    fail("chunk-ext-bare-semicolon", chunked(b"5;\r\nhello\r\n0\r\n\r\n"), 400),
    fail("chunk-ext-without-value", chunked(b"5;a=\r\nhello\r\n0\r\n\r\n"), 400),
    fail("chunk-ext-unclosed-quote", chunked(b'5;a="b\r\nhello\r\n0\r\n\r\n'), 400),
    fail("chunk-size-17-hex-digits", chunked(b"00000000000000005\r\nhello\r\n0\r\n\r\n"), 400),
    fail("chunk-size-16-hex-digits-over-max", chunked(b"ffffffffffffffff\r\n"), 413),
    fail("chunk-size-0x", chunked(b"0x5\r\nhello\r\n0\r\n\r\n"), 400),
    fail("chunk-size-negative", chunked(b"-5\r\nhello\r\n0\r\n\r\n"), 400),
    fail("chunk-size-underscore", chunked(b"6_0\r\n"), 400),
    fail("chunk-size-missing", chunked(b"\r\nhello\r\n0\r\n\r\n"), 400),
    fail("chunk-size-bare-lf", chunked(b"5\nhello\r\n0\r\n\r\n"), 400),
    fail("chunk-data-without-crlf", chunked(b"5\r\nhelloXX0\r\n\r\n"), 400),
    fail("chunk-data-bare-lf", chunked(b"5\r\nhello\n0\r\n\r\n"), 400),
    fail("chunk-data-bare-cr", chunked(b"5\r\nhello\r0\r\n\r\n"), 400),
    fail("chunk-over-max-before-its-data", chunked(b"%x\r\n" % (MAX_BODY + 1)), 413),
    fail("chunks-sum-over-max", chunked(b"10\r\n" + b"b" * 16 + b"\r\n11\r\n"), 413),
    fail("last-chunk-bare-lf", chunked(b"5\r\nhello\r\n0\n\r\n"), 400),
    # -- trailers ----------------------------------------------------------------
    fail("trailer-content-length", chunked(b"0\r\nContent-Length: 5\r\n\r\n"), 400),
    fail("trailer-host", chunked(b"0\r\nHost: evil\r\n\r\n"), 400),
    fail("trailer-transfer-encoding", chunked(b"0\r\nTransfer-Encoding: chunked\r\n\r\n"), 400),
    fail("trailer-ctl-in-value", chunked(b"0\r\nX: a\x07b\r\n\r\n"), 400),
    fail("trailer-obs-fold", chunked(b"0\r\nX: a\r\n b\r\n\r\n"), 400),
    fail("trailer-without-colon", chunked(b"0\r\nX\r\n\r\n"), 400),
    fail("trailer-space-before-colon", chunked(b"0\r\nX : a\r\n\r\n"), 400),
    fail("trailer-bare-lf", chunked(b"0\r\nX: a\n\r\n"), 400),
    fail("trailer-bare-cr", chunked(b"0\r\nX: a\rb\r\n\r\n"), 400),
    # -- limits ------------------------------------------------------------------
    fail("request-line-over-limit-before-crlf", b"GET /" + b"t" * LINE_LIMIT, 414),
    fail("request-line-over-limit", get(target=AT_LIMIT_TARGET + b"t"), 414),
    fail(
        "field-line-over-limit-before-crlf",
        b"GET / HTTP/1.1\r\nHost: a\r\nX: " + AT_LIMIT_VALUE + b"v",
        431,
    ),
    fail("field-line-over-limit", get(b"X: " + AT_LIMIT_VALUE + b"v"), 431),
    fail("too-many-fields", get(*(b"X-%d: v" % i for i in range(MAX_FIELDS))), 431),
    fail(
        "head-over-head-limit",
        get(*(b"X: " + b"v" * 60 for _ in range(HEAD_LIMIT // 60))),
        431,
    ),
    fail(
        "head-over-head-limit-before-its-end",
        get(*(b"X: " + b"v" * 60 for _ in range(HEAD_LIMIT // 60)))[:-4],
        431,
    ),
    fail("chunk-size-line-over-limit", chunked(b"5;a=" + b"b" * LINE_LIMIT), 400),
    fail("trailer-line-over-limit", chunked(b"0\r\nX: " + AT_LIMIT_VALUE + b"v\r\n\r\n"), 431),
    fail("trailer-line-over-limit-before-crlf", chunked(b"0\r\nX: " + AT_LIMIT_VALUE + b"v"), 431),
    # -- which fault wins: the first one in the byte stream, and 400 over 413/431/417
    fail("bare-lf-before-long-line", b"GET / HTTP/1.1\nX: " + b"v" * LINE_LIMIT + b"\r\n\r\n", 400),
    fail("long-line-before-bare-lf", get(b"X: " + AT_LIMIT_VALUE + b"v\n", b"Y: 1"), 431),
    fail("bare-cr-before-long-line", get(b"X: a\rb" + AT_LIMIT_VALUE), 400),
    fail(
        "ctl-and-too-many-fields",
        get(b"X: \x07", *(b"X-%d: v" % i for i in range(MAX_FIELDS))),
        400,
    ),
    fail("cl-te-and-too-many-fields", chunked(b"", CL5, *(b"X-%d: v" % i for i in range(7))), 400),
    fail(
        "bad-host-and-too-many-fields",
        head(b"GET / HTTP/1.1", b"Host: a b", *(b"X-%d: v" % i for i in range(8))),
        400,
    ),
    fail("expect-and-cl-over-max", post(b"", b"Content-Length: 99", b"Expect: nope"), 413),
    fail("trailer-bare-lf-before-long-line", chunked(b"0\r\nX: a\n" + b"v" * LINE_LIMIT), 400),
    # -- Expect ------------------------------------------------------------------
    fail("expect-other", post(b"hello", CL5, b"Expect: something"), 417),
    # -- nothing after a rejected request is read as a request --------------------
    fail("no-request-after-rejected-one", chunked(CHUNKED_HELLO, CL5) + get(), 400),
    fail(
        "smuggled-request-in-cl-te-body",
        post(b"0\r\n\r\n" + get(target=b"/admin"), b"Content-Length: 43", TE),
        400,
    ),
    fail(
        "requests-before-rejected-one-kept",
        get(target=b"/1") + get(b"X: \x07") + get(target=b"/3"),
        400,
        req("/1"),
    ),
    fail(
        "smuggled-after-bad-chunk",
        chunked(b"5 \r\nhello\r\n0\r\n\r\n") + get(target=b"/admin"),
        400,
    ),
    # -- end of stream -----------------------------------------------------------
    fail("eof-inside-head", b"GET / HTTP/1.1\r\nHost: a\r\n", 400, eof=True),
    fail("eof-inside-request-line", b"GET / HT", 400, eof=True),
    fail("eof-inside-body", post(b"hel", CL5), 400, eof=True),
    fail("eof-inside-chunk", chunked(b"5\r\nhel"), 400, eof=True),
    fail("eof-inside-trailers", chunked(b"0\r\nX: a\r\n"), 400, eof=True),
    fail("eof-inside-second-request", get() + b"GET /", 400, req(), eof=True),
]


def splits(data: bytes) -> Iterator[tuple[str, list[bytes]]]:
    """The same bytes fed whole, in two pieces at every boundary, one byte at a time."""
    yield "whole", [data]
    for i in range(1, len(data)):
        yield f"split at {i}", [data[:i], data[i:]]
    yield "bytewise", [data[i : i + 1] for i in range(len(data))]


def check_server_fields(request: Any) -> None:
    """A request read for a list: its dict is the server's fields (or all of
    them), its list every field lower-cased in order; the whole dict agrees."""
    fields, headers = request.fields, request.headers
    assert set(fields) <= set(headers)
    assert {name: headers[name] for name in fields} == fields
    assert set(headers) & SERVER_FIELDS <= set(fields)
    if request.lowered is not None:
        assert request.lowered == [(n.lower(), v) for n, v in request.raw_headers]


def run(
    backend: str, pieces: list[bytes], eof: bool = False, limits: Limits | None = None
) -> tuple[list[dict[str, Any]], int | None]:
    """Feed ``pieces`` to a fresh reader: the requests it yields, then its error status.

    ``backend`` "NAME+list": a reader whose requests carry only the server's
    fields as a dict (``fields_as_list``, as for ASGI); their whole dict, made
    when asked, must be the same as another reader's.
    """
    name, _, mode = backend.partition("+")
    reader = RequestReader(make_parser(name), limits or small_limits())
    reader.fields_as_list = mode == "list"
    got: list[dict[str, Any]] = []
    status = None
    for piece in pieces:
        try:
            reader.feed(piece)
        except ProtocolError as exc:
            assert status is None, "a failed reader raised again"
            status = exc.status
        while reader.requests:
            request = reader.requests.pop(0)
            if mode == "list":
                check_server_fields(request)
            got.append(snapshot(request))
    if eof:
        try:
            reader.eof()
        except ProtocolError as exc:
            assert status is None, "a failed reader raised again"
            status = exc.status
    if status is not None:
        # Nothing is ever parsed after a rejected request.
        reader.feed(get())
        assert not reader.requests
    return got, status


@pytest.mark.parametrize("backend", [*BACKENDS, "httptools+list", "h11+list"])
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_reader_answers_the_same_however_the_bytes_arrive(backend: str, case: Case) -> None:
    expected = (list(case.requests), case.status)
    for how, pieces in splits(case.raw):
        assert run(backend, pieces, case.eof) == expected, how


def test_case_ids_are_unique() -> None:
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids))


# -- Expect: 100-continue -----------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "fields",
    [(CL5,), (TE,)],
    ids=["content-length", "chunked"],
)
def test_expect_100_continue_sets_want_continue_until_the_body_is_read(
    backend: str, fields: tuple[bytes, ...]
) -> None:
    reader = RequestReader(make_parser(backend), small_limits())
    reader.feed(post(b"", *fields, b"Expect: 100-continue"))
    assert reader.want_continue
    assert reader.in_body
    assert not reader.requests
    reader.feed(b"hello" if fields == (CL5,) else CHUNKED_HELLO)
    assert not reader.want_continue
    assert [r.body for r in reader.requests] == [b"hello"]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "raw",
    [
        head(b"POST / HTTP/1.0", CL5, b"Expect: 100-continue"),
        post(b"", b"Content-Length: 0", b"Expect: 100-continue"),
        post(b"hello", CL5, b"Expect: 100-continue"),
    ],
    ids=["http10", "no-body", "body-already-here"],
)
def test_no_want_continue(backend: str, raw: bytes) -> None:
    reader = RequestReader(make_parser(backend), small_limits())
    reader.feed(raw)
    assert not reader.want_continue


@pytest.mark.parametrize("backend", BACKENDS)
def test_no_want_continue_for_a_413(backend: str) -> None:
    reader = RequestReader(make_parser(backend), small_limits())
    with pytest.raises(ProtocolError) as info:
        reader.feed(post(b"", b"Content-Length: 99", b"Expect: 100-continue"))
    assert info.value.status == 413
    assert not reader.want_continue
    assert not reader.in_body


# -- reader state -------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_head_started_and_in_body(backend: str) -> None:
    reader = RequestReader(make_parser(backend), small_limits())
    assert not reader.head_started
    assert not reader.in_body
    reader.feed(b"POST / HTTP/1.1\r\n")
    assert reader.head_started
    assert not reader.in_body
    reader.feed(b"Host: a\r\nContent-Length: 5\r\n\r\nhe")
    assert not reader.head_started
    assert reader.in_body
    reader.feed(b"llo")
    assert not reader.head_started
    assert not reader.in_body
    assert reader.buffered == 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_take_unparsed_hands_over_the_bytes_past_the_requests(backend: str) -> None:
    reader = RequestReader(make_parser(backend), small_limits())
    reader.feed(get() + b"\x16\x03\x01 not http")
    assert [r.path for r in reader.requests] == ["/"]
    assert reader.buffered == len(b"\x16\x03\x01 not http")
    assert reader.take_unparsed() == b"\x16\x03\x01 not http"
    assert reader.buffered == 0
    assert reader.take_unparsed() == b""


@pytest.mark.parametrize("backend", BACKENDS)
def test_feed_failed_stops_parsing_for_good(backend: str) -> None:
    reader = RequestReader(make_parser(backend), small_limits())
    reader.feed(get() + b"GET /")
    reader.feed_failed()
    assert not reader.requests
    reader.feed(b" HTTP/1.1\r\nHost: a\r\n\r\n" + get())
    assert not reader.requests
    assert not reader.in_body
    assert not reader.head_started
    reader.eof()  # no error: the reader already gave up


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_failed_reader_ignores_eof(backend: str) -> None:
    reader = RequestReader(make_parser(backend), small_limits())
    with pytest.raises(ProtocolError):
        reader.feed(b"GET / HTTP/9.9\r\n\r\n")
    reader.eof()
    assert reader.take_unparsed() == b""


@pytest.mark.parametrize("backend", BACKENDS)
def test_reader_reuses_its_parser_across_many_requests(backend: str) -> None:
    reader = RequestReader(make_parser(backend), small_limits())
    stream = (get(target=b"/a") + post(b"hello", CL5) + chunked(CHUNKED_HELLO)) * 20
    reader.feed(stream)
    assert [r.method for r in reader.requests] == ["GET", "POST", "POST"] * 20


@pytest.mark.parametrize("backend", BACKENDS)
def test_take_hands_out_requests_in_order_and_keeps_working_after_the_last(
    backend: str,
) -> None:
    reader = RequestReader(make_parser(backend), small_limits())
    reader.feed(get(target=b"/a") + get(target=b"/b"))
    assert reader.take().path == "/a"
    assert reader.take().path == "/b"
    assert not reader.requests
    reader.feed(get(target=b"/c"))  # the list left behind by the last take() is used
    assert [r.path for r in reader.requests] == ["/c"]
    assert reader.take().path == "/c"
    assert not reader.requests


# -- the default limits (API.md's 8192-byte lines, the 64 KiB head) -------------------


def default_limits() -> Limits:
    return Limits(8192, 100, 5 * 1024 * 1024)


@pytest.mark.parametrize("backend", BACKENDS)
def test_default_request_line_limit_gets_414_before_the_crlf(backend: str) -> None:
    reader = RequestReader(make_parser(backend), default_limits())
    reader.feed(b"GET /" + b"a" * 8186)  # 8191 bytes: still fine
    with pytest.raises(ProtocolError) as info:
        reader.feed(b"aa")
    assert info.value.status == 414


@pytest.mark.parametrize("backend", BACKENDS)
def test_default_field_line_limit_gets_431(backend: str) -> None:
    reader = RequestReader(make_parser(backend), default_limits())
    reader.feed(get(b"X: " + b"v" * (8192 - 3)))
    assert len(reader.requests) == 1
    with pytest.raises(ProtocolError) as info:
        reader.feed(get(b"X: " + b"v" * (8192 - 2)))
    assert info.value.status == 431


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("pieces", [1, 7, 300], ids=["whole", "7-pieces", "300-pieces"])
def test_default_head_limit_gets_431(backend: str, pieces: int) -> None:
    raw = get(*(b"X: " + b"v" * 8000 for _ in range(9)))  # nine lines under the line limit
    assert len(raw) > 64 * 1024
    size = -(-len(raw) // pieces)
    chunks = [raw[i : i + size] for i in range(0, len(raw), size)]
    assert run(backend, chunks, limits=default_limits()) == ([], 431)


@pytest.mark.parametrize("backend", BACKENDS)
def test_default_max_header_count(backend: str) -> None:
    fields = [b"X-%d: v" % i for i in range(99)]
    assert len(run(backend, [get(*fields)], limits=default_limits())[0]) == 1
    assert run(backend, [get(*fields, b"X-99: v")], limits=default_limits()) == ([], 431)


# -- trailers -----------------------------------------------------------------------


def test_forbidden_trailers_cover_the_framing_fields() -> None:
    assert {b"content-length", b"transfer-encoding", b"host", b"trailer"} <= FORBIDDEN_TRAILERS


# -- responses ----------------------------------------------------------------------


def test_error_response_is_a_complete_close_delimited_message() -> None:
    raw = error_response(431, "header line too long")
    head_bytes, _, body = raw.partition(b"\r\n\r\n")
    lines = head_bytes.split(b"\r\n")
    assert lines[0] == b"HTTP/1.1 431 Request Header Fields Too Large"
    assert b"Connection: close" in lines
    assert b"Content-Length: %d" % len(body) in lines
    assert b"Server: prefork" in lines
    assert any(line.startswith(b"Date: ") for line in lines)
    assert body == b"header line too long\n"


def test_error_response_to_head_is_the_head_alone() -> None:
    # RFC 9110 §9.3.2: no content in a response to HEAD, whatever the status.
    full = error_response(417, "unsupported Expect", "GET")
    assert error_response(417, "unsupported Expect", "HEAD") == full[: full.index(b"\r\n\r\n") + 4]
    assert error_response(417, "unsupported Expect") == full


def error_of(backend: str, pieces: list[bytes], eof: bool = False) -> ProtocolError | None:
    reader = RequestReader(make_parser(backend), small_limits())
    try:
        for piece in pieces:
            reader.feed(piece)
            reader.requests.clear()
        if eof:
            reader.eof()
    except ProtocolError as exc:
        return exc
    return None


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    ("raw", "eof", "status"),
    [
        (head(b"HEAD / HTTP/1.1", b"Host: a", b"Expect: nope"), False, 417),
        (head(b"HEAD / HTTP/1.1", b"Host: a", b"Content-Length: 999"), False, 413),
        (head(b"HEAD / HTTP/1.1", b"Host: a", b"Content-Type: a", b"Content-Type: b"), False, 400),
        (head(b"HEAD /a#b HTTP/1.1", b"Host: a"), False, 400),
        (head(b"HEAD / HTTP/1.1", b"Host: a", TE) + b"zz\r\n", False, 400),
        (head(b"HEAD / HTTP/1.1", b"Host: a", CL5) + b"hel", True, 400),
        (get() + head(b"HEAD / HTTP/1.1", b"Host: a", b"Expect: nope"), False, 417),
    ],
    ids=[
        "expect",
        "too-large",
        "repeated-field",
        "bad-target",
        "bad-chunk",
        "eof-in-body",
        "second",
    ],
)
def test_an_error_in_a_head_request_names_the_method(
    backend: str, raw: bytes, eof: bool, status: int
) -> None:
    """The reader tells the connection the refused request was HEAD, so no body is sent."""
    for how, pieces in splits(raw):
        exc = error_of(backend, pieces, eof)
        assert exc is not None, how
        assert (exc.status, exc.method) == (status, "HEAD"), how


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_error_before_the_method_is_known_names_none(backend: str) -> None:
    exc = error_of(backend, [b"HEAD / HTTP/1.1\r\nHost: a\r\nBad\x01: x\r\n\r\n"])
    assert exc is not None
    assert exc.status == 400
    exc = error_of(backend, [b"HEAD / HTTP/2.0\r\nHost: a\r\n\r\n"])
    assert exc is not None
    assert (exc.status, exc.method) == (505, None)


@pytest.mark.parametrize("case", [c for c in CASES if c.status], ids=lambda c: c.id)
def test_error_text_is_one_plain_line_the_same_on_both_backends(case: Case) -> None:
    texts = set()
    for backend in BACKENDS:
        for how, pieces in splits(case.raw):
            exc = error_of(backend, pieces, case.eof)
            assert exc is not None, (backend, how)
            texts.add(str(exc))
    assert len(texts) == 1, texts
    text = texts.pop()
    # Plain words: no line breaks, no reprs of the backends' buffers.
    assert text.isascii(), text
    assert text.isprintable(), text
    assert text.strip() == text, text
    for leak in ("bytearray", "b'", "("):
        assert leak not in text, text


def test_error_response_of_an_unnamed_status() -> None:
    assert error_response(599, "x").startswith(b"HTTP/1.1 599 \r\n")


def test_status_lines() -> None:
    assert status_line(200) == "HTTP/1.1 200 OK\r\n"
    assert status_line(505) == "HTTP/1.1 505 HTTP Version Not Supported\r\n"
    assert status_line(299) == "HTTP/1.1 299 \r\n"
    assert CONTINUE_RESPONSE == b"HTTP/1.1 100 Continue\r\n\r\n"


@pytest.mark.parametrize(
    ("status", "bodyless"),
    [(100, True), (101, True), (200, False), (204, True), (304, True), (404, False)],
)
def test_bodyless_status(status: int, bodyless: bool) -> None:
    assert bodyless_status(status) is bodyless


def test_date_header_is_formatted_once_a_second() -> None:
    date = DateHeader()
    date.refresh(784111777.0)
    assert date.line == "Date: Sun, 06 Nov 1994 08:49:37 GMT\r\n"
    date.refresh(784111777.9)
    assert date.line == "Date: Sun, 06 Nov 1994 08:49:37 GMT\r\n"
    date.refresh(784111778.0)
    assert date.line == "Date: Sun, 06 Nov 1994 08:49:38 GMT\r\n"


def test_module_date_header_is_current() -> None:
    DATE.refresh()
    assert DATE.line.startswith("Date: ")
    assert DATE.line.endswith(" GMT\r\n")


# -- upgrades and the head cache ----------------------------------------------------


@pytest.mark.parametrize("backend", ["httptools", "h11"])
def test_reader_resumes_after_an_upgrade_request(backend: str) -> None:
    reader = RequestReader(make_parser(backend), Limits(8192, 100, 1024))
    reader.feed(
        b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: x\r\nConnection: upgrade\r\n\r\nGET /2 HTTP/1.1\r\n"
    )
    assert reader.paused
    assert [r.path for r in reader.requests] == ["/"]
    reader.feed(b"Host: a\r\n\r\n")
    reader.resume()
    assert [r.path for r in reader.requests] == ["/", "/2"]


@pytest.mark.parametrize("backend", ["httptools", "h11"])
def test_head_cache_gives_equal_independent_requests(backend: str) -> None:
    head_cache = HeadCache()
    cache = head_cache.entries
    reader = RequestReader(make_parser(backend), Limits(8192, 100, 1024), head_cache)
    head = b"POST /p?a=1 HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\n"
    reader.feed(head + b"ab")
    assert cache == {head: None}  # noted as seen: no copy for a head that may not come again
    reader.feed(head + b"ab")
    assert cache[head] is not None  # seen again: its request is kept
    first = reader.requests.pop(0)
    kept = reader.requests.pop(0)
    first.headers["host"] = kept.headers["host"] = "changed by a handler"
    assert list(cache) == [head]
    reader.feed(head[:10])  # a head in pieces, then the same head whole from the cache
    reader.feed(head[10:] + b"cd")
    second = reader.requests.pop(0)
    assert list(cache) == [head]
    assert second is not first
    assert second is not kept
    assert (second.path, second.query, second.body) == ("/p", "a=1", b"cd")
    assert second.headers == {"host": "a", "content-length": "2"}
    with pytest.raises(ProtocolError):  # a bad head is never cached
        reader.feed(b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n")
    assert list(cache) == [head]


def test_head_cache_samples_where_every_head_differs_and_resumes_on_a_repeat() -> None:
    head_cache = HeadCache()
    reader = RequestReader(make_parser("httptools"), Limits(8192, 100, 1024), head_cache)

    def head(n: int) -> bytes:
        return f"GET /{n} HTTP/1.1\r\nHost: a\r\nX-Request-Id: {n}\r\n\r\n".encode()

    def serve(data: bytes) -> Any:
        reader.feed(data)
        return reader.requests.pop(0)

    for n in range(MISS_RUN):  # every head new: each is noted
        serve(head(n))
    assert head(MISS_RUN - 1) in head_cache.entries
    sampled = range(MISS_RUN, MISS_RUN + 10 * SAMPLE_EVERY)
    for n in sampled:  # now one in SAMPLE_EVERY is looked up and noted
        assert serve(head(n)).path == f"/{n}"  # still parsed and answered as ever
    assert sum(head(n) in head_cache.entries for n in sampled) == 10
    # Heads start to repeat (a probe, a keep-alive loop): within two samples
    # the head is kept, and from then on every copy comes from the cache.
    repeated = head(7)
    for _ in range(2 * SAMPLE_EVERY):
        serve(repeated)
    assert head_cache.entries.get(repeated) is not None
    first, second = serve(repeated), serve(repeated)
    assert (first.path, second.path) == ("/7", "/7")
    assert first.cached
    assert second.cached
    assert first is not second
    assert first.headers is not second.headers
