"""The WebSocket session and the ASGI websocket event rules, over a real socket pair.

The server side is ``serve_asgi_websocket`` (or a ``WebSocket``) on a small
``ConnectionLike`` over asyncio streams; the client is the ``websockets``
library's own asyncio client on the other socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.frames import Frame, Opcode

from prefork.apps.websocket import BUFFER_BYTES, Handshake, Options, WebSocket, WebSocketClosed
from prefork.apps.websocket_asgi import Outcome, WebSocketRequest, serve_asgi_websocket
from tests.unit.test_websocket_inbound import ScriptedPeer

NO_PINGS = Options(ping_interval=None, ping_timeout=None)


class StreamConnection:
    """A ``ConnectionLike`` over asyncio streams (what ``ctx.client`` offers)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.peername = None
        self.server_name = None
        self.drain_callback: Callable[[], None] | None = None

    async def read(self, n: int) -> bytes:
        return await self.reader.read(n)

    async def write(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    def send(self, data: bytes) -> None:
        if not self.lost:
            self.writer.write(data)

    @property
    def write_paused(self) -> bool:
        return self.writer.transport.get_write_buffer_size() > 64 * 1024

    @property
    def lost(self) -> bool:
        return self.writer.transport.is_closing()

    async def drain(self) -> None:
        await self.writer.drain()

    def close(self) -> None:
        self.writer.close()

    def abort(self) -> None:
        self.writer.transport.abort()

    def on_drain(self, callback: Callable[[], None] | None) -> None:
        self.drain_callback = callback


async def read_request(
    reader: asyncio.StreamReader,
) -> tuple[WebSocketRequest, bytes]:
    """Parse the client's handshake head the way the HTTP layer would (enough for tests)."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    method, target, version = lines[0].split(" ")
    headers = []
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers.append((name.strip().lower().encode(), value.strip().encode()))
    path, _, query = target.partition("?")
    req = WebSocketRequest(
        method=method,
        path=path,
        raw_path=path.encode(),
        query_string=query.encode(),
        headers=headers,
        client=("127.0.0.1", 1234),
        server=("127.0.0.1", 80),
        http_version=version.removeprefix("HTTP/"),
    )
    return req, b""


App = Callable[[Any, Any, Any], Awaitable[None]]


@asynccontextmanager
async def asgi_pair(
    app: App, opts: Options = NO_PINGS, path: str = "/chat?room=1", **client: Any
) -> AsyncIterator[tuple[ClientConnection, asyncio.Task[Outcome], StreamConnection]]:
    """Serve ``app`` on one end of a socket pair; a ``websockets`` client on the other."""
    server_sock, client_sock = socket.socketpair()
    reader, writer = await asyncio.open_connection(sock=server_sock)
    conn = StreamConnection(reader, writer)

    async def serve() -> Outcome:
        req, initial = await read_request(reader)
        return await serve_asgi_websocket(app, req, conn, opts, initial)

    task = asyncio.create_task(serve())
    try:
        async with connect(f"ws://test{path}", sock=client_sock, **client) as ws:
            yield ws, task, conn
    finally:
        await asyncio.wait_for(task, 10)


async def echo_app(scope: Any, receive: Any, send: Any) -> None:
    assert (await receive())["type"] == "websocket.connect"
    await send({"type": "websocket.accept"})
    while True:
        event = await receive()
        if event["type"] == "websocket.disconnect":
            return
        await send({"type": "websocket.send", **{k: event.get(k) for k in ("text", "bytes")}})


async def test_echo_text_and_bytes_then_disconnect_code() -> None:
    async with asgi_pair(echo_app) as (ws, task, _):
        await ws.send("héllo")
        assert await ws.recv() == "héllo"
        await ws.send(b"\x00\xff")
        assert await ws.recv() == b"\x00\xff"
        await ws.close(4000, "bye")
    assert await task == Outcome(101, 0)


async def test_scope_has_the_plain_inputs_and_the_http_response_extension() -> None:
    seen: dict[str, Any] = {}

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.update(scope)
        await receive()
        await send({"type": "websocket.accept", "subprotocol": "chat.v2"})
        seen["disconnect"] = await receive()

    async with asgi_pair(app, subprotocols=["chat.v1", "chat.v2"]) as (ws, _, _):
        assert ws.subprotocol == "chat.v2"
        await ws.close(4001, "done")
    assert seen["type"] == "websocket"
    assert seen["path"] == "/chat"
    assert seen["query_string"] == b"room=1"
    assert seen["scheme"] == "ws"
    assert seen["subprotocols"] == ["chat.v1", "chat.v2"]
    assert "websocket.http.response" in seen["extensions"]
    assert seen["asgi"] == {"version": "3.0", "spec_version": "2.4"}
    assert seen["disconnect"] == {"type": "websocket.disconnect", "code": 4001, "reason": "done"}


async def test_an_app_that_changes_its_scope_changes_no_other_sessions() -> None:
    """The scope's subprotocols and extensions are its own (a middleware may write them)."""
    scopes: list[Any] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        scopes.append(scope)
        scope["subprotocols"].append("added")
        scope["extensions"]["x.added"] = {}
        scope["extensions"]["websocket.http.response"]["x"] = 1
        await echo_app(scope, receive, send)

    for _ in range(2):
        async with asgi_pair(app) as (ws, _, _):
            await ws.send("x")
            assert await ws.recv() == "x"
    first, second = scopes
    assert second["subprotocols"] == ["added"]  # the second saw none before its own
    assert second["extensions"] == {"websocket.http.response": {"x": 1}, "x.added": {}}
    assert first["subprotocols"] is not second["subprotocols"]
    assert first["extensions"] is not second["extensions"]


async def test_accept_headers_reach_the_client() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.accept", "headers": [(b"x-token", b"abc")]})
        await receive()

    async with asgi_pair(app) as (ws, _, _):
        assert ws.response is not None
        assert ws.response.headers["x-token"] == "abc"


async def test_close_before_accept_answers_403() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.close", "code": 1008})

    with pytest.raises(InvalidStatus) as info:
        async with asgi_pair(app):
            pass
    assert info.value.response.status_code == 403


async def test_http_response_extension_denies_with_the_apps_response() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send(
            {
                "type": "websocket.http.response.start",
                "status": 401,
                "headers": [(b"www-authenticate", b"Bearer")],
            }
        )
        await send({"type": "websocket.http.response.body", "body": b"who ", "more_body": True})
        await send({"type": "websocket.http.response.body", "body": b"are you?"})

    with pytest.raises(InvalidStatus) as info:
        async with asgi_pair(app):
            pass
    response = info.value.response
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert response.body == b"who are you?"


@pytest.mark.parametrize("raise_it", [True, False])
async def test_app_that_ends_before_answering_gets_500(raise_it: bool) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        if raise_it:
            raise ValueError("boom")

    with pytest.raises(InvalidStatus) as info:
        async with asgi_pair(app):
            pass
    assert info.value.response.status_code == 500


async def test_app_that_raises_after_accept_closes_with_1011() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        raise ValueError("boom")

    async with asgi_pair(app) as (ws, _task, _):
        with pytest.raises(ConnectionClosed) as info:
            await ws.recv()
        assert info.value.rcvd is not None
        assert info.value.rcvd.code == 1011


async def test_app_close_code_and_reason_reach_the_client_and_send_then_raises() -> None:
    raised: list[BaseException] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.close", "code": 4321, "reason": "policy"})
        event = await receive()
        assert event == {"type": "websocket.disconnect", "code": 4321, "reason": "policy"}
        try:
            await send({"type": "websocket.send", "text": "late"})
        except OSError as exc:
            raised.append(exc)

    async with asgi_pair(app) as (ws, task, _):
        with pytest.raises(ConnectionClosed) as info:
            await ws.recv()
        assert info.value.rcvd is not None
        assert (info.value.rcvd.code, info.value.rcvd.reason) == (4321, "policy")
    await task
    assert raised
    assert isinstance(raised[0], WebSocketClosed)


async def test_bad_handshake_answers_400_without_calling_the_app() -> None:
    called = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        called.append(scope)

    server_sock, client_sock = socket.socketpair()
    reader, writer = await asyncio.open_connection(sock=server_sock)
    conn = StreamConnection(reader, writer)
    req = WebSocketRequest(
        "GET",
        "/",
        b"/",
        b"",
        [(b"upgrade", b"websocket"), (b"connection", b"upgrade")],
        None,
        None,
    )
    outcome = await serve_asgi_websocket(app, req, conn, NO_PINGS)
    client_sock.settimeout(5)
    reply = client_sock.recv(4096)
    client_sock.close()
    assert outcome.status == 400
    assert reply.startswith(b"HTTP/1.1 400 ")
    assert b"Sec-WebSocket-Key" in reply
    assert called == []


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ([(b"connection", b"upgrade")], 426),  # no Upgrade: websocket
        ([(b"upgrade", b"websocket"), (b"connection", b"keep-alive")], 426),
    ],
)
def test_handshake_without_upgrade_is_426(headers: list[tuple[bytes, bytes]], status: int) -> None:
    pairs = [(n.decode(), v.decode()) for n, v in headers]
    assert Handshake("GET", "/", pairs, NO_PINGS).response.status_code == status


