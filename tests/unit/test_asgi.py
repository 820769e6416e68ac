"""The ASGI interface's rules without sockets: the scope, response headers,
the reader's streamed bodies, lifespan, and telling an ASGI app apart."""

from __future__ import annotations

import asyncio
import contextvars
import gc
from typing import Any

import pytest

from prefork.apps import detect_interface
from prefork.apps.asgi_context import resume_in_context
from prefork.apps.asgi_fields import response_fields, whole_head
from prefork.apps.asgi_lifespan import Lifespan, LifespanFailed
from prefork.apps.asgi_messages import AsgiMessageError
from prefork.apps.asgi_scope import ConnScope, decode_path, http_scope, lower_headers
from prefork.errors import ProtocolError
from prefork.http.head_cache import HeadCache
from prefork.http.parsers import make_parser
from prefork.http.protocol import RequestReader, streams_body
from prefork.http.request import Limits, Request
from prefork.http.response import DATE, encode_head

ASGI = {"version": "3.0", "spec_version": "2.5"}


@pytest.fixture(params=["httptools", "h11"])
def reader(request: pytest.FixtureRequest) -> RequestReader:
    return RequestReader(make_parser(request.param), Limits(8190, 100, 1000))


def parse(reader: RequestReader, data: bytes) -> Request:
    reader.feed(data)
    return reader.take()


# -- the scope ----------------------------------------------------------------


def test_scope_of_a_parsed_request(reader: RequestReader) -> None:
    req = parse(
        reader,
        b"GET /a%2Fb/caf%C3%A9?x=1&y=%20 HTTP/1.1\r\nHost: h\r\nX-Rep: 1\r\n"
        b"Content-Type: text/plain\r\nx-rep: 2\r\n\r\n",
    )
    conn = ConnScope(("10.0.0.1", 5000), ("10.0.0.2", 80), "http", {})
    state = {"db": "pool"}
    scope = http_scope(req, conn, "", state, ASGI)
    assert scope["type"] == "http"
    assert scope["http_version"] == "1.1"
    assert scope["method"] == "GET"
    assert scope["path"] == "/a/b/café"
    assert scope["raw_path"] == b"/a%2Fb/caf%C3%A9"
    assert scope["query_string"] == b"x=1&y=%20"
    assert scope["headers"] == [
        (b"host", b"h"),
        (b"x-rep", b"1"),
        (b"content-type", b"text/plain"),
        (b"x-rep", b"2"),
    ]
    assert scope["client"] == ("10.0.0.1", 5000)
    assert scope["server"] == ("10.0.0.2", 80)
    assert scope["state"] == state
    assert scope["state"] is not state


def test_scopes_of_one_connection_are_dicts_of_their_own(reader: RequestReader) -> None:
    """Each scope is a copy of the listener's template: what an app (or the
    forwarded fields) write into one is not in the next."""
    conn = ConnScope(("10.0.0.1", 5000), ("10.0.0.2", 80), "http", {})
    first = http_scope(parse(reader, b"GET /a?q HTTP/1.1\r\nHost: h\r\n\r\n"), conn, "", {}, ASGI)
    first["client"] = ("203.0.113.9", 0)
    first["scheme"] = "https"
    first["app.key"] = 1
    second = http_scope(parse(reader, b"POST /b HTTP/1.0\r\nX: y\r\n\r\n"), conn, "", {}, ASGI)
    assert second is not first
    assert (second["method"], second["path"], second["query_string"]) == ("POST", "/b", b"")
    assert second["http_version"] == "1.0"
    assert second["headers"] == [(b"x", b"y")]
    assert second["client"] == ("10.0.0.1", 5000)
    assert second["scheme"] == "http"
    assert "app.key" not in second
    assert len(second) == 14


