"""The HTTP/1.1 engine end to end: real ``prefork run`` processes spoken to in raw bytes.

Servers are module-scoped (one per parser backend and handler flavour, started
on first use) because these tests do not interfere with one another; a test
that needs another config starts its own with ``start_server``. Behaviour that
concerns parsing runs against both ``--http httptools`` and ``--http h11``.
Every loop is bounded in count and time; traffic goes to 127.0.0.1 only.
"""

from __future__ import annotations

import email.utils
import gzip
import json
import re
import select
import socket
import textwrap
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.conftest import wait_until
from tests.e2e.conftest import ServerProcess, StartServer, launch_server
from tests.e2e.helpers import Response, Served, ServerPool, Wire
from tests.e2e.helpers import request as get

pytestmark = pytest.mark.e2e

# Small limits and short deadlines keep the suite fast; the tests below use these.
LINE_LIMIT = 1024
MAX_HEADERS = 20
MAX_BODY = 4096
REQUESTS_PER_CONNECTION = 5
BACKENDS = ("httptools", "h11")
DEADLINE_S = 1.0  # keepalive_idle, request_header, request_body and response_write timeouts
DEADLINE_SLACK_S = 2.0  # sweeper granularity plus a loaded machine
TRICKLE_S = 0.2

CONFIG = f"""
request_line_limit = {LINE_LIMIT}
max_header_count = {MAX_HEADERS}
max_body_size = {MAX_BODY}
requests_per_connection = {REQUESTS_PER_CONNECTION}
keepalive_idle_timeout = {DEADLINE_S}
request_header_timeout = {DEADLINE_S}
request_body_timeout = {DEADLINE_S}
response_write_timeout = {DEADLINE_S}
graceful_timeout = 3
log_headers = ["user-agent", "x-trace"]
"""

APP = r"""
import asyncio
import json
import logging
import os
import time

HERE = os.getcwd()
CALLS = os.path.join(HERE, "calls.log")
BAD_HEADERS = {
    "value-crlf": {"X-Ok": "a\r\nX-Evil: 1"},
    "value-lf": {"X-Ok": "a\nX-Evil: 1"},
    "value-cr": {"X-Ok": "a\rX-Evil: 1"},
    "value-nul": {"X-Ok": "a\x00X-Evil: 1"},
    "name-crlf": {"X-Evil: 1\r\nX-Ok": "a"},
    "name-nul": {"X-Ok\x00X-Evil": "a"},
}
BIG_BODY = 16 * 1024 * 1024
JSON_10K = json.dumps([{"id": i, "name": f"item {i}", "ok": True} for i in range(256)])


def _record(method, query):
    with open(CALLS, "a", encoding="utf-8") as fh:
        fh.write(f"{method} {query}\n")


def _echo(method, query, args, headers, body, flavour):
    doc = {
        "method": method,
        "query": query,
        "args": args,
        "headers": headers,
        "body": body.hex(),
        "body_type": type(body).__name__,
    }
    return json.dumps(doc), None, {"content-type": "application/json", "X-Flavour": flavour}


def _ctx_info(ctx):
    info = {
        "logger": isinstance(ctx.logger, logging.Logger),
        "client_ip": ctx.client_ip,
        "peer_ip": ctx.client.peername[0],
        "client_api": all(
            callable(getattr(ctx.client, name, None)) for name in ("read", "write", "close")
        ),
        "cfg_attr": ctx.cfg.max_body_size,
        "cfg_item": ctx.cfg["max_body_size"],
        "cfg_keys": "requests_per_connection" in dict(ctx.cfg),
        "redis_module": repr(ctx.redis_module),
    }
    try:
        ctx.cfg.max_body_size = 1
        info["attr_write"] = "allowed"
    except Exception as exc:
        info["attr_write"] = type(exc).__name__
    try:
        ctx.cfg["max_body_size"] = 1
        info["item_write"] = "allowed"
    except Exception as exc:
        info["item_write"] = type(exc).__name__
    try:
        ctx.cfg["compression"]["level"] = 1
        info["nested_write"] = "allowed"
    except Exception as exc:
        info["nested_write"] = type(exc).__name__
    info["cfg_after"] = ctx.cfg.max_body_size
    return json.dumps(info)


def _chunks():
    yield b"one"
    yield b""
    yield b"two"


async def _achunks():
    for part in (b"alpha", b"beta"):
        await asyncio.sleep(0)
        yield part


def _big_stream(marker):
    try:
        for _ in range(256):
            yield b"x" * (256 * 1024)
    finally:
        with open(os.path.join(HERE, marker), "w") as fh:
            fh.write("closed")


def route(method, query, args, headers, body, ctx, flavour):
    _record(method, query)
    if query == "/slow":
        time.sleep(0.3)
        return "slow", 200, None
    if query.startswith("/echo"):
        return _echo(method, query, args, headers, body, flavour)
    if query == "/ctx":
        return _ctx_info(ctx), 200, {"content-type": "application/json"}
    if query == "/str":
        return "h\u00e9llo", None, None
    if query == "/bytes":
        return b"\x00\x01raw\xff", 201, {"content-type": "application/octet-stream"}
    if query == "/none":
        return None, 200, None
    if query == "/iter":
        return _chunks(), 200, None
    if query == "/aiter":
        return _achunks(), 200, None
    if query.startswith("/status/"):
        return "a body the server must drop", int(query.rsplit("/", 1)[1]), None
    if query == "/raise":
        raise RuntimeError(f"handler-boom-{args.get('m')}")
    if query.startswith("/bad-header/"):
        return "body", 200, BAD_HEADERS[query.rsplit("/", 1)[1]]
    if query.startswith("/bad-header-stream/"):
        return iter([b"body"]), 200, BAD_HEADERS[query.rsplit("/", 1)[1]]
    if query == "/json10k":
        return JSON_10K, 200, {"content-type": "application/json"}
    if query == "/big-body":
        return b"x" * BIG_BODY, 200, {"content-type": "application/octet-stream"}
    if query == "/big-stream":
        return _big_stream(args["marker"]), 200, {"content-type": "application/octet-stream"}
    if query == "/log":
        ctx.logger.warning("app-log-marker %s", args.get("m"))
        return "logged", 200, None
    return "not found", 404, None


def handle_sync(method, query, args, headers, body, ctx):
    return route(method, query, args, headers, body, ctx, "sync")


async def handle(method, query, args, headers, body, ctx):
    if query == "/slow":
        _record(method, query)
        await asyncio.sleep(0.3)
        return "slow", 200, None
    if query == "/proxy":
        _record(method, query)
        await ctx.client.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        return None, None, None
    if query == "/tunnel":
        _record(method, query)
        data = b""
        for _ in range(50):
            if len(data) >= 5:
                break
            data += await ctx.client.read(5 - len(data))
        await ctx.client.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n" + data)
        return None, None, None
    return route(method, query, args, headers, body, ctx, "async")
"""