def test_handshake_with_wrong_method_is_405() -> None:
    pairs = [
        ("upgrade", "websocket"),
        ("connection", "upgrade"),
        ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ("sec-websocket-version", "13"),
    ]
    assert Handshake("GET", "/", pairs, NO_PINGS).ok
    assert Handshake("POST", "/", pairs, NO_PINGS).response.status_code == 405
    wrong_version = [*pairs[:3], ("sec-websocket-version", "8")]
    assert Handshake("GET", "/", wrong_version, NO_PINGS).response.status_code == 400


async def test_message_over_max_size_closes_with_1009() -> None:
    opts = Options(max_message_size=1000, ping_interval=None, ping_timeout=None)
    async with asgi_pair(echo_app, opts, max_size=None) as (ws, _, _):
        await ws.send("x" * 1000)
        assert await ws.recv() == "x" * 1000
        await ws.send("x" * 1001)
        with pytest.raises(ConnectionClosed) as info:
            await ws.recv()
        assert info.value.rcvd is not None
        assert info.value.rcvd.code == 1009


async def test_invalid_utf8_in_a_fragment_closes_with_1007() -> None:
    async with asgi_pair(echo_app) as (ws, _, _):
        # The first fragment of a text message is not UTF-8: the server fails
        # the connection at once, without waiting for the last fragment.
        frame = Frame(Opcode.TEXT, b"ok\xff\xfe", fin=False)
        ws.transport.write(frame.serialize(mask=True, extensions=[]))
        with pytest.raises(ConnectionClosed) as info:
            await asyncio.wait_for(ws.recv(), 5)
        assert info.value.rcvd is not None
        assert info.value.rcvd.code == 1007