def test_connections_of_one_listener_share_one_template(reader: RequestReader) -> None:
    """An idle keep-alive connection holds no scope dict of its own (~0.6 KiB
    each): the connections of one listener share the template, and each
    scope still gets its own connection's client and extensions."""
    a = ConnScope(("10.0.0.1", 5000), ("10.0.0.2", 80), "http", {"a": {}})
    b = ConnScope(("10.0.0.3", 6000), ("10.0.0.2", 80), "http", {"b": {}})
    other = ConnScope(("10.0.0.3", 6001), ("10.0.0.2", 443), "https", {})
    head = b"GET / HTTP/1.1\r\nHost: h\r\n\r\n"
    scope_a = http_scope(parse(reader, head), a, "", {}, ASGI)
    scope_b = http_scope(parse(reader, head), b, "", {}, ASGI)
    scope_other = http_scope(parse(reader, head), other, "", {}, ASGI)
    assert a.http is not None
    assert a.http is b.http
    assert a.server is b.server  # (the first connection's tuple, kept once)
    assert other.http is not a.http
    assert (scope_a["client"], scope_a["extensions"]) == (("10.0.0.1", 5000), {"a": {}})
    assert (scope_b["client"], scope_b["extensions"]) == (("10.0.0.3", 6000), {"b": {}})
    assert scope_b["extensions"] is b.extensions
    assert (scope_other["scheme"], scope_other["server"]) == ("https", ("10.0.0.2", 443))
    # Another root path is another template (each app's scopes carry their own).
    rooted = ConnScope(("10.0.0.1", 5000), ("10.0.0.2", 80), "http", {})
    assert http_scope(parse(reader, head), rooted, "/r", {}, ASGI)["root_path"] == "/r"
    assert rooted.http is not a.http
    # Reached at more local addresses than the templates kept: still right.
    for n in range(100):
        conn = ConnScope(("10.0.0.1", 5000), (f"10.9.{n}.1", 80), "http", {})
        scope = http_scope(parse(reader, head), conn, "", {}, ASGI)
        assert scope["server"] == (f"10.9.{n}.1", 80)
        assert scope["client"] == ("10.0.0.1", 5000)


def test_scope_with_root_path(reader: RequestReader) -> None:
    req = parse(reader, b"GET /x%20y HTTP/1.1\r\nHost: h\r\n\r\n")
    scope = http_scope(req, ConnScope(None, None, "https", {}), "/api", {}, ASGI)
    assert scope["root_path"] == "/api"
    assert scope["path"] == "/api/x y"
    assert scope["raw_path"] == b"/api/x%20y"
    assert scope["scheme"] == "https"