# -- servers ---------------------------------------------------------------------


def launch(directory: Path, *args: str, target: str = "app:handle") -> ServerProcess:
    """The engine's test app and config in ``directory``, served by ``launch_server``."""
    (directory / "app.py").write_text(textwrap.dedent(APP))
    (directory / "cfg.toml").write_text(CONFIG)
    return launch_server(directory, *args, target=target)


def launch_pooled(directory: Path, key: tuple[str, str]) -> ServerProcess:
    """The pool's server for (parser backend, handler flavour)."""
    backend, flavour = key
    target = "app:handle" if flavour == "async" else "app:handle_sync"
    return launch(directory, "-c", "cfg.toml", "--http", backend, target=target)


Pool = ServerPool[tuple[str, str]]


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pool]:
    """Module-scoped servers, started on first use: one per (backend, handler flavour)."""
    servers = Pool(tmp_path_factory.mktemp("http"), launch_pooled)
    yield servers
    servers.stop()


@pytest.fixture(
    params=[("httptools", "async"), ("h11", "async"), ("httptools", "sync")],
    ids=["httptools", "h11", "httptools-sync"],
)
def server(request: pytest.FixtureRequest, pool: Pool) -> Served:
    """The app on each parser backend, and as a sync handler (served by its own code path)."""
    backend, flavour = request.param
    return pool.get((backend, flavour))


@pytest.fixture(params=["async", "sync"])
def any_handler(request: pytest.FixtureRequest, pool: Pool) -> Served:
    """The app as an ``async def`` handler and as a plain ``def`` handler."""
    return pool.get(("httptools", request.param))


@pytest.fixture
def default(pool: Pool) -> Served:
    """The async app on the default parser, for behaviour that does not concern parsing."""
    return pool.get(("httptools", "async"))


def unique() -> str:
    return uuid.uuid4().hex[:12]


def echo_of(resp: Response) -> dict[str, Any]:
    assert resp.status == 200, resp
    doc: dict[str, Any] = json.loads(resp.body)
    return doc


# -- the handler contract -----------------------------------------------------


@pytest.mark.parametrize("flavour", ["async", "sync"])
def test_sync_and_async_handlers_are_both_called(pool: Pool, flavour: str) -> None:
    resp = pool.get(("httptools", flavour)).exchange(get("/echo/flavour"))
    assert resp.status == 200
    assert resp.header("x-flavour") == flavour
    assert echo_of(resp)["query"] == "/echo/flavour"


@pytest.mark.parametrize(
    ("target", "query"),
    [
        ("/echo/users/7", "/echo/users/7"),
        ("/echo/users/7?x=1&y=2", "/echo/users/7"),
        ("/echo/a%20b/%7Ec", "/echo/a%20b/%7Ec"),
        ("http://example.com/echo/abs?q=1", "/echo/abs"),
        ("http://example.com:8080/echo/abs/port", "/echo/abs/port"),
    ],
    ids=["path", "path-with-query", "percent-kept", "absolute-form", "absolute-form-port"],
)
def test_query_is_the_target_path(server: Served, target: str, query: str) -> None:
    resp = server.exchange(get(target))
    assert echo_of(resp)["query"] == query


@pytest.mark.parametrize(
    ("qs", "args"),
    [
        ("", {}),
        ("a=1", {"a": "1"}),
        ("a=1&a=2&a=3", {"a": ["1", "2", "3"]}),
        ("a", {"a": ""}),
        ("a=&b", {"a": "", "b": ""}),
        ("c=x+y", {"c": "x y"}),
        ("d=%41%2B%26%3D&e%20f=g%2Fh", {"d": "A+&=", "e f": "g/h"}),
        ("k=%C3%A9t%C3%A9", {"k": "\u00e9t\u00e9"}),
        ("a=1&b=2&a=3", {"a": ["1", "3"], "b": "2"}),
    ],
    ids=[
        "none",
        "one",
        "repeated-list",
        "bare-name",
        "blank-values",
        "plus-is-space",
        "percent-decoded",
        "utf8",
        "interleaved",
    ],
)
def test_args_follow_parse_qsl(server: Served, qs: str, args: dict[str, Any]) -> None:
    target = "/echo/args" + (f"?{qs}" if qs else "")
    assert echo_of(server.exchange(get(target)))["args"] == args