async def test_drain_hook_closes_with_1001() -> None:
    async with asgi_pair(echo_app) as (ws, _, conn):
        await ws.send("before")
        assert await ws.recv() == "before"
        assert conn.drain_callback is not None
        conn.drain_callback()
        with pytest.raises(ConnectionClosed) as info:
            await asyncio.wait_for(ws.recv(), 5)
        assert info.value.rcvd is not None
        assert info.value.rcvd.code == 1001


async def test_native_session_receive_raises_once_closed() -> None:
    server_sock, client_sock = socket.socketpair()
    reader, writer = await asyncio.open_connection(sock=server_sock)
    conn = StreamConnection(reader, writer)
    got: list[Any] = []

    async def serve() -> None:
        req, _ = await read_request(reader)
        pairs = [(n.decode(), v.decode()) for n, v in req.headers]
        session = WebSocket(conn, Handshake("GET", "/", pairs, NO_PINGS), NO_PINGS)
        await session.accept()
        async for message in session:
            got.append(message)
        got.append(session.close_code)
        with pytest.raises(WebSocketClosed):
            await session.receive()

    task = asyncio.create_task(serve())
    async with connect("ws://test/", sock=client_sock) as ws:
        await ws.send("one")
        await ws.send(b"two")
    await asyncio.wait_for(task, 10)
    assert got == ["one", b"two", 1000]


