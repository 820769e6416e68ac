"""prefork.apps.wsgi_environ and wsgi_call, called directly: the environ and start_response's rules.

What goes over a socket (the body, streaming, errors after the head) is in
tests/grid/test_wsgi_grid.py.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any
from wsgiref.validate import check_environ

import pytest

from prefork.apps.wsgi import WsgiApp
from prefork.apps.wsgi_call import Call
from prefork.apps.wsgi_environ import (
    ConnectionEnviron,
    Errors,
    Input,
    header_key,
    path_info,
    request_environ,
)
from prefork.apps.wsgi_headers import WsgiError, check_headers, check_status
from prefork.config import Config
from prefork.engine.connection import Connection
from prefork.engine.shared import Shared
from prefork.http.request import Limits, Request, build_request


def _request(target: str = "/", raw: list[tuple[bytes, bytes]] | None = None, **kw: Any) -> Request:
    headers = raw if raw is not None else [(b"Host", b"example.org")]
    req = build_request(
        kw.get("method", "GET"),
        target,
        kw.get("version", "1.1"),
        headers,
        Limits(8190, 100, 1 << 20),
        True,
    )
    req.body = kw.get("body", b"")
    return req


def _environ(req: Request, script_name: str = "") -> dict[str, Any]:
    conn_env = ConnectionEnviron(
        script_name, "http", "10.0.0.7", ("10.0.0.7", 54321), ("127.0.0.1", 8080)
    )
    return request_environ(conn_env, req)


def test_environ_is_what_pep_3333_and_wsgiref_validate_ask() -> None:
    raw = [
        (b"Host", b"example.org:8080"),
        (b"Content-Type", b"application/json"),
        (b"Content-Length", b"2"),
        (b"Accept", b"text/html"),
        (b"Accept", b"application/json"),
        (b"X-Forwarded_For", b"6.6.6.6"),
    ]
    environ = _environ(_request("/a%20b?x=1&y=%2F", raw, method="POST", body=b"{}"))
    check_environ(environ)  # raises AssertionError on a breach
    assert type(environ) is dict
    assert environ["REQUEST_METHOD"] == "POST"
    assert environ["PATH_INFO"] == "/a b"
    assert environ["QUERY_STRING"] == "x=1&y=%2F"
    assert environ["CONTENT_TYPE"] == "application/json"
    assert environ["CONTENT_LENGTH"] == "2"
    assert "HTTP_CONTENT_TYPE" not in environ
    assert "HTTP_CONTENT_LENGTH" not in environ
    assert environ["HTTP_ACCEPT"] == "text/html, application/json"
    assert environ["HTTP_HOST"] == "example.org:8080"
    assert not any(key.startswith("HTTP_X_FORWARDED") for key in environ)
    assert (environ["SERVER_NAME"], environ["SERVER_PORT"]) == ("127.0.0.1", "8080")
    assert (environ["REMOTE_ADDR"], environ["REMOTE_PORT"]) == ("10.0.0.7", "54321")
    assert environ["SERVER_PROTOCOL"] == "HTTP/1.1"
    assert environ["SCRIPT_NAME"] == ""
    assert environ["wsgi.version"] == (1, 0)
    assert environ["wsgi.url_scheme"] == "http"
    assert environ["wsgi.multithread"] is True
    assert environ["wsgi.multiprocess"] is True
    assert environ["wsgi.run_once"] is False
    assert environ["wsgi.input_terminated"] is True
    assert environ["wsgi.input"].read(10) == b"{}"
    assert environ["wsgi.input"].read(10) == b""


def test_no_body_means_no_content_length_and_each_request_its_own_environ() -> None:
    conn_env = ConnectionEnviron("", "https", "::1", ("::1", 1), None)
    one = request_environ(conn_env, _request("/one"))
    two = request_environ(conn_env, _request("/two", version="1.0"))
    assert "CONTENT_LENGTH" not in one
    assert "CONTENT_TYPE" not in one
    assert (one["PATH_INFO"], two["PATH_INFO"]) == ("/one", "/two")
    assert two["SERVER_PROTOCOL"] == "HTTP/1.0"
    assert one["wsgi.url_scheme"] == "https"
    assert (one["SERVER_NAME"], one["SERVER_PORT"]) == ("localhost", "443")
    check_environ(one)


def test_a_chunked_body_gets_its_length() -> None:
    raw = [(b"Host", b"h"), (b"Transfer-Encoding", b"chunked")]
    environ = _environ(_request("/", raw, method="POST", body=b"abc"))
    assert environ["CONTENT_LENGTH"] == "3"


@pytest.mark.parametrize(
    ("raw", "script_name", "expected"),
    [
        ("/", "", "/"),
        ("/caf%C3%A9", "", "/caf\xc3\xa9"),  # the bytes, as latin-1
        ("/a%2Fb", "", "/a/b"),
        ("/api/x", "/api", "/x"),
        ("/api", "/api", ""),
        ("/apix", "/api", "/apix"),  # not under the mount point
        ("/other", "/api", "/other"),
    ],
)
def test_path_info(raw: str, script_name: str, expected: str) -> None:
    assert path_info(raw, script_name) == expected


@pytest.mark.parametrize(
    ("name", "key"),
    [
        ("accept-encoding", "HTTP_ACCEPT_ENCODING"),
        ("x-real-ip", "HTTP_X_REAL_IP"),
        ("x_real_ip", None),  # would pass for X-Real-IP
        ("content-type", None),
        ("content-length", None),
    ],
)
def test_header_key(name: str, key: str | None) -> None:
    assert header_key(name) == key


def test_input_reads_like_a_file() -> None:
    stream = Input(b"line 1\nline 2\nrest")
    assert stream.readline() == b"line 1\n"
    assert stream.read(4) == b"line"
    assert stream.readlines() == [b" 2\n", b"rest"]
    assert stream.read() == b""
    assert list(Input(b"a\nb")) == [b"a\n", b"b"]


def test_errors_go_to_the_app_log_line_by_line(caplog: pytest.LogCaptureFixture) -> None:
    errors = Errors()
    errors.write("one\ntw")
    errors.writelines(["o\n"])
    errors.write("three")
    errors.flush()
    assert [r.getMessage() for r in caplog.records] == ["one", "two", "three"]
    with pytest.raises(TypeError):
        errors.write(b"bytes")  # type: ignore[arg-type]


@pytest.mark.parametrize("status", ["200 OK", "404 Not Found", "299 X", "500 "])
def test_good_status(status: str) -> None:
    assert check_status(status) == int(status[:3])


@pytest.mark.parametrize(
    "status", ["200", "200OK", b"200 OK", "2000 OK", "abc OK", "101 Switching", "200 O\r\nK", 200]
)
def test_bad_status(status: object) -> None:
    with pytest.raises(WsgiError):
        check_status(status)


def test_headers_text_length_and_date() -> None:
    cache: dict[Any, Any] = {}
    headers = [
        ("Content-Type", "text/plain"),
        ("Content-Length", "5"),
        ("Set-Cookie", "a=1"),
        ("Set-Cookie", "b=2"),
        ("Date", "yesterday"),
    ]
    text, lower, has_server, length = check_headers(cache, headers)
    assert text == "Content-Type: text/plain\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\n"
    assert lower["set-cookie"] == "a=1, b=2"
    assert (has_server, length) == (False, 5)
    # Cached: the same entry (its dict; the compiled build boxes the tuple anew).
    assert check_headers(cache, list(headers))[1] is check_headers(cache, headers)[1]
    assert len(cache) == 1


@pytest.mark.parametrize(
    "headers",
    [
        (("Content-Type", "text/plain"),),  # a tuple, not a list
        [("Content-Type",)],
        [["Content-Type", "text/plain"]],
        [("X-Count", 3)],
        [(b"X-Bytes", "v")],
        [("X-Evil", "a\r\nSet-Cookie: b=2")],
        [("Bad Name", "v")],
        [("X-Text", "caf\u20ac")],  # not latin-1
        [("Content-Length", "-1")],
        [("Content-Length", "1"), ("Content-Length", "1")],
        [("Connection", "close")],
        [("Transfer-Encoding", "chunked")],
        [("Keep-Alive", "timeout=5")],
        [("Upgrade", "websocket")],
    ],
)
def test_bad_headers(headers: Any) -> None:
    with pytest.raises(WsgiError):
        check_headers({}, headers)


def _call() -> Call:
    cfg = Config.build()
    app = WsgiApp(lambda environ, start_response: [], cfg, "unit:app")
    req = _request("/")
    # A connection with no socket nor running loop: start_response never
    # touches it before the head goes out.
    shared = Shared(cfg, app)
    shared.loop = loop = asyncio.new_event_loop()
    loop.close()
    return Call(app, Connection(shared), req, _environ(req), True)


def test_start_response_twice_without_exc_info_is_an_error() -> None:
    call = _call()
    call.start_response("200 OK", [])
    with pytest.raises(WsgiError, match="second time"):
        call.start_response("200 OK", [])


def test_start_response_with_exc_info_before_the_head_replaces_it() -> None:
    call = _call()
    call.start_response("200 OK", [("Content-Type", "text/plain")])
    try:
        raise ValueError("boom")
    except ValueError:
        call.start_response("500 Oops", [("Content-Type", "text/html")], sys.exc_info())
    assert (call.status, call.code) == ("500 Oops", 500)
    assert call.head is not None
    assert call.head[1]["content-type"] == "text/html"


def test_start_response_returns_write_and_write_wants_bytes() -> None:
    call = _call()
    write = call.start_response("200 OK", [])
    with pytest.raises(WsgiError, match="bytes"):
        write("text")  # type: ignore[arg-type]


def test_a_request_without_a_body_reads_nothing() -> None:
    environ = _environ(_request("/"))
    stream = environ["wsgi.input"]
    assert (stream.read(), stream.read(5), stream.readline(), stream.readlines()) == (
        b"",
        b"",
        b"",
        [],
    )
    assert list(stream) == []