def test_headers_are_lower_case_and_repeats_joined(server: Served) -> None:
    data = get(
        "/echo/headers",
        "X-Mixed-Case: v",
        "X-Multi: one",
        "x-multi: two",
        "X-MULTI: three",
        "Cookie: a=1",
        "Cookie: b=2",
    )
    headers = echo_of(server.exchange(data))["headers"]
    assert headers["host"] == "test"
    assert headers["x-mixed-case"] == "v"
    assert headers["x-multi"] == "one, two, three"
    assert headers["cookie"] == "a=1; b=2"
    assert all(name == name.lower() for name in headers)


@pytest.mark.parametrize("backend", BACKENDS)
def test_header_value_whitespace_around_it_is_not_part_of_it(pool: Pool, backend: str) -> None:
    data = get("/echo/ows", "X-Spaced:   padded  ", "X-Tabbed:\tin\t side\t")
    headers = echo_of(pool.get((backend, "async")).exchange(data))["headers"]
    assert headers["x-spaced"] == "padded"
    assert headers["x-tabbed"] == "in\t side"


@pytest.mark.parametrize("backend", BACKENDS)
def test_header_values_reach_the_handler_as_sent(pool: Pool, backend: str) -> None:
    data = get("/echo/as-sent", "Transfer-Encoding: Chunked", "X-Case: MiXeD", method="POST")
    doc = echo_of(pool.get((backend, "async")).exchange(data + b"3\r\nabc\r\n0\r\n\r\n"))
    assert bytes.fromhex(doc["body"]) == b"abc"
    assert doc["headers"]["x-case"] == "MiXeD"
    assert doc["headers"]["transfer-encoding"] == "Chunked"


def test_body_is_bytes_and_empty_without_one(server: Served) -> None:
    doc = echo_of(server.exchange(get("/echo/nobody")))
    assert (doc["body"], doc["body_type"]) == ("", "bytes")
    payload = b"\x00\xffbinary\r\n\r\nGET / HTTP/1.1\r\n"
    data = get("/echo/body", f"Content-Length: {len(payload)}", method="POST") + payload
    doc = echo_of(server.exchange(data))
    assert (bytes.fromhex(doc["body"]), doc["body_type"]) == (payload, "bytes")


def test_chunked_body_is_decoded(server: Served) -> None:
    body = b"5;name=value\r\nhello\r\n6\r\n world\r\nA\r\n0123456789\r\n0\r\nX-Trailer: t\r\n\r\n"
    data = get("/echo/chunked", "Transfer-Encoding: chunked", method="POST") + body
    doc = echo_of(server.exchange(data))
    assert bytes.fromhex(doc["body"]) == b"hello world0123456789"
    assert "x-trailer" not in doc["headers"]


def test_ctx_has_logger_client_ip_cfg_and_no_redis(any_handler: Served) -> None:
    info = echo_of(any_handler.exchange(get("/ctx")))
    assert info["logger"] is True
    assert info["client_ip"] == info["peer_ip"] == "127.0.0.1"
    assert info["client_api"] is True
    assert info["cfg_attr"] == info["cfg_item"] == MAX_BODY
    assert info["cfg_keys"] is True
    assert info["redis_module"] == "None"


def test_ctx_cfg_is_read_only(any_handler: Served) -> None:
    info = echo_of(any_handler.exchange(get("/ctx")))
    assert info["attr_write"] != "allowed"
    assert info["item_write"] != "allowed"
    assert info["nested_write"] != "allowed"
    assert info["cfg_after"] == MAX_BODY


def test_ctx_logger_reaches_the_server_log(default: Served) -> None:
    marker = unique()
    assert default.exchange(get(f"/log?m={marker}")).status == 200
    default.proc.wait_log(rf"WARNING.*app-log-marker {marker}")


# -- what a handler returns ---------------------------------------------------


def test_str_is_sent_as_utf8_with_status_none_as_200(any_handler: Served) -> None:
    resp = any_handler.exchange(get("/str"))
    assert resp.status == 200
    assert resp.body == "h\u00e9llo".encode()
    assert resp.header("content-length") == str(len(resp.body))
    assert resp.header("content-type") == "text/plain; charset=utf-8"


def test_bytes_are_sent_as_they_are(any_handler: Served) -> None:
    resp = any_handler.exchange(get("/bytes"))
    assert resp.status == 201
    assert resp.body == b"\x00\x01raw\xff"
    assert resp.header("content-type") == "application/octet-stream"
    assert resp.header("content-length") == "6"


def test_none_content_is_an_empty_body(any_handler: Served) -> None:
    resp = any_handler.exchange(get("/none"))
    assert (resp.status, resp.body, resp.header("content-length")) == (200, b"", "0")


def test_iterable_is_streamed_chunked_on_http11(any_handler: Served) -> None:
    with any_handler.wire() as w:
        w.send(get("/iter"))
        resp = w.read_response()
        assert resp.header("transfer-encoding") == "chunked"
        assert not resp.has("content-length")
        # The empty chunk the handler yields must not end the body early.
        assert resp.raw_body == b"3\r\none\r\n3\r\ntwo\r\n0\r\n\r\n"
        w.send(get("/echo/after-stream"))
        assert echo_of(w.read_response())["query"] == "/echo/after-stream"


def test_async_iterable_is_streamed_chunked(any_handler: Served) -> None:
    resp = any_handler.exchange(get("/aiter"))
    assert resp.header("transfer-encoding") == "chunked"
    assert resp.raw_body == b"5\r\nalpha\r\n4\r\nbeta\r\n0\r\n\r\n"


@pytest.mark.parametrize("path", ["/iter", "/aiter"])
def test_stream_is_close_delimited_on_http10(default: Served, path: str) -> None:
    with default.wire() as w:
        w.send(get(path, "Connection: keep-alive", version="1.0"))
        resp = w.read_response()
        assert not resp.has("transfer-encoding")
        assert not resp.has("content-length")
        assert resp.closes
        assert resp.body == (b"onetwo" if path == "/iter" else b"alphabeta")
        assert w.eof