async def test_native_session_sends_mutable_buffers_as_they_were_at_the_send() -> None:
    """A bytearray or memoryview goes as a binary message of its bytes at the time
    of the send (copied: the frame cache keys by identity); changing the buffer
    afterwards, then sending it again, sends the new bytes."""
    server_sock, client_sock = socket.socketpair()
    reader, writer = await asyncio.open_connection(sock=server_sock)
    conn = StreamConnection(reader, writer)

    async def serve() -> None:
        req, _ = await read_request(reader)
        pairs = [(n.decode(), v.decode()) for n, v in req.headers]
        session = WebSocket(conn, Handshake("GET", "/", pairs, NO_PINGS), NO_PINGS)
        await session.accept()
        buffer = bytearray(b"abc")
        await session.send(buffer)
        buffer[0] = ord("x")
        await session.send(buffer)
        await session.send(memoryview(b"0123456789")[2:5])
        await session.close()

    task = asyncio.create_task(serve())
    async with connect("ws://test/", sock=client_sock) as ws:
        got = [await ws.recv() for _ in range(3)]
    await asyncio.wait_for(task, 10)
    assert got == [b"abc", b"xbc", b"234"]


async def test_idle_sessions_share_the_ping_timer_and_a_closed_one_is_let_go() -> None:
    """Three idle sessions are pinged on the loop's one ping timer, and keep being
    pinged (each pong re-arms the next); a closed session is not kept by it."""
    pings = Options(ping_interval=0.1, ping_timeout=2.0)
    gc.collect()
    alive_before = _live_sessions()
    sent: list[int] = []

    async def serve(server_sock: socket.socket) -> None:
        reader, writer = await asyncio.open_connection(sock=server_sock)
        conn = StreamConnection(reader, writer)
        req, _ = await read_request(reader)
        pairs = [(n.decode(), v.decode()) for n, v in req.headers]
        session = WebSocket(conn, Handshake("GET", "/", pairs, pings), pings)
        await session.accept()
        after_101 = session.bytes_sent
        async for _ in session:
            pass
        sent.append(session.bytes_sent - after_101)

    pairs = [socket.socketpair() for _ in range(3)]
    tasks = [asyncio.create_task(serve(server)) for server, _ in pairs]
    clients = [await connect("ws://test/", sock=client, ping_interval=None) for _, client in pairs]
    await asyncio.sleep(0.8)  # ~7 intervals of silence from the clients
    for ws in clients:
        assert ws.state.name == "OPEN"
        await ws.close()
    await asyncio.wait_for(asyncio.gather(*tasks), 10)
    # A ping frame is 6 bytes (4 of payload) and a close frame 4; at least
    # three pings each means the timer was re-armed after every pong.
    assert all(n >= 3 * 6 for n in sent), sent
    del tasks
    gc.collect()
    assert _live_sessions() == alive_before


def _live_sessions() -> int:
    return sum(isinstance(o, WebSocket) for o in gc.get_objects())


