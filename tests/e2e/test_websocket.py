"""WebSockets end to end: a native handler echo server, the ``websockets`` client, real sockets."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import signal
import socket
import ssl
import time
from pathlib import Path

import psutil
import pytest
import trustme
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed
from websockets.frames import Frame, Opcode

from tests.e2e.conftest import ServerProcess, StartServer
from tests.e2e.helpers import http_exchange

pytestmark = pytest.mark.e2e

APP = """
from prefork.apps.websocket import HandshakeRejected


async def handle(method, path, args, headers, body, ctx):
    if "upgrade" not in headers:
        return "plain", 200, {}
    offered = [p.strip() for p in headers.get("sec-websocket-protocol", "").split(",")]
    try:
        ws = await ctx.accept_websocket(
            {"x-extra": "yes"}, subprotocol="chat" if "chat" in offered else None
        )
    except HandshakeRejected as exc:
        return exc.result
    async for message in ws:
        if isinstance(message, str) and message.startswith("close:"):
            await ws.close(int(message[6:]), "asked")
            break
        await ws.send(message)
    return None, None, None
"""


def serve(start_server: StartServer, tmp_path: Path, *args: str, **config: object) -> ServerProcess:
    lines = [f"{key} = {value!r}".replace("'", '"') for key, value in config.items()]
    (tmp_path / "ws.toml").write_text("\n".join(lines) + "\n")
    return start_server(APP, "-w", "1", "-c", "ws.toml", *args)


async def test_echo_subprotocol_extra_header_and_access_log(
    start_server: StartServer, tmp_path: Path
) -> None:
    server = serve(start_server, tmp_path)
    async with connect(f"ws://127.0.0.1:{server.port}/ws", subprotocols=["chat"]) as ws:
        assert ws.subprotocol == "chat"
        assert ws.response is not None
        assert ws.response.headers["x-extra"] == "yes"
        assert "permessage-deflate" in ws.response.headers["sec-websocket-extensions"]
        await ws.send("héllo")
        assert await ws.recv() == "héllo"
        await ws.send(b"\x00" * 100_000)
        assert await ws.recv() == b"\x00" * 100_000
    server.wait_log(r'"GET /ws HTTP/1\.1" 101 ')


async def test_close_codes_both_ways(start_server: StartServer, tmp_path: Path) -> None:
    server = serve(start_server, tmp_path)
    url = f"ws://127.0.0.1:{server.port}/"
    async with connect(url) as ws:
        await ws.send("close:4001")
        with pytest.raises(ConnectionClosed) as info:
            await asyncio.wait_for(ws.recv(), 5)
        assert info.value.rcvd is not None
        assert (info.value.rcvd.code, info.value.rcvd.reason) == (4001, "asked")
    async with connect(url) as ws:
        await ws.close(4002, "client")
        assert ws.close_code == 4002  # the server echoed the client's code


def test_bad_handshakes_get_400_and_426(start_server: StartServer, tmp_path: Path) -> None:
    server = serve(start_server, tmp_path)
    no_key = (
        b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Version: 13\r\n\r\n"
    )
    reply = http_exchange(server.port, no_key)
    assert reply.startswith(b"HTTP/1.1 400 "), reply
    assert b"Sec-WebSocket-Key" in reply
    bad_version = no_key.replace(
        b"\r\n\r\n", b"\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    )
    reply = http_exchange(server.port, bad_version.replace(b"Version: 13", b"Version: 8"))
    assert reply.startswith(b"HTTP/1.1 400 "), reply
    reply = http_exchange(server.port, bad_version.replace(b"Upgrade: websocket", b"Upgrade: h2c"))
    assert reply.startswith(b"HTTP/1.1 426 "), reply


async def test_message_over_ws_max_message_size_closes_with_1009(
    start_server: StartServer, tmp_path: Path
) -> None:
    server = serve(start_server, tmp_path, ws_max_message_size=4096)
    async with connect(f"ws://127.0.0.1:{server.port}/", max_size=None) as ws:
        await ws.send("x" * 4096)
        assert await ws.recv() == "x" * 4096
        await ws.send("x" * 4097)
        with pytest.raises(ConnectionClosed) as info:
            await asyncio.wait_for(ws.recv(), 5)
        assert info.value.rcvd is not None
        assert info.value.rcvd.code == 1009


def _raw_handshake(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    key = base64.b64encode(os.urandom(16))
    sock.sendall(
        b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: " + key + b"\r\n\r\n"
    )
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(4096)
        assert chunk, head
        head += chunk
    assert head.startswith(b"HTTP/1.1 101 "), head
    return sock


def test_peer_that_does_not_answer_pings_is_closed(
    start_server: StartServer, tmp_path: Path
) -> None:
    server = serve(start_server, tmp_path, ws_ping_interval=0.3, ws_ping_timeout=0.3)
    sock = _raw_handshake(server.port)
    started = time.monotonic()
    received = b""
    try:
        while True:  # pings (opcode 0x9), then a close frame (0x8) with 1011, then EOF
            chunk = sock.recv(4096)
            if not chunk:
                break
            received += chunk
    except ConnectionResetError:
        pass
    finally:
        sock.close()
    assert time.monotonic() - started < 8
    assert received[:1] == b"\x89"  # a ping came first
    assert b"\x88" in received
    assert (1011).to_bytes(2, "big") in received


async def test_peer_that_answers_pings_stays_open(
    start_server: StartServer, tmp_path: Path
) -> None:
    server = serve(start_server, tmp_path, ws_ping_interval=0.2, ws_ping_timeout=0.2)
    async with connect(f"ws://127.0.0.1:{server.port}/", ping_interval=None) as ws:
        await asyncio.sleep(1.5)  # several pings answered by the client library
        await ws.send("still here")
        assert await asyncio.wait_for(ws.recv(), 5) == "still here"


async def test_graceful_stop_closes_with_1001_promptly(
    start_server: StartServer, tmp_path: Path
) -> None:
    server = serve(start_server, tmp_path, graceful_timeout=20)
    async with connect(f"ws://127.0.0.1:{server.port}/") as ws:
        await ws.send("hi")
        assert await ws.recv() == "hi"
        started = time.monotonic()
        os.killpg(server.pid, signal.SIGTERM)
        with pytest.raises(ConnectionClosed) as info:
            await asyncio.wait_for(ws.recv(), 10)
        assert info.value.rcvd is not None
        assert info.value.rcvd.code == 1001
    await asyncio.to_thread(server.proc.wait, 15)
    # Well before graceful_timeout: the session closed, the worker left.
    assert time.monotonic() - started < 10


async def test_wss_with_a_trusted_certificate(start_server: StartServer, tmp_path: Path) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("localhost", "127.0.0.1")
    cert.private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "server.pem"))
    cert.private_key_pem.write_to_path(str(tmp_path / "key.pem"))
    (tmp_path / "ws.toml").write_text("")
    server = start_server(APP, "-w", "1", "--certfile", "server.pem", "--keyfile", "key.pem")
    assert server.scheme == "https"
    context = ssl.create_default_context()
    ca.configure_trust(context)
    async with connect(f"wss://127.0.0.1:{server.port}/", ssl=context) as ws:
        await ws.send("secure")
        assert await ws.recv() == "secure"


def test_plain_request_is_still_http(start_server: StartServer, tmp_path: Path) -> None:
    server = serve(start_server, tmp_path)
    reply = http_exchange(server.port, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 200 ")
    assert reply.endswith(b"plain")


SLOW_APP = """
import asyncio
import contextlib