def test_headers_are_a_new_list_each_time(reader: RequestReader) -> None:
    req = parse(reader, b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
    first = lower_headers(req.raw_headers)
    first.append((b"x", b"y"))
    assert lower_headers(req.raw_headers) == [(b"host", b"h")]


def test_scope_of_a_cached_head_is_the_scope_of_a_fresh_one() -> None:
    """The third sighting of a head is built from the reader's head cache."""
    reader = RequestReader(make_parser("httptools"), Limits(8190, 100, 1000), HeadCache())
    head = b"GET /a%20b?q=1 HTTP/1.1\r\nHost: h\r\nX-A: 1\r\nx-a: 2\r\n\r\n"
    conn = ConnScope(None, None, "http", {})
    reqs = [parse(reader, head) for _ in range(4)]
    assert [req.cached for req in reqs] == [False, False, True, True]
    scopes = [http_scope(req, conn, "/r", {}, ASGI) for req in reqs]
    for scope in scopes[1:]:
        assert scope == scopes[0]
    assert scopes[0]["path"] == "/r/a b"
    assert scopes[0]["headers"] == [(b"host", b"h"), (b"x-a", b"1"), (b"x-a", b"2")]
    # An app that changes its scope's headers changes no other request's.
    scopes[2]["headers"].append((b"x-b", b"3"))
    assert http_scope(reqs[3], conn, "/r", {}, ASGI)["headers"] == scopes[0]["headers"]


def test_an_app_changing_its_headers_changes_no_cached_head() -> None:
    """As an ASGI worker reads heads (only the server's fields as a dict, the
    parser's own list as the scope's headers), an app that changes its headers
    before the head is cached changes nothing the cache gives later requests."""
    reader = RequestReader(make_parser("httptools", True), Limits(8190, 100, 1000), HeadCache())
    reader.fields_as_list = True
    head = b"GET /a HTTP/1.1\r\nHost: h\r\nX-A: 1\r\n\r\n"
    conn = ConnScope(None, None, "http", {})
    seen = []
    for _ in range(4):
        req = parse(reader, head)
        headers = http_scope(req, conn, "", {}, ASGI)["headers"]
        seen.append((req.cached, list(headers)))
        headers.append((b"x-added", b"by the app"))
        headers[0] = (b"host", b"changed")
    assert seen == [(cached, [(b"host", b"h"), (b"x-a", b"1")]) for cached in (0, 0, 1, 1)]


def test_varied_heads_leave_nothing_behind() -> None:
    """Scopes of heads that never come again keep no objects alive: a cache of
    them would be garbage the collector walks (and its collections cost
    microseconds per request behind a load balancer)."""
    reader = RequestReader(make_parser("httptools"), Limits(8190, 100, 1000), HeadCache())
    conn = ConnScope(None, None, "http", {})

    def serve(first: int) -> None:
        for n in range(first, first + 600):
            head = b"GET /%d HTTP/1.1\r\nHost: h\r\nX-Id: %d\r\nAccept: */*\r\n\r\n" % (n, n)
            http_scope(parse(reader, head), conn, "", {}, ASGI)

    serve(0)  # the name caches warm up
    gc.collect()
    before = len(gc.get_objects())
    serve(1000)
    gc.collect()
    assert len(gc.get_objects()) - before < 50


def test_in_context_passes_results_errors_and_cancellation() -> None:
    """What an app run by resume_in_context gets after its first step: futures'
    results, its own context across its awaits (not the caller's), exceptions
    and cancellation."""
    mark: contextvars.ContextVar[str] = contextvars.ContextVar("mark", default="caller's")
    seen: list[object] = []

    async def app(fut: asyncio.Future[int], fail: bool) -> None:
        mark.set("app's")
        seen.append(await fut)
        seen.append(mark.get())
        if fail:
            raise ValueError("app failed")
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            seen.append("cancelled")
            raise

    async def call(fut: asyncio.Future[int], fail: bool) -> None:
        context = contextvars.copy_context()
        coro = context.run(app, fut, fail)
        step = context.run(coro.send, None)  # (the app waits for fut)
        await resume_in_context(coro, context, step)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[int] = loop.create_future()
        task = loop.create_task(call(fut, False))
        await asyncio.sleep(0)
        fut.set_result(42)
        for _ in range(3):
            await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert seen == [42, "app's", "cancelled"]
        failing: asyncio.Future[int] = loop.create_future()
        failing.set_result(7)
        with pytest.raises(ValueError, match="app failed"):
            await call(failing, True)
        assert seen[3:] == [7, "app's"]
        assert mark.get() == "caller's"

    asyncio.run(main())


def test_in_context_a_cancellation_that_came_first_is_thrown_into_the_app() -> None:
    """``throw``: a cancellation that came before the rest ran (asgi's hand-over
    from the protocol callback) reaches the app, and the future it waited for
    is cancelled, as a task would cancel it."""
    mark: contextvars.ContextVar[str] = contextvars.ContextVar("mark", default="caller's")
    seen: list[object] = []

    async def app(fut: asyncio.Future[int]) -> None:
        mark.set("app's")
        try:
            await fut
        except asyncio.CancelledError:
            seen.append(mark.get())

    async def main() -> None:
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        context = contextvars.copy_context()
        coro = context.run(app, fut)
        step = context.run(coro.send, None)
        assert step is fut
        await resume_in_context(coro, context, step, asyncio.CancelledError())
        assert seen == ["app's"]
        assert fut.cancelled()
        assert mark.get() == "caller's"

    asyncio.run(main())


def test_decode_path_invalid_utf8() -> None:
    assert decode_path("/%FF") == "/\ufffd"
    assert decode_path("/plain") == "/plain"


# -- response headers ---------------------------------------------------------


def test_response_fields_keep_order_and_repeats() -> None:
    text, lower, has_server, close, length = response_fields(
        [(b"Set-Cookie", b"a=1"), (b"set-cookie", b"b=2"), (b"Server", b"mine")]
    )
    assert text == "Set-Cookie: a=1\r\nset-cookie: b=2\r\nServer: mine\r\n"
    assert lower["set-cookie"] == "a=1, b=2"
    assert has_server
    assert not close
    assert length is None


def test_response_fields_framing_is_the_servers() -> None:
    text, _, _, close, length = response_fields(
        [
            (b"content-length", b"12"),
            (b"Transfer-Encoding", b"chunked"),
            (b"Connection", b"close"),
            (b"date", b"yesterday"),
            (b"x-a", b"1"),
        ]
    )
    assert text == "x-a: 1\r\n"
    assert close
    assert length == 12


def test_whole_heads_match_their_uncached_head_for_every_key() -> None:
    """The cache's key packs size, status and the three flags into one int: each
    head is its own key's, across sizes past the packing's bits and past the cap."""
    DATE.refresh(1_700_000_000.0)
    texts = ("x-a: 1\r\n", "x-b: 2\r\n", "")
    for _ in range(2):  # the second pass reads the cache (or what the cap left)
        for text in texts:
            for status in (200, 204, 404, 599):
                for size in (0, 1, 1023, 1024, 8191, 8192, 2**40 + 3):
                    for flags in range(8):
                        server, keep, h10 = bool(flags & 4), bool(flags & 2), bool(flags & 1)
                        head = whole_head(status, text, server, size, keep, h10)
                        framing = f"Content-Length: {size}\r\n"
                        assert head == encode_head(status, text, server, framing, keep, h10)


def test_whole_heads_are_remembered_within_a_second() -> None:
    DATE.refresh(1_700_000_000.0)
    first = whole_head(200, "x-a: 1\r\n", False, 13, True, False)
    assert first == (
        b"HTTP/1.1 200 OK\r\nServer: prefork\r\nDate: Tue, 14 Nov 2023 22:13:20 GMT\r\n"
        b"x-a: 1\r\nContent-Length: 13\r\n\r\n"
    )
    assert whole_head(200, "x-a: 1\r\n", False, 13, True, False) is first
    # Each part of the key makes its own head.
    assert b"Content-Length: 14\r\n" in whole_head(200, "x-a: 1\r\n", False, 14, True, False)
    assert whole_head(200, "x-a: 1\r\n", False, 13, False, False).endswith(
        b"Connection: close\r\n\r\n"
    )
    assert b"Server:" not in whole_head(200, "x-a: 1\r\n", True, 13, True, False)
    assert whole_head(404, "x-a: 1\r\n", False, 13, True, False).startswith(b"HTTP/1.1 404 ")
    assert whole_head(200, "x-a: 1\r\n", False, 13, True, True).endswith(
        b"Connection: keep-alive\r\n\r\n"
    )
    # The next second's Date line: no head of the last second is given out.
    DATE.refresh(1_700_000_001.0)
    assert b"Date: Tue, 14 Nov 2023 22:13:21 GMT\r\n" in whole_head(
        200, "x-a: 1\r\n", False, 13, True, False
    )
    DATE.refresh()


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        ([("x-a", b"1")], "is not bytes"),
        ([(b"x-a", "1")], "is not bytes"),
        ([(b"x a", b"1")], "is not a token"),
        ([(b"x:a", b"1")], "is not a token"),
        ([(b"", b"1")], "is not a token"),
        ([(b"x-a", b"1\r\nx-b: 2")], "CR, LF or NUL"),
        ([(b"x-a", b"1\x00")], "CR, LF or NUL"),
        ([(b"content-length", b"ten")], "bad Content-Length"),
        ([(b"content-length", b"1"), (b"content-length", b"2")], "bad Content-Length"),
        ([(b"x-a",)], "pairs of bytes"),
        (5, "pairs of bytes"),
    ],
)
def test_response_fields_refuse(headers: Any, message: str) -> None:
    with pytest.raises(AsgiMessageError, match=message):
        response_fields(headers)