async def test_one_object_broadcast_to_plain_and_compressed_sessions() -> None:
    """The same str (and bytes) object sent to sessions with and without
    permessage-deflate: the frame kept for the plain ones never reaches a
    compressed one, and a different object of the same length is framed anew."""
    deflate = Options(ping_interval=None, ping_timeout=None, per_message_deflate=True)
    subscribers: list[Any] = []
    ready = asyncio.Event()
    stop = asyncio.Event()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        subscribers.append(send)
        if len(subscribers) == 4:
            ready.set()
        await stop.wait()

    async with contextlib.AsyncExitStack() as stack:
        clients = []
        for compression in ("deflate", None, "deflate", None):
            ws, _, _ = await stack.enter_async_context(
                asgi_pair(app, deflate, compression=compression)
            )
            clients.append(ws)
        await asyncio.wait_for(ready.wait(), 5)
        negotiated = [
            ws.response is not None and "sec-websocket-extensions" in ws.response.headers
            for ws in clients
        ]
        assert negotiated == [True, False, True, False]
        text = "tick " * 20
        data = bytes(range(200))
        for message in (
            {"type": "websocket.send", "text": text},
            {"type": "websocket.send", "text": text},  # the same object again
            {"type": "websocket.send", "text": "tock " * 20},  # same length, other bytes
            {"type": "websocket.send", "bytes": data},
        ):
            for send in subscribers:
                await send(message)
        for ws in clients:
            got = [await asyncio.wait_for(ws.recv(), 5) for _ in range(4)]
            assert got == [text, text, "tock " * 20, data]
        stop.set()  # the app returns: each session is closed with 1000
        for ws in clients:
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(ws.recv(), 5)


def test_handshake_with_a_body_is_400() -> None:
    pairs = [
        ("upgrade", "websocket"),
        ("connection", "upgrade"),
        ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ("sec-websocket-version", "13"),
    ]
    assert Handshake("GET", "/", [*pairs, ("content-length", "0")], NO_PINGS).ok
    for extra in (("content-length", "5"), ("transfer-encoding", "chunked")):
        handshake = Handshake("GET", "/", [*pairs, extra], NO_PINGS)
        assert handshake.response.status_code == 400
        with pytest.raises(ValueError, match="rejected handshake"):
            WebSocket(StreamConnection.__new__(StreamConnection), handshake, NO_PINGS)


async def test_an_idle_session_keeps_nothing_of_its_handshake() -> None:
    """Open sessions hold no handshake objects (the request, its fields, the
    101 response, a ServerProtocol of their own) and no per-session lock."""
    from websockets.datastructures import Headers
    from websockets.http11 import Request, Response
    from websockets.server import ServerProtocol

    kinds = (Headers, Request, Response, ServerProtocol, asyncio.Lock)
    opened = asyncio.Event()
    stop = asyncio.Event()
    count = [0]

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        count[0] += 1
        if count[0] == 10:
            opened.set()
        await stop.wait()

    def alive() -> dict[str, int]:
        gc.collect()
        found = dict.fromkeys((k.__name__ for k in kinds), 0)
        for obj in gc.get_objects():
            for kind in kinds:
                if isinstance(obj, kind):
                    found[kind.__name__] += 1
        return found

    async with contextlib.AsyncExitStack() as stack:
        clients = [
            (await stack.enter_async_context(asgi_pair(app, compression=None)))[0]
            for _ in range(10)
        ]
        await asyncio.wait_for(opened.wait(), 5)
        before = alive()
        # The clients' own handshake objects are theirs: count the server's
        # by opening ten more and comparing.
        more = [
            (await stack.enter_async_context(asgi_pair(app, compression=None)))[0]
            for _ in range(10)
        ]
        for _ in range(50):  # bounded: the last accepts
            if count[0] == 20:
                break
            await asyncio.sleep(0.01)
        after = alive()
        # Each client keeps its request and the 101 it got (Request, Response,
        # 2 Headers); the server side adds nothing per session.
        per_client = {"Headers": 2, "Request": 1, "Response": 1}
        assert {k: after[k] - before[k] for k in after} == {
            k: 10 * per_client.get(k, 0) for k in after
        }
        stop.set()
        for ws in [*clients, *more]:
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(ws.recv(), 5)


