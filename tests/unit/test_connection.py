"""The connection layer driven through a fake transport: bytes in, exact bytes out."""

from __future__ import annotations

import asyncio
import gzip
import math
from typing import Any

import pytest

import prefork
from prefork.apps.native import NativeApp, exchange
from prefork.config import Config
from prefork.engine.batch import WRITE_BATCH
from prefork.engine.connection import Connection
from prefork.engine.shared import COUNTS_SHARED, DEADLINE_GRAIN, Deadline, Shared
from prefork.http import response

DATE_LINE = "Date: Wed, 25 Nov 2026 08:00:00 GMT\r\n"
GET = b"GET /hello HTTP/1.1\r\nHost: example.com\r\n\r\n"


class FakeTransport:
    """Records what the connection writes; feeds nothing by itself."""

    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.closed = False
        self.eof_written = False
        self.paused = False

    def write(self, data: bytes) -> None:
        self.written.append(bytes(data))

    def data(self) -> bytes:
        return b"".join(self.written)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 40000) if name == "peername" else default

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.eof_written = True

    def get_write_buffer_size(self) -> int:
        return 0

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False


@pytest.fixture(autouse=True)
def pinned_date(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(response.DATE, "line", DATE_LINE)
    monkeypatch.setattr(response.DateHeader, "refresh", lambda self, now=None: None)


def make(
    handler: Any, backend: str = "httptools", quick_s: float = math.inf, **cfg: Any
) -> tuple[Connection, FakeTransport]:
    """A connection on a fake transport; ``quick_s``: NativeApp's batching threshold
    (by default every handler counts as quick, so no test hinges on the wall clock)."""
    app = NativeApp(handler, quick_s=quick_s)
    state = Shared(Config.build({"http": backend, "log_level": "error", **cfg}), app)
    conn = Connection(state)
    transport = FakeTransport()
    conn.connection_made(transport)  # type: ignore[arg-type]
    return conn, transport


async def parked(conn: Connection) -> asyncio.Task[Any]:
    """The connection's coroutine, started and parked waiting for a request."""
    task = asyncio.get_running_loop().create_task(exchange(conn, conn.shared, "127.0.0.1", 0, None))
    await asyncio.sleep(0)
    return task


async def lose(conn: Connection, task: asyncio.Task[Any]) -> None:
    """The peer goes away: the parked coroutine ends with PeerGone."""
    conn.connection_lost(None)
    with pytest.raises(prefork.errors.PeerGone):
        await task


def hello(method: str, query: str, args: Any, headers: Any, body: bytes, ctx: Any) -> Any:
    return "Hello, World!", 200, {"content-type": "text/plain"}


HELLO_RESPONSE = (
    b"HTTP/1.1 200 OK\r\nServer: prefork\r\n"
    + DATE_LINE.encode()
    + b"content-type: text/plain\r\nContent-Length: 13\r\n\r\nHello, World!"
)


@pytest.mark.parametrize("backend", ["httptools", "h11"])
async def test_get_answers_exact_bytes(backend: str) -> None:
    conn, transport = make(hello, backend)
    conn.data_received(GET)
    action = await exchange(conn, conn.shared, "127.0.0.1", 0, None)
    assert action == "keep-alive"
    assert transport.data() == HELLO_RESPONSE


async def test_process_request_public_call() -> None:
    server, err = prefork.new({"log_level": "error"}, hello)
    assert err is None
    assert server is not None
    conn, transport = make(hello)
    conn.data_received(GET)
    assert await server.process_request(conn, "127.0.0.1", 0, None) == ("keep-alive", None)
    assert transport.data() == HELLO_RESPONSE


async def test_process_request_reports_malformed_input_after_the_error_response() -> None:
    server, _ = prefork.new({"log_level": "error"}, hello)
    assert server is not None
    conn, transport = make(hello)
    conn.data_received(
        b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    action, err = await server.process_request(conn, "127.0.0.1", 0, None)
    assert action is None
    assert err is not None
    assert "Transfer-Encoding" in err
    assert transport.data().startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert b"Connection: close\r\n" in transport.data()


@pytest.mark.parametrize("backend", ["httptools", "h11"])
async def test_post_body_split_at_every_byte_is_the_same(backend: str) -> None:
    seen: list[bytes] = []

    def echo(method: str, query: str, args: Any, headers: Any, body: bytes, ctx: Any) -> Any:
        seen.append(body)
        return body, 200, {}

    raw = (
        b"POST /e HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n"
    )
    for cut in range(1, len(raw)):
        conn, transport = make(echo, backend)
        conn.data_received(raw[:cut])
        conn.data_received(raw[cut:])
        assert await exchange(conn, conn.shared, "127.0.0.1", 0, None) == "keep-alive"
        assert transport.data().endswith(b"Content-Length: 5\r\n\r\nabcde")
    assert seen == [b"abcde"] * (len(raw) - 1)


async def test_pipelined_requests_are_answered_in_order() -> None:
    def path(method: str, query: str, args: Any, headers: Any, body: bytes, ctx: Any) -> Any:
        return query, 200, {}

    conn, transport = make(path)
    conn.data_received(b"".join(b"GET /%d HTTP/1.1\r\nHost: a\r\n\r\n" % i for i in (1, 2, 3)))
    for i in range(3):
        assert await exchange(conn, conn.shared, "127.0.0.1", i, None) == "keep-alive"
    bodies = [chunk.rsplit(b"\r\n\r\n", 1)[1] for chunk in transport.written]
    assert bodies == [b"/1", b"/2", b"/3"]


async def test_handler_that_raises_gets_500_and_close() -> None:
    def boom(*args: Any) -> Any:
        raise RuntimeError("boom")

    conn, transport = make(boom)
    conn.data_received(GET)
    assert await exchange(conn, conn.shared, "127.0.0.1", 0, None) == "close"
    assert transport.data().startswith(b"HTTP/1.1 500 Internal Server Error\r\n")
    assert b"Connection: close\r\n" in transport.data()
    assert transport.eof_written


@pytest.mark.parametrize(
    "headers",
    [
        {"x-evil": "a\r\nSet-Cookie: stolen=1"},
        {"x-evil": "a\nb"},
        {"x-evil\r\nInjected": "1"},
        {"x-nul": "a\0b"},
    ],
    ids=["crlf-value", "lf-value", "crlf-name", "nul-value"],
)
async def test_header_injection_gets_500(headers: dict[str, str]) -> None:
    def evil(*args: Any) -> Any:
        return "x", 200, headers

    conn, transport = make(evil)
    conn.data_received(GET)
    assert await exchange(conn, conn.shared, "127.0.0.1", 0, None) == "close"
    assert transport.data().startswith(b"HTTP/1.1 500 ")
    assert b"stolen" not in transport.data()
    assert b"Injected" not in transport.data()


async def test_all_none_result_writes_nothing_and_keeps_alive() -> None:
    def proxied(*args: Any) -> Any:
        return None, None, None

    conn, transport = make(proxied)
    conn.data_received(GET)
    assert await exchange(conn, conn.shared, "127.0.0.1", 0, None) == "keep-alive"
    assert transport.written == []


async def test_expect_continue_is_answered_before_the_body() -> None:
    conn, transport = make(hello)
    conn.data_received(
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n"
    )
    assert transport.data() == b"HTTP/1.1 100 Continue\r\n\r\n"
    conn.data_received(b"abc")
    assert await exchange(conn, conn.shared, "127.0.0.1", 0, None) == "keep-alive"
    assert transport.written[1].startswith(b"HTTP/1.1 200 OK\r\n")


async def test_expect_continue_over_the_limit_gets_413_without_100() -> None:
    conn, transport = make(hello, max_body_size=10)
    conn.data_received(
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 11\r\nExpect: 100-continue\r\n\r\n"
    )
    with pytest.raises(prefork.errors.ProtocolError):
        await exchange(conn, conn.shared, "127.0.0.1", 0, None)
    assert transport.data().startswith(b"HTTP/1.1 413 ")
    assert b"100 Continue" not in transport.data()


async def test_last_request_per_connection_carries_close() -> None:
    conn, transport = make(hello, requests_per_connection=2)
    conn.data_received(GET + GET)
    assert await exchange(conn, conn.shared, "127.0.0.1", 0, None) == "keep-alive"
    assert await exchange(conn, conn.shared, "127.0.0.1", 1, None) == "close"
    assert b"Connection: close" not in transport.written[0]
    assert transport.written[1].endswith(b"Connection: close\r\n\r\nHello, World!")


async def test_head_has_length_but_no_body() -> None:
    conn, transport = make(hello)
    conn.data_received(b"HEAD /hello HTTP/1.1\r\nHost: a\r\n\r\n")
    assert await exchange(conn, conn.shared, "127.0.0.1", 0, None) == "keep-alive"
    assert transport.data().endswith(b"Content-Length: 13\r\n\r\n")


async def test_stream_is_sent_chunked_exactly() -> None:
    def stream(*args: Any) -> Any:
        return iter([b"ab", b"", b"cde"]), 200, {"content-type": "application/octet-stream"}

    conn, transport = make(stream)
    conn.data_received(GET)
    assert await exchange(conn, conn.shared, "127.0.0.1", 0, None) == "keep-alive"
    assert transport.data().endswith(
        b"Transfer-Encoding: chunked\r\n\r\n2\r\nab\r\n3\r\ncde\r\n0\r\n\r\n"
    )


async def test_async_stream_to_http10_is_close_delimited() -> None:
    async def gen() -> Any:
        yield b"one"
        await asyncio.sleep(0)
        yield b"two"

    async def stream(*args: Any) -> Any:
        return gen(), 200, {}

    conn, transport = make(stream)
    conn.data_received(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    assert await exchange(conn, conn.shared, "127.0.0.1", 0, None) == "close"
    data = transport.data()
    assert b"Transfer-Encoding" not in data
    assert data.endswith(b"Connection: close\r\n\r\nonetwo")


async def test_http10_keep_alive_is_confirmed() -> None:
    conn, transport = make(hello)
    conn.data_received(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    assert await exchange(conn, conn.shared, "127.0.0.1", 0, None) == "keep-alive"
    assert b"Connection: keep-alive\r\n" in transport.data()


async def test_inline_path_serves_while_the_coroutine_is_parked() -> None:
    conn, transport = make(hello)
    task = await parked(conn)
    conn.data_received(GET + GET)  # answered from the protocol callback
    await asyncio.sleep(0)  # its writes go out at the end of the loop turn
    assert transport.data() == HELLO_RESPONSE * 2
    assert conn.count == 2
    await lose(conn, task)


async def test_continue_for_a_pipelined_request_follows_the_earlier_response() -> None:
    conn, transport = make(hello)
    task = await parked(conn)
    conn.data_received(
        GET + b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n"
    )
    assert transport.written == [HELLO_RESPONSE, b"HTTP/1.1 100 Continue\r\n\r\n"]
    conn.data_received(b"ok")
    await asyncio.sleep(0)
    assert len(transport.written) == 3
    await lose(conn, task)


async def test_bytes_after_an_upgrade_request_reach_the_handler_unparsed() -> None:
    async def tunnel(
        method: str, query: str, args: Any, headers: Any, body: bytes, ctx: Any
    ) -> Any:
        await ctx.client.write(b"HTTP/1.1 101 Switching Protocols\r\n\r\n")
        await ctx.client.write((await ctx.client.read(100)).upper())
        return None, None, None

    conn, transport = make(tunnel)
    conn.data_received(
        b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: x\r\nConnection: Upgrade\r\n\r\nnot http\r\n\r\n"
    )
    assert await exchange(conn, conn.shared, "127.0.0.1", 0, None) == "keep-alive"
    assert transport.written == [b"HTTP/1.1 101 Switching Protocols\r\n\r\n", b"NOT HTTP\r\n\r\n"]


async def test_declined_upgrade_parses_what_follows_as_http() -> None:
    conn, transport = make(hello)
    conn.data_received(
        b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: x\r\nConnection: upgrade\r\n\r\n" + GET
    )
    assert await exchange(conn, conn.shared, "127.0.0.1", 0, None) == "keep-alive"
    assert await exchange(conn, conn.shared, "127.0.0.1", 1, None) == "keep-alive"
    assert transport.data() == HELLO_RESPONSE * 2


async def test_request_pipelined_after_close_is_not_answered_by_the_woken_coroutine() -> None:
    calls: list[str] = []

    def record(method: str, query: str, args: Any, headers: Any, body: bytes, ctx: Any) -> Any:
        calls.append(query)
        return "x", 200, {}

    conn, _ = make(record)
    task = asyncio.get_running_loop().create_task(exchange(conn, conn.shared, "127.0.0.1", 0, None))
    await asyncio.sleep(0)  # parked: the inline path answers the first request
    conn.data_received(
        b"GET /close HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
        b"GET /after HTTP/1.1\r\nHost: a\r\n\r\n"
    )
    assert await task == "close"  # the inline path answered /close and closed
    assert calls == ["/close"]


def _stream_then_text(
    method: str, query: str, args: Any, headers: Any, body: bytes, ctx: Any
) -> Any:
    if query == "/stream":
        return iter([b"first"]), 200, {}
    return "second", 200, {}


async def _exchange_once(conn: Connection, feed: list[bytes]) -> str:
    """Park an exchange, feed ``feed`` without yielding in between, await it (bounded)."""
    task = asyncio.get_running_loop().create_task(
        exchange(conn, conn.shared, "127.0.0.1", conn.count, None)
    )
    await asyncio.sleep(0)
    for data in feed:
        conn.data_received(data)
    return await asyncio.wait_for(task, 1.0)


async def test_request_read_before_a_handed_off_response_waits_for_it() -> None:
    # libuv hands a busy socket's reads over up to 32 at a time in one loop
    # turn: the second arrives before the woken coroutine streams the first.
    conn, transport = make(_stream_then_text)
    first = b"GET /stream HTTP/1.1\r\nHost: a\r\n\r\nGET / HT"
    assert await _exchange_once(conn, [first, b"TP/1.1\r\nHost: a\r\n\r\n"]) == "keep-alive"
    assert transport.data().endswith(b"Transfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n0\r\n\r\n")
    assert await _exchange_once(conn, []) == "keep-alive"
    assert transport.written[-1].endswith(b"Content-Length: 6\r\n\r\nsecond")


async def test_continue_waits_for_a_handed_off_response() -> None:
    conn, transport = make(_stream_then_text)
    post = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n"
    assert (
        await _exchange_once(conn, [b"GET /stream HTTP/1.1\r\nHost: a\r\n\r\n", post])
        == "keep-alive"
    )
    assert transport.data().startswith(b"HTTP/1.1 200 OK\r\n")
    assert transport.data().endswith(b"5\r\nfirst\r\n0\r\n\r\n")
    task = asyncio.get_running_loop().create_task(
        exchange(conn, conn.shared, "127.0.0.1", conn.count, None)
    )
    await asyncio.sleep(0)  # parked: now the 100, after the stream
    assert transport.written[-1] == b"HTTP/1.1 100 Continue\r\n\r\n"
    conn.data_received(b"ok")  # answered inline
    await asyncio.sleep(0)
    assert transport.written[-1].endswith(b"Content-Length: 6\r\n\r\nsecond")
    conn.connection_lost(None)
    with pytest.raises(prefork.errors.PeerGone):
        await asyncio.wait_for(task, 1.0)


async def test_sync_handler_that_raises_inline_is_a_close_like_the_coroutine_path() -> None:
    def boom(*args: Any) -> Any:
        raise RuntimeError("boom")

    server, _ = prefork.new({"log_level": "error"}, boom)
    assert server is not None
    conn, transport = make(boom)
    task = asyncio.get_running_loop().create_task(
        server.process_request(conn, "127.0.0.1", 0, None)
    )
    await asyncio.sleep(0)  # parked: the inline path calls the handler
    conn.data_received(GET)
    assert await asyncio.wait_for(task, 1.0) == ("close", None)
    assert transport.data().startswith(b"HTTP/1.1 500 Internal Server Error\r\n")


async def test_500_to_head_has_length_but_no_body() -> None:
    def boom(*args: Any) -> Any:
        raise RuntimeError("boom")

    conn, transport = make(boom)
    conn.data_received(b"HEAD / HTTP/1.1\r\nHost: a\r\n\r\n")
    assert await exchange(conn, conn.shared, "127.0.0.1", 0, None) == "close"
    assert transport.data() == (
        b"HTTP/1.1 500 Internal Server Error\r\nServer: prefork\r\n"
        + DATE_LINE.encode()
        + b"Content-Type: text/plain; charset=utf-8\r\nContent-Length: 22\r\n"
        b"Connection: close\r\n\r\n"
    )


async def test_compressed_response_keeps_repeated_and_cased_header_lines() -> None:
    # Two keys differing in case send two Set-Cookie lines; compressing the body
    # must not fold them into one or lower-case the handler's names.
    body = "x" * 2048

    def page(method: str, query: str, args: Any, headers: Any, b: bytes, ctx: Any) -> Any:
        return (
            body,
            200,
            {
                "Content-Type": "text/html",
                "Set-Cookie": "a=1",
                "set-cookie": "b=2",
                "ETag": '"v1"',
                "X-Trace": "t",
            },
        )

    conn, transport = make(page)
    conn.data_received(b"GET / HTTP/1.1\r\nHost: h\r\nAccept-Encoding: gzip\r\n\r\n")
    assert await exchange(conn, conn.shared, "127.0.0.1", 0, None) == "keep-alive"
    head, _, payload = transport.data().partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")[1:]
    assert "Set-Cookie: a=1" in lines
    assert "set-cookie: b=2" in lines
    assert "Content-Type: text/html" in lines
    assert "X-Trace: t" in lines
    assert "content-encoding: gzip" in lines
    assert "vary: Accept-Encoding" in lines
    assert 'etag: W/"v1"' in lines
    assert not any(line.lower().startswith("etag:") and "W/" not in line for line in lines)
    assert gzip.decompress(payload) == body.encode()


# -- per-connection values shared between connections ----------------------
# (with many connections, what a request touches of its own is a cache miss)


async def test_inline_counts_run_past_the_shared_table_and_close_at_the_limit() -> None:
    limit = COUNTS_SHARED + 2
    conn, transport = make(hello, requests_per_connection=limit)
    task = await parked(conn)
    conn.data_received(GET * 300)
    assert conn.count == 300
    if not prefork.COMPILED:  # compiled, the count is a C integer: no object at all
        assert conn.count is conn.shared.counts[300]  # shared, not an int of its own
    conn.data_received(GET * (limit - 300 + 5))  # 5 more than allowed
    assert await task == "close"
    assert conn.count == limit
    assert len(transport.written) == limit
    assert b"Connection: close" not in transport.written[-2]
    assert transport.written[-1].endswith(b"Connection: close\r\n\r\nHello, World!")


async def test_connections_going_idle_together_share_a_deadline_never_early() -> None:
    loop = asyncio.get_running_loop()
    conns = [make(hello, keepalive_idle_timeout=7)[0] for _ in range(2)]
    state = conns[1].shared = conns[0].shared
    tasks = [loop.create_task(exchange(c, state, "127.0.0.1", 0, None)) for c in conns]
    await asyncio.sleep(0)
    before = loop.time()
    for conn in conns:
        conn.data_received(GET)
    after = loop.time()
    for conn in conns:
        assert conn.deadline_kind is Deadline.IDLE
        assert before + 7 <= conn.deadline <= after + 7 + DEADLINE_GRAIN
    assert conns[0].deadline == conns[1].deadline
    if not prefork.COMPILED:  # compiled, a deadline is a C double: no object to share
        assert conns[0].deadline is conns[1].deadline
    for conn, task in zip(conns, tasks, strict=True):
        await lose(conn, task)


async def test_connections_from_one_address_share_its_string() -> None:
    first, _ = make(hello)
    second, _ = make(hello)
    first.set_peer(("".join(["10.0.0.", "7"]), 1000))
    second.set_peer(("".join(["10.0.", "0.7"]), 1001))
    assert first.client_ip == "10.0.0.7"
    assert first.client_ip is second.client_ip


# -- the inline path's writes go out together (Connection.write_response, engine.batch) --


async def test_inline_responses_go_out_together_at_the_end_of_the_loop_turn() -> None:
    loop = asyncio.get_running_loop()
    conns = [make(hello)[0] for _ in range(2)]
    state = conns[1].shared = conns[0].shared
    transports = [conn.transport for conn in conns]
    tasks = [loop.create_task(exchange(c, state, "127.0.0.1", 0, None)) for c in conns]
    await asyncio.sleep(0)
    conns[0].data_received(GET + GET)
    conns[1].data_received(GET)
    assert [t.written for t in transports] == [[], []]  # type: ignore[union-attr]
    await asyncio.sleep(0)
    assert [t.written for t in transports] == [  # type: ignore[union-attr]
        [HELLO_RESPONSE, HELLO_RESPONSE],
        [HELLO_RESPONSE],
    ]
    for conn, task in zip(conns, tasks, strict=True):
        await lose(conn, task)


async def test_a_full_batch_goes_out_without_waiting_for_the_loop_turn() -> None:
    conn, transport = make(hello)
    task = await parked(conn)
    conn.data_received(GET * (WRITE_BATCH + 1))
    assert transport.written == [HELLO_RESPONSE] * WRITE_BATCH
    await asyncio.sleep(0)
    assert transport.written == [HELLO_RESPONSE] * (WRITE_BATCH + 1)
    await lose(conn, task)


@pytest.mark.parametrize("end", ["abort", "close", "graceful_close"])
async def test_a_deferred_response_goes_out_before_the_connection_ends(end: str) -> None:
    conn, transport = make(hello)
    task = await parked(conn)
    conn.data_received(GET)
    assert transport.written == []
    getattr(conn, end)()
    assert transport.written == [HELLO_RESPONSE]
    assert transport.closed or transport.eof_written
    conn.connection_lost(None)
    await asyncio.wait_for(asyncio.gather(task, return_exceptions=True), 1.0)


async def test_a_deferred_response_to_a_closed_transport_is_dropped() -> None:
    conn, transport = make(hello)
    task = await parked(conn)
    conn.data_received(GET)
    transport.closed = True  # the peer reset it meanwhile
    conn.connection_lost(ConnectionResetError())
    await asyncio.sleep(0)
    assert transport.written == []
    with pytest.raises(prefork.errors.PeerGone):
        await task


async def test_a_slow_handler_response_goes_out_at_once() -> None:
    conn, transport = make(hello, quick_s=0.0)  # every handler counts as slow
    task = await parked(conn)
    conn.data_received(GET)
    assert transport.written == [HELLO_RESPONSE]
    await lose(conn, task)


async def test_an_unbatched_response_goes_out_after_the_batch_before_it() -> None:
    conn, transport = make(hello)
    task = await parked(conn)
    conn.data_received(GET)  # batched
    assert transport.written == []
    conn.write_response(b"HEAD2", b"", keep_alive=True, batchable=False)
    assert transport.written == [HELLO_RESPONSE, b"HEAD2"]  # the batch, then its own
    await lose(conn, task)