# -- the reader's streamed bodies ---------------------------------------------


def test_streams_body_rule(reader: RequestReader) -> None:
    small = parse(reader, b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc")
    assert not streams_body(small, 64)
    assert streams_body(small, 2)
    reader2 = RequestReader(make_parser("h11"), Limits(8190, 100, 1000))
    chunked = parse(
        reader2, b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    )
    assert streams_body(chunked, 10**9)


def test_streamed_body_in_pieces_then_the_next_request(reader: RequestReader) -> None:
    reader.stream_over = 4
    reader.feed(b"POST /up HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\nhello")
    req = reader.take()  # queued at its head
    assert req.path == "/up"
    assert not reader.want_continue
    assert reader.take_body() == b"hello"
    assert not reader.body_done
    assert reader.take_body() == b""
    reader.feed(b"world" + b"GET /next HTTP/1.1\r\nHost: h\r\n\r\n")
    assert reader.take_body() == b"world"
    assert reader.body_done
    # Nothing past the body is parsed until the exchange is over.
    assert not reader.requests
    assert reader.paused
    reader.resume()
    assert reader.take().path == "/next"


def test_streamed_chunked_body_and_its_limit(reader: RequestReader) -> None:
    reader.stream_over = 0
    reader.feed(b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
    reader.take()
    assert reader.take_body() == b"hello"
    with pytest.raises(ProtocolError) as info:
        reader.feed(b"3e8\r\n")  # 1000 more: past the 1000-byte limit
    assert info.value.status == 413


def test_expect_continue_is_left_to_the_app(reader: RequestReader) -> None:
    reader.stream_over = 1 << 20
    reader.feed(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n")
    req = reader.take()
    assert req.expect_continue
    assert not reader.want_continue
    assert reader.in_body


def test_whole_bodies_without_stream_over(reader: RequestReader) -> None:
    reader.feed(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 300\r\n\r\n" + b"x" * 300)
    assert reader.take().body == b"x" * 300


# -- lifespan -----------------------------------------------------------------


def make_app(behaviour: str) -> Any:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        assert scope["type"] == "lifespan"
        message = await receive()
        assert message["type"] == "lifespan.startup"
        if behaviour == "raise":
            raise ValueError("no lifespan here")
        if behaviour == "return":
            return
        if behaviour == "fail":
            await send({"type": "lifespan.startup.failed", "message": "db down"})
            return
        scope["state"]["pool"] = "ready"
        await send({"type": "lifespan.startup.complete"})
        message = await receive()
        assert message["type"] == "lifespan.shutdown"
        scope["state"]["shut"] = True
        await send({"type": "lifespan.shutdown.complete"})

    return app


def run_lifespan(behaviour: str, mode: str) -> Lifespan:
    async def main() -> Lifespan:
        lifespan = Lifespan(make_app(behaviour), "t:app", mode, ASGI)
        await lifespan.startup()
        await lifespan.shutdown()
        return lifespan

    return asyncio.run(main())


def test_lifespan_complete_fills_state_and_shuts_down() -> None:
    lifespan = run_lifespan("ok", "auto")
    assert lifespan.state == {"pool": "ready", "shut": True}


@pytest.mark.parametrize("behaviour", ["raise", "return"])
def test_lifespan_auto_serves_without(behaviour: str) -> None:
    assert run_lifespan(behaviour, "auto").state == {}


@pytest.mark.parametrize("behaviour", ["raise", "return"])
def test_lifespan_on_fails_the_boot(behaviour: str) -> None:
    with pytest.raises(LifespanFailed):
        run_lifespan(behaviour, "on")


@pytest.mark.parametrize("mode", ["auto", "on"])
def test_lifespan_startup_failed_fails_the_boot(mode: str) -> None:
    with pytest.raises(LifespanFailed, match="db down"):
        run_lifespan("fail", mode)


def test_lifespan_off_never_calls_the_app() -> None:
    assert run_lifespan("raise", "off").state == {}


# -- auto-detection -----------------------------------------------------------


def test_detect_asgi_shapes() -> None:
    async def func(scope: Any, receive: Any, send: Any) -> None: ...

    class Instance:
        async def __call__(self, scope: Any, receive: Any, send: Any) -> None: ...

    assert detect_interface(func, "f") == "asgi"
    assert detect_interface(Instance(), "i") == "asgi"


def test_lifespan_message_out_of_turn_is_ignored_unknown_one_refused() -> None:
    seen: list[str] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.failed", "message": "cancelled"})  # not asked
        try:
            await send({"type": "lifespan.bogus"})
        except RuntimeError as exc:
            seen.append(str(exc))
        await receive()
        await send({"type": "lifespan.shutdown.complete"})

    async def main() -> None:
        lifespan = Lifespan(app, "t:app", "on", ASGI)
        await lifespan.startup()
        await asyncio.sleep(0)
        await lifespan.shutdown()

    asyncio.run(main())
    assert seen == ["unexpected ASGI lifespan message 'lifespan.bogus'"]