def test_all_none_means_proxied_and_the_connection_is_kept(default: Served) -> None:
    with default.wire() as w:
        w.send(get("/proxy"))
        resp = w.read_response()
        # Exactly what the handler wrote: the server added nothing.
        assert resp.raw_head == b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n"
        assert resp.body == b"ok"
        w.send(get("/echo/after-proxy"))
        assert echo_of(w.read_response())["query"] == "/echo/after-proxy"


def test_proxying_handler_reads_bytes_past_the_request(default: Served) -> None:
    with default.wire() as w:
        w.send(get("/tunnel") + b"hello")
        resp = w.read_response()
        assert (resp.status, resp.body) == (200, b"hello")
        w.send(get("/echo/after-tunnel"))
        assert echo_of(w.read_response())["query"] == "/echo/after-tunnel"


def test_a_taken_over_connection_reads_what_followed_in_the_same_packet(
    default: Served,
) -> None:
    # The bytes after the request, then a pipelined request, all in one send:
    # the handler reads its five bytes (they are not parsed as a request
    # "helloGET ..."), and the request after them is then served normally.
    with default.wire() as w:
        w.send(get("/tunnel") + b"hello" + get("/echo/pipelined-after-tunnel"))
        resp = w.read_response()
        assert (resp.status, resp.body) == (200, b"hello")
        assert echo_of(w.read_response())["query"] == "/echo/pipelined-after-tunnel"


def test_handler_raising_gets_500_traceback_and_close(any_handler: Served) -> None:
    marker = unique()
    with any_handler.wire() as w:
        w.send(get(f"/raise?m={marker}") + get("/echo/after-raise"))
        resp = w.read_response()
        assert resp.status == 500
        assert resp.closes
        assert w.read_until_close() == b""
    any_handler.proc.wait_log(rf"RuntimeError: handler-boom-{marker}")
    log = any_handler.proc.log()
    assert "Traceback (most recent call last)" in log
    assert "GET /echo/after-raise" not in any_handler.calls()
    # The worker survives.
    assert any_handler.exchange(get("/echo/alive")).status == 200


BAD_HEADER_KINDS = ["value-crlf", "value-lf", "value-cr", "value-nul", "name-crlf", "name-nul"]


@pytest.mark.parametrize("kind", BAD_HEADER_KINDS)
@pytest.mark.parametrize("prefix", ["/bad-header/", "/bad-header-stream/"], ids=["body", "stream"])
def test_response_header_with_cr_lf_nul_gets_500(default: Served, prefix: str, kind: str) -> None:
    with default.wire() as w:
        w.send(get(prefix + kind))
        resp = w.read_response()
        assert resp.status == 500
        assert not resp.has("x-evil")
        assert b"X-Evil" not in resp.raw_head
        assert b"\x00" not in resp.raw_head
        assert resp.closes
        assert w.read_until_close() == b""


# -- HTTP/1.1 connection management ------------------------------------------


def test_keep_alive_serves_several_requests_on_one_connection(server: Served) -> None:
    with server.wire() as w:
        for i in range(3):
            w.send(get(f"/echo/ka/{i}"))
            resp = w.read_response()
            assert echo_of(resp)["query"] == f"/echo/ka/{i}"
            assert not resp.closes


def test_connection_close_is_honoured(server: Served) -> None:
    with server.wire() as w:
        w.send(get("/echo/close", "Connection: close") + get("/echo/after-close"))
        resp = w.read_response()
        assert resp.status == 200
        assert resp.closes
        assert w.read_until_close() == b""
    assert "/echo/after-close" not in server.calls()


def test_http10_is_closed_unless_it_asks_for_keep_alive(server: Served) -> None:
    with server.wire() as w:
        w.send(get("/echo/10", version="1.0"))
        resp = w.read_response()
        assert resp.status == 200
        assert resp.closes
        assert w.read_until_close() == b""
    with server.wire() as w:
        w.send(get("/echo/10ka", "Connection: Keep-Alive", version="1.0"))
        resp = w.read_response()
        assert resp.header("connection") == "keep-alive"
        w.send(get("/echo/10ka-second", "Connection: keep-alive", version="1.0"))
        assert echo_of(w.read_response())["query"] == "/echo/10ka-second"
        w.send(get("/echo/10ka-third", version="1.0"))
        assert w.read_response().closes
        assert w.read_until_close() == b""


def test_pipelined_requests_are_answered_in_order(server: Served) -> None:
    payload = b"posted"
    data = (
        get("/slow")
        + get("/echo/p/1")
        + get("/echo/p/2", f"Content-Length: {len(payload)}", method="POST")
        + payload
        + get("/echo/p/3")
    )
    with server.wire() as w:
        w.send(data)
        assert w.read_response().body == b"slow"
        assert echo_of(w.read_response())["query"] == "/echo/p/1"
        doc = echo_of(w.read_response())
        assert (doc["query"], bytes.fromhex(doc["body"])) == ("/echo/p/2", payload)
        assert echo_of(w.read_response())["query"] == "/echo/p/3"


def test_requests_per_connection_closes_after_the_nth(server: Served) -> None:
    with server.wire() as w:
        for i in range(1, REQUESTS_PER_CONNECTION + 1):
            w.send(get(f"/echo/rpc/{i}"))
            resp = w.read_response()
            assert resp.status == 200
            assert resp.closes == (i == REQUESTS_PER_CONNECTION), (i, resp.headers)
        assert w.read_until_close() == b""