async def handle(method, path, args, headers, body, ctx):
    ws = await ctx.accept_websocket()
    if path == "/slow-reader":  # reads nothing for a while, then one message
        await asyncio.sleep(4)
        await ws.send(str(len(await ws.receive())))
    else:  # /fast-sender: sends 64 MiB; send() waits for the client
        sent = 0
        try:
            for _ in range(64):
                await ws.send(b"x" * (1 << 20))
                sent += 1
        except OSError:
            pass
        ctx.logger.warning("sent %d MiB", sent)
    return None, None, None
"""


def _worker_rss(server: ServerProcess) -> int:
    (worker,) = psutil.Process(server.pid).children()
    return int(worker.memory_info().rss)


async def test_flow_control_both_ways_keeps_the_worker_small(
    start_server: StartServer, tmp_path: Path
) -> None:
    (tmp_path / "ws.toml").write_text("ws_per_message_deflate = false\nws_ping_interval = 0\n")
    server = start_server(SLOW_APP, "-w", "1", "-c", "ws.toml")
    url = f"ws://127.0.0.1:{server.port}"
    before = _worker_rss(server)
    # A client floods an app that does not read: its sends stall (the server
    # stopped reading), and the worker does not buffer the flood.
    async with connect(url + "/slow-reader", max_size=None, compression=None) as ws:

        async def flood() -> None:
            for _ in range(64):
                await ws.send(b"y" * (1 << 20))

        with pytest.raises(TimeoutError):
            await asyncio.wait_for(flood(), 2)
        assert _worker_rss(server) - before < 24 << 20
    # An app sends 64 MiB to a client that does not read: its send() waits.
    async with connect(url + "/fast-sender", max_size=None, compression=None) as ws:
        await asyncio.sleep(2)
        assert _worker_rss(server) - before < 24 << 20
        assert "sent " not in server.log()  # still waiting in send()
        received = 0
        while received < 64:
            assert len(await asyncio.wait_for(ws.recv(), 10)) == 1 << 20
            received += 1
    server.wait_log("sent 64 MiB")


def test_handler_that_raises_after_accepting_cuts_the_connection(
    start_server: StartServer, tmp_path: Path
) -> None:
    app = """