# -- how the app is run (websocket_run.AppRun) ---------------------------------


def raises_at_once(scope: Any, receive: Any, send: Any) -> Awaitable[None]:
    raise ValueError("boom before any await")


async def test_an_app_that_raises_when_called_gets_500() -> None:
    with pytest.raises(InvalidStatus) as info:
        async with asgi_pair(raises_at_once):
            pass
    assert info.value.response.status_code == 500


async def test_an_app_returning_another_awaitable_is_awaited_to_its_end() -> None:
    ended: list[bool] = []

    async def body(scope: Any, receive: Any, send: Any) -> None:
        await echo_app(scope, receive, send)
        ended.append(True)

    def app(scope: Any, receive: Any, send: Any) -> Awaitable[None]:
        return asyncio.ensure_future(body(scope, receive, send))  # a Task, not a coroutine

    async with asgi_pair(app) as (ws, task, _):
        await ws.send("through a task")
        assert await ws.recv() == "through a task"
        await ws.close()
    assert await task == Outcome(101, 0)
    assert ended == [True]


async def test_a_cancelled_session_cancels_the_app_and_is_not_closed_as_its_error() -> None:
    cleaned: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        try:
            await receive()
        finally:
            cleaned.append("finally")

    server_sock, client_sock = socket.socketpair()
    reader, writer = await asyncio.open_connection(sock=server_sock)
    conn = StreamConnection(reader, writer)

    async def serve() -> Outcome:
        req, initial = await read_request(reader)
        return await serve_asgi_websocket(app, req, conn, NO_PINGS, initial)

    task = asyncio.create_task(serve())
    async with connect("ws://test/chat", sock=client_sock, close_timeout=0.5) as ws:
        await asyncio.sleep(0.05)  # the app waits in receive()
        assert not task.done()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert cleaned == ["finally"]
        # A cancellation is no app error: no 1011 close frame was sent.
        assert conn.writer.transport.get_write_buffer_size() == 0
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(ws.recv(), 0.2)
    writer.close()


def _client_frame(opcode: Opcode, data: bytes) -> bytes:
    return Frame(opcode, data).serialize(mask=True)


class _TalkingPeer(ScriptedPeer):
    """A ``ConnectionLike`` whose peer sends 1 KiB messages as fast as they are
    read and never answers a ping; it counts the reads."""

    def __init__(self) -> None:
        super().__init__([])
        self.reads = 0
        self.talking = True

    async def read(self, n: int) -> bytes:
        self.reads += 1
        await asyncio.sleep(0)
        return _client_frame(Opcode.BINARY, b"m" * 1024) if self.talking else b""


async def test_a_peer_that_sends_counts_as_alive_and_is_read_ahead_only_so_far() -> None:
    """The pinger reads while it waits for its pong; once the messages the app
    has not received reach BUFFER_BYTES the peer counts as alive (no 1011) and
    reading stops."""
    opts = Options(ping_interval=0.05, ping_timeout=0.2, per_message_deflate=False)
    conn = _TalkingPeer()
    pairs = [
        ("host", "test"),
        ("upgrade", "websocket"),
        ("connection", "upgrade"),
        ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ("sec-websocket-version", "13"),
    ]
    session = WebSocket(conn, Handshake("GET", "/", pairs, opts), opts)
    await session.accept()
    await asyncio.sleep(0.6)  # several intervals, past a timeout
    assert not session.closed
    assert not conn.closed
    assert BUFFER_BYTES // 1024 <= conn.reads <= BUFFER_BYTES // 1024 + 1
    assert await session.receive() == b"m" * 1024
    conn.talking = False  # then the end of the stream: the close ends at once
    await session.close()
    assert session.closed