def test_pipelined_requests_past_requests_per_connection_are_not_answered(
    server: Served,
) -> None:
    tag = unique()
    data = b"".join(get(f"/echo/rpcp/{tag}/{i}") for i in range(1, REQUESTS_PER_CONNECTION + 2))
    with server.wire() as w:
        w.send(data)
        for i in range(1, REQUESTS_PER_CONNECTION + 1):
            resp = w.read_response()
            assert echo_of(resp)["query"] == f"/echo/rpcp/{tag}/{i}"
            assert resp.closes == (i == REQUESTS_PER_CONNECTION)
        assert w.read_until_close() == b""
    assert f"/echo/rpcp/{tag}/{REQUESTS_PER_CONNECTION + 1}" not in server.calls()


def test_client_half_close_after_request_still_gets_the_response(server: Served) -> None:
    with server.wire() as w:
        w.send(get("/echo/half-close"))
        w.sock.shutdown(socket.SHUT_WR)
        assert echo_of(w.read_response())["query"] == "/echo/half-close"
        assert w.read_until_close() == b""


def test_expect_100_continue_is_sent_before_the_body(server: Served) -> None:
    with server.wire() as w:
        w.send(get("/echo/expect", "Content-Length: 5", "Expect: 100-continue", method="POST"))
        interim = w.read_response()
        assert (interim.status, interim.headers) == (100, [])
        w.send(b"hello")
        doc = echo_of(w.read_response())
        assert bytes.fromhex(doc["body"]) == b"hello"


def test_expect_100_continue_over_the_limit_gets_413_without_100(server: Served) -> None:
    with server.wire() as w:
        w.send(
            get(
                "/echo/expect-413",
                f"Content-Length: {MAX_BODY + 1}",
                "Expect: 100-continue",
                method="POST",
            )
        )
        resp = w.read_response()
        assert resp.status == 413
        assert resp.closes
        assert w.read_until_close() == b""
    assert "/echo/expect-413" not in server.calls()


def test_expect_100_continue_on_a_pipelined_request(server: Served) -> None:
    with server.wire(timeout=DEADLINE_S * 0.8) as w:
        w.send(
            get("/slow")
            + get("/echo/expect-pipelined", "Content-Length: 5", "Expect: 100-continue")
        )
        assert w.read_response().body == b"slow"
        interim = w.read_response()
        assert interim.status == 100
        w.send(b"hello")
        assert bytes.fromhex(echo_of(w.read_response())["body"]) == b"hello"


def test_head_is_framed_without_a_body(server: Served) -> None:
    length = len("h\u00e9llo".encode())
    with server.wire() as w:
        w.send(get("/str", method="HEAD") + get("/echo/after-head"))
        resp = w.read_response(head=True)
        assert resp.status == 200
        assert resp.header("content-length") == str(length)
        # The next bytes are the next response, not a body.
        assert echo_of(w.read_response())["query"] == "/echo/after-head"


def test_head_of_a_streamed_response_is_framed_without_a_body(server: Served) -> None:
    with server.wire() as w:
        w.send(get("/iter", method="HEAD") + get("/echo/after-head-stream"))
        resp = w.read_response(head=True)
        assert resp.status == 200
        assert echo_of(w.read_response())["query"] == "/echo/after-head-stream"


@pytest.mark.parametrize("status", [204, 304])
def test_204_and_304_are_framed_without_a_body(server: Served, status: int) -> None:
    with server.wire() as w:
        w.send(get(f"/status/{status}") + get("/echo/after-bodyless"))
        resp = w.read_response()
        assert resp.status == status
        assert not resp.has("transfer-encoding")
        if status == 204:
            assert not resp.has("content-length")
        assert echo_of(w.read_response())["query"] == "/echo/after-bodyless"


def test_responses_carry_date_and_server(server: Served) -> None:
    for data in (get("/echo/date"), get("/", "Host: a", "Host: b")):
        resp = server.exchange(data)
        assert resp.header("server")
        date = resp.header("date")
        assert date is not None
        assert re.fullmatch(r"[A-Z][a-z]{2}, \d{2} [A-Z][a-z]{2} \d{4} \d{2}:\d{2}:\d{2} GMT", date)
        sent = email.utils.parsedate_to_datetime(date)
        assert abs((datetime.now(UTC) - sent).total_seconds()) < 5


def test_gzip_when_accepted_with_vary(default: Served) -> None:
    plain = default.exchange(get("/json10k"))
    assert plain.status == 200
    assert len(plain.body) >= 10 * 1024
    assert not plain.has("content-encoding")
    resp = default.exchange(get("/json10k", "Accept-Encoding: gzip"))
    assert resp.header("content-encoding") == "gzip"
    assert "accept-encoding" in (resp.header("vary") or "").lower()
    assert resp.header("content-length") == str(len(resp.body))
    assert len(resp.body) < len(plain.body)
    assert gzip.decompress(resp.body) == plain.body


# -- strict parsing ----------------------------------------------------------