async def handle(method, path, args, headers, body, ctx):
    ws = await ctx.accept_websocket()
    await ws.receive()
    raise RuntimeError("boom")
"""
    server = start_server(app, "-w", "1")
    sock = _raw_handshake(server.port)
    sock.sendall(Frame(Opcode.TEXT, b"go").serialize(mask=True, extensions=[]))
    received = b""
    try:
        while chunk := sock.recv(4096):
            received += chunk
    except ConnectionResetError:
        pass
    finally:
        sock.close()
    assert b"HTTP/1.1 500" not in received  # no HTTP response inside the WebSocket stream
    server.wait_log("handler raised on GET /")


async def test_reload_closes_with_1001_and_new_workers_serve(
    start_server: StartServer, tmp_path: Path
) -> None:
    server = serve(start_server, tmp_path, graceful_timeout=20)
    url = f"ws://127.0.0.1:{server.port}/"
    async with connect(url) as ws:
        assert await ws.ping() is not None
        os.kill(server.pid, signal.SIGHUP)
        with pytest.raises(ConnectionClosed) as info:
            await asyncio.wait_for(ws.recv(), 10)
        assert info.value.rcvd is not None
        assert info.value.rcvd.code == 1001
    async with connect(url) as ws:  # the client reconnects to the new generation
        await ws.send("again")
        assert await asyncio.wait_for(ws.recv(), 5) == "again"


def test_send_to_a_client_that_left_ends_the_session_quietly(
    start_server: StartServer, tmp_path: Path
) -> None:
    app = """
import asyncio
import contextlib


async def handle(method, path, args, headers, body, ctx):
    ws = await ctx.accept_websocket()
    await ws.receive()
    await asyncio.sleep(0.5)  # meanwhile the client closed
    await ws.send("too late")  # raises WebSocketClosed
    return None, None, None
"""
    server = start_server(app, "-w", "1")
    sock = _raw_handshake(server.port)
    sock.sendall(Frame(Opcode.TEXT, b"hi").serialize(mask=True, extensions=[]))
    sock.sendall(Frame(Opcode.CLOSE, (1000).to_bytes(2, "big")).serialize(mask=True, extensions=[]))
    with contextlib.suppress(ConnectionResetError):
        while sock.recv(4096):
            pass
    sock.close()
    server.wait_log(r'"GET / HTTP/1\.1" 101 ')  # the session is logged as usual ...
    assert "handler raised" not in server.log()  # ... and is no app error


async def test_handler_that_returns_without_closing_closes_with_1000(
    start_server: StartServer, tmp_path: Path
) -> None:
    app = """
async def handle(method, path, args, headers, body, ctx):
    ws = await ctx.accept_websocket()
    await ws.send(await ws.receive())
    return None, None, None
"""
    server = start_server(app, "-w", "1")
    async with connect(f"ws://127.0.0.1:{server.port}/") as ws:
        await ws.send("once")
        assert await ws.recv() == "once"
        with pytest.raises(ConnectionClosed) as info:
            await asyncio.wait_for(ws.recv(), 5)
        assert info.value.rcvd is not None
        assert info.value.rcvd.code == 1000
    server.wait_log(r'"GET / HTTP/1\.1" 101 \d+')