BAD_REQUESTS = [
    (
        "cl-te",
        b"POST /bad/cl-te HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        400,
    ),
    ("obs-fold", b"GET /bad/obs-fold HTTP/1.1\r\nHost: a\r\nX-A: one\r\n two\r\n\r\n", 400),
    ("bare-lf", b"GET /bad/bare-lf HTTP/1.1\nHost: a\n\n", 400),
    (
        "bad-chunk-size",
        b"POST /bad/chunk HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"zz\r\nhello\r\n0\r\n\r\n",
        400,
    ),
    ("connect", b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n", None),
    ("http2", b"GET /bad/http2 HTTP/2.0\r\nHost: a\r\n\r\n", 505),
    ("missing-host", b"GET /bad/no-host HTTP/1.1\r\n\r\n", 400),
    (
        "two-content-lengths",
        b"POST /bad/two-cl HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx",
        400,
    ),
    (
        "te-on-http10",
        b"POST /bad/te10 HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        400,
    ),
    ("nul-in-value", b"GET /bad/nul HTTP/1.1\r\nHost: a\r\nX-A: a\x00b\r\n\r\n", 400),
    # RFC 9110 §5.3: one-value fields cannot be joined; a repeat is refused.
    (
        "two-content-types",
        b"POST /bad/two-ct HTTP/1.1\r\nHost: a\r\nContent-Type: a/b\r\n"
        b"Content-Type: c/d\r\nContent-Length: 0\r\n\r\n",
        400,
    ),
    (
        "two-authorizations",
        b"GET /bad/two-auth HTTP/1.1\r\nHost: a\r\nAuthorization: x\r\nAuthorization: y\r\n\r\n",
        400,
    ),
]


@pytest.mark.parametrize(
    ("data", "status"), [c[1:] for c in BAD_REQUESTS], ids=[c[0] for c in BAD_REQUESTS]
)
def test_bad_request_is_rejected_and_closed_without_calling_the_handler(
    server: Served, data: bytes, status: int | None
) -> None:
    with server.wire() as w:
        w.send(data + get("/echo/after-bad"))
        resp = w.read_response()
        if status is None:
            assert 400 <= resp.status < 500, resp
        else:
            assert resp.status == status, resp
        assert resp.closes
        # Bytes after a rejected request are never answered.
        assert w.read_until_close() == b""
    calls = server.calls()
    assert "/bad/" not in calls
    assert "CONNECT" not in calls
    assert "/echo/after-bad" not in calls


@pytest.mark.parametrize(
    ("fields", "status", "text"),
    [
        (("Expect: bogus",), 417, "unsupported Expect"),
        (("Content-Length: 999999",), 413, "request body too large"),
        (("X-A: 1", "X-A: 2", "If-Range: a", "If-Range: b"), 400, "more than one If-Range header"),
    ],
    ids=["417", "413", "400"],
)
def test_error_answer_to_head_has_no_body(
    server: Served, fields: tuple[str, ...], status: int, text: str
) -> None:
    """RFC 9110 §9.3.2: a response to HEAD has no content, an error's neither."""
    with server.wire() as w:
        w.send(get("/bad/head", *fields, method="HEAD"))
        resp = w.read_response(head=True)
        assert (resp.status, resp.closes) == (status, True)
        # Content-Length says what a GET would have got; nothing follows.
        assert resp.header("content-length") == str(len(text) + 1)
        assert w.read_until_close() == b""
    with server.wire() as w:
        w.send(get("/bad/get", *fields))
        assert w.read_response().body == f"{text}\n".encode()


def test_absolute_form_target_authority_is_the_host(server: Served) -> None:
    """RFC 9112 §3.2.2: with an absolute-form target the Host field is ignored."""
    resp = server.exchange(get("http://a.example:8080/echo/abs?x=1"))
    doc = echo_of(resp)
    assert doc["headers"]["host"] == "a.example:8080"
    assert (doc["query"], doc["args"]) == ("/echo/abs", {"x": "1"})


def test_good_request_then_bad_one_answers_the_first_then_rejects(server: Served) -> None:
    tag = unique()
    bad = b"GET /bad/second HTTP/1.1\r\nHost: a\r\nX-A: one\r\n two\r\n\r\n"
    with server.wire() as w:
        w.send(get(f"/echo/first-{tag}") + bad + get(f"/echo/third-{tag}"))
        assert echo_of(w.read_response())["query"] == f"/echo/first-{tag}"
        resp = w.read_response()
        assert (resp.status, resp.closes) == (400, True)
        assert w.read_until_close() == b""
    assert f"/echo/third-{tag}" not in server.calls()


# -- limits --------------------------------------------------------------------


def test_content_length_over_max_body_size_gets_413_before_the_body(server: Served) -> None:
    with server.wire() as w:
        w.send(get("/echo/413", f"Content-Length: {MAX_BODY + 1}", method="POST"))
        resp = w.read_response()
        assert resp.status == 413
        assert resp.closes
    assert "/echo/413" not in server.calls()


def test_content_length_at_max_body_size_is_accepted(server: Served) -> None:
    data = get("/echo/at-limit", f"Content-Length: {MAX_BODY}", method="POST") + b"b" * MAX_BODY
    doc = echo_of(server.exchange(data))
    assert len(bytes.fromhex(doc["body"])) == MAX_BODY


def test_chunked_body_over_max_body_size_gets_413(server: Served) -> None:
    chunk = b"%x\r\n%s\r\n" % (1000, b"c" * 1000)
    with server.wire() as w:
        w.send(get("/echo/413-chunked", "Transfer-Encoding: chunked", method="POST"))
        w.send(chunk * (MAX_BODY // 1000 + 1) + b"0\r\n\r\n")
        resp = w.read_response()
        assert resp.status == 413
        assert resp.closes
    assert "/echo/413-chunked" not in server.calls()


def test_long_request_line_gets_414_before_its_crlf(server: Served) -> None:
    with server.wire() as w:
        w.send(b"GET /" + b"a" * (LINE_LIMIT + 10))  # no CRLF: the server must not wait
        resp = w.read_response()
        assert resp.status == 414
        assert resp.closes


def test_long_header_line_gets_431_before_its_crlf(server: Served) -> None:
    with server.wire() as w:
        w.send(b"GET /echo/431 HTTP/1.1\r\nHost: a\r\nX-Long: " + b"b" * (LINE_LIMIT + 10))
        resp = w.read_response()
        assert resp.status == 431
        assert resp.closes
    assert "/echo/431" not in server.calls()


def test_too_many_header_fields_get_431(server: Served) -> None:
    fields = [f"X-F{i}: v" for i in range(MAX_HEADERS - 1)]  # plus Host: the limit exactly
    assert server.exchange(get("/echo/count-ok", *fields)).status == 200
    with server.wire() as w:
        w.send(get("/echo/count-431", *fields, "X-One-More: v"))
        resp = w.read_response()
        assert resp.status == 431
        assert resp.closes
    assert "/echo/count-431" not in server.calls()


@pytest.mark.parametrize("which", ["request-line", "header-line"])
def test_line_of_exactly_the_limit_is_accepted_when_cr_and_lf_arrive_apart(
    server: Served, which: str
) -> None:
    if which == "request-line":
        line = b"GET /echo/" + b"a" * (LINE_LIMIT - 19) + b" HTTP/1.1"
        first, rest = line + b"\r", b"\nHost: a\r\n\r\n"
    else:
        line = b"X-Long: " + b"b" * (LINE_LIMIT - 8)
        first, rest = b"GET /echo/exact HTTP/1.1\r\nHost: a\r\n" + line + b"\r", b"\n\r\n"
    assert len(line) == LINE_LIMIT
    with server.wire() as w:
        w.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        w.send(first)
        time.sleep(0.2)  # let the server read the CR on its own
        w.send(rest)
        assert w.read_response().status == 200


# -- deadlines -------------------------------------------------------------------


def _trickle_until_closed(w: Wire, data: bytes, limit_s: float) -> tuple[float, bytes]:
    """Send ``data`` a byte every TRICKLE_S until the server answers; (elapsed, reply)."""
    started = time.monotonic()
    for byte in data:
        if time.monotonic() - started > limit_s:
            break
        try:
            w.send(bytes([byte]))
        except (BrokenPipeError, ConnectionResetError):
            break
        ready, _, _ = select.select([w.sock], [], [], TRICKLE_S)
        if ready:
            break
    elapsed = time.monotonic() - started
    return elapsed, w.read_until_close(timeout=limit_s)


def _assert_408_by_the_deadline(elapsed: float, reply: bytes) -> None:
    assert reply.startswith(b"HTTP/1.1 408 "), reply
    assert DEADLINE_S - 0.3 <= elapsed <= DEADLINE_S + DEADLINE_SLACK_S, elapsed


TRICKLE_LIMIT_S = DEADLINE_S + DEADLINE_SLACK_S + 2


def test_request_header_timeout_is_an_absolute_deadline(default: Served) -> None:
    head = b"GET /echo/trickle-head HTTP/1.1\r\nHost: a\r\nX-Pad: " + b"p" * 100
    with default.wire(timeout=10) as w:
        _assert_408_by_the_deadline(*_trickle_until_closed(w, head, TRICKLE_LIMIT_S))
    assert "/echo/trickle-head" not in default.calls()


def test_new_connection_that_sends_nothing_is_closed_without_a_response(default: Served) -> None:
    with default.wire(timeout=10) as w:
        started = time.monotonic()
        assert w.closed_within(DEADLINE_S + DEADLINE_SLACK_S), w.buf
        assert time.monotonic() - started >= DEADLINE_S - 0.3


def test_request_header_timeout_applies_to_a_keep_alive_request(any_handler: Served) -> None:
    with any_handler.wire(timeout=10) as w:
        w.send(get("/echo/before-trickle"))
        assert w.read_response().status == 200
        head = b"GET /echo/trickle-head-ka HTTP/1.1\r\nHost: a\r\nX-Pad: " + b"p" * 100
        _assert_408_by_the_deadline(*_trickle_until_closed(w, head, TRICKLE_LIMIT_S))
    assert "/echo/trickle-head-ka" not in any_handler.calls()


def test_request_body_timeout_is_an_absolute_deadline(any_handler: Served) -> None:
    with any_handler.wire(timeout=10) as w:
        w.send(get("/echo/before-body-trickle"))
        assert w.read_response().status == 200
        w.send(get("/echo/trickle-body", "Content-Length: 100", method="POST"))
        _assert_408_by_the_deadline(*_trickle_until_closed(w, b"b" * 100, TRICKLE_LIMIT_S))
    assert "/echo/trickle-body" not in any_handler.calls()


def test_idle_keep_alive_connection_is_closed_after_keepalive_idle_timeout(
    any_handler: Served,
) -> None:
    with any_handler.wire(timeout=10) as w:
        w.send(get("/echo/idle"))
        assert w.read_response().status == 200
        started = time.monotonic()
        assert not w.closed_within(DEADLINE_S - 0.5)
        assert w.closed_within(DEADLINE_S + DEADLINE_SLACK_S)  # closed, with no 408
        assert DEADLINE_S - 0.3 <= time.monotonic() - started <= DEADLINE_S + DEADLINE_SLACK_S


def test_client_that_never_reads_is_dropped_after_response_write_timeout(
    any_handler: Served,
) -> None:
    marker = f"stream-closed-{unique()}"
    with any_handler.wire(timeout=10, rcvbuf=4096) as w:
        w.send(get(f"/big-stream?marker={marker}"))
        started = time.monotonic()
        # The stalled response does not stall the worker.
        assert any_handler.exchange(get("/echo/while-stalled")).status == 200
        wait_until(lambda: (any_handler.directory / marker).exists(), timeout=DEADLINE_S + 5)
        elapsed = time.monotonic() - started
        assert DEADLINE_S - 0.3 <= elapsed <= DEADLINE_S + DEADLINE_SLACK_S + 1
        received = w.read_until_close(timeout=10)
    assert len(received) < 256 * 256 * 1024
    assert not received.endswith(b"0\r\n\r\n")
    assert any_handler.exchange(get("/echo/after-stalled")).status == 200


def _worker_holds(served: Served, client_port: int) -> bool:
    """Whether a worker of ``served`` still has the connection from ``client_port``."""
    for child in psutil.Process(served.proc.pid).children():
        try:
            conns = child.net_connections(kind="tcp")
        except psutil.NoSuchProcess:
            continue
        if any(c.raddr and c.raddr.port == client_port for c in conns):
            return True
    return False


@pytest.mark.parametrize(
    "flavour",
    [
        "async",
        "sync",
    ],
)
def test_client_that_never_reads_a_last_response_is_dropped_after_response_write_timeout(
    pool: Pool, flavour: str
) -> None:
    served = pool.get(("httptools", flavour))
    with served.wire(timeout=10, rcvbuf=4096) as w:
        # A first request, so that the second one reaches the handler the same way every
        # time (a sync handler is then called inline, an async one from the coroutine).
        w.send(get("/echo/before-big"))
        assert w.read_response().status == 200
        w.send(get("/big-body", "Connection: close"))
        port = w.sock.getsockname()[1]
        wait_until(lambda: _worker_holds(served, port), timeout=5)
        started = time.monotonic()
        limit = DEADLINE_S + DEADLINE_SLACK_S
        wait_until(lambda: not _worker_holds(served, port), timeout=limit)
        assert time.monotonic() - started >= DEADLINE_S - 0.3
        received = w.read_until_close(timeout=10)
    assert len(received) < 16 * 1024 * 1024


# -- logging ---------------------------------------------------------------------


def access_re(path: str) -> str:
    """The access line of a request for ``path``, its fields as named groups."""
    return (
        rf'\[ACCESS\] prefork\.access: 127\.0\.0\.1 "(?P<method>\S+) {re.escape(path)} '
        r'HTTP/1\.1" (?P<status>\d{3}) (?P<bytes>\d+) (?P<ms>\d+\.\d+)ms (?P<extra>.*)$'
    )


def test_one_access_line_per_request_with_ip_method_path_status_bytes_duration_headers(
    server: Served,
) -> None:
    ua = f"ua-{unique()}"
    with server.wire() as w:
        w.send(get("/echo/logged?x=1", f"User-Agent: {ua}", "X-Trace: t-1"))
        first = w.read_response()
        w.send(get("/status/404", f"User-Agent: {ua}"))
        assert w.read_response().status == 404
    line = server.proc.wait_log(rf"^.*/echo/logged\?x=1 .*{ua}.*$").group(0)
    match = re.search(access_re("/echo/logged?x=1"), line)
    assert match is not None, line
    assert match["method"] == "GET"
    assert match["status"] == "200"
    assert int(match["bytes"]) == len(first.body)
    assert match["extra"] == f'user-agent="{ua}" x-trace="t-1"'
    server.proc.wait_log(rf'"GET /status/404 HTTP/1\.1" 404 .* user-agent="{ua}" x-trace="-"')
    lines = [line for line in server.proc.log().splitlines() if ua in line]
    assert len(lines) == 2, lines


def test_access_line_bytes_of_a_500_are_the_body_bytes_sent(default: Served) -> None:
    ua = f"ua-{unique()}"
    resp = default.exchange(get(f"/raise?m={ua}", f"User-Agent: {ua}"))
    assert resp.status == 500
    line = default.proc.wait_log(rf"^.*/raise\?m={ua} .*{ua}.*$").group(0)
    match = re.search(access_re(f"/raise?m={ua}"), line)
    assert match is not None, line
    assert match["status"] == "500"
    assert int(match["bytes"]) == len(resp.body)


def test_access_log_escapes_quotes_and_control_characters(server: Served) -> None:
    ua = f"ua-{unique()}"
    trace = b'"forged" 200 0 0.1ms\tx'
    data = get('/echo/q"uo\\x0ate', f"User-Agent: {ua}").replace(
        b"\r\n\r\n", b"\r\nX-Trace: " + trace + b"\r\n\r\n"
    )
    assert server.exchange(data).status == 200
    line = server.proc.wait_log(rf"^.*{ua}.*$").group(0)
    # A literal backslash is escaped too, so "\\x0a" in a path is not read as an escaped LF.
    assert '"GET /echo/q\\"uo\\\\x0ate HTTP/1.1"' in line
    assert 'x-trace="\\"forged\\" 200 0 0.1ms\\x09x"' in line


def test_access_log_escapes_c1_control_characters(default: Served) -> None:
    ua = f"ua-{unique()}"
    data = get("/echo/c1", f"User-Agent: {ua}").replace(
        b"\r\n\r\n", b"\r\nX-Trace: a\x85b\x9bc\r\n\r\n"
    )
    assert default.exchange(data).status == 200
    line = default.proc.wait_log(rf"^.*{ua}.*$").group(0)
    assert "\x85" not in line
    assert "\x9b" not in line
    assert 'x-trace="a\\x85b\\x9bc"' in line


def test_log_level_info_has_no_access_lines(start_server: StartServer, tmp_path: Path) -> None:
    (tmp_path / "cfg.toml").write_text(CONFIG)
    proc = start_server(APP, "-c", "cfg.toml", "--log-level", "info")
    try:
        _check_no_access_lines(Served(proc, tmp_path))
    finally:
        proc.stop()
        if proc.proc.stderr is not None:
            proc.proc.stderr.close()


def _check_no_access_lines(served: Served) -> None:
    marker = unique()
    assert served.exchange(get("/echo/quiet")).status == 200
    assert served.exchange(get(f"/log?m={marker}")).status == 200
    assert served.exchange(get("/status/404")).status == 404
    served.proc.wait_log(f"app-log-marker {marker}")
    # One more request after the marker: had it logged, its line would precede this one's.
    assert served.exchange(get(f"/log?m={marker}-end")).status == 200
    served.proc.wait_log(f"app-log-marker {marker}-end")
    log = served.proc.log()
    assert "prefork.access" not in log
    assert "[ACCESS]" not in log
