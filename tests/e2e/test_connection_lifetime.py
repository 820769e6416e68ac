"""A finished connection is freed by reference counting alone, over a real socket.

Everything a connection owns (the Connection, its reader and buffers, the
uvloop transport, the handler's ``ctx``) must go when the connection ends,
without waiting for the cyclic garbage collector: a reference cycle there put
every connection's objects on the GC's lists, and under `Connection: close`
load the collector took about 5 % of a worker's CPU (measured with perf).
Each case runs with the cyclic GC off and counts the live objects of those
types (gc.get_objects) once the connection's coroutine returned.

The connection is a real one (a listening socket and a client on 127.0.0.1,
served by serve_connection on a uvloop loop in this process), hence tests/e2e.
"""

from __future__ import annotations

import asyncio
import gc
import socket
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import uvloop

from prefork.apps.handler import Context
from prefork.apps.native import NativeApp
from prefork.config import Config
from prefork.engine.connection import Connection
from prefork.engine.serve import serve_connection
from prefork.engine.shared import Shared

pytestmark = pytest.mark.e2e


@pytest.fixture
def no_cyclic_gc() -> Iterator[None]:
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def alive() -> dict[str, int]:
    """Live connection objects, by kind (the cyclic GC is off: only refcounts free them)."""
    counts = {"Connection": 0, "Context": 0, "transport": 0}
    for obj in gc.get_objects():
        if isinstance(obj, Connection):
            counts["Connection"] += 1
        elif isinstance(obj, Context):
            counts["Context"] += 1
        elif type(obj).__name__ == "TCPTransport":
            counts["transport"] += 1
    return counts


NONE_ALIVE = {"Connection": 0, "Context": 0, "transport": 0}


def serve_one(handler: Callable[..., Any], request: bytes, *, close_first: bool = False) -> bytes:
    """Run one real connection through serve_connection on a uvloop loop; the reply bytes."""

    async def main() -> bytes:
        loop = asyncio.get_running_loop()
        state = Shared(Config.build({"log_level": "error"}), NativeApp(handler))
        state.start()
        with socket.socket() as listener:
            listener.bind(("127.0.0.1", 0))
            listener.listen()
            client = socket.create_connection(listener.getsockname())
            client.setblocking(False)
            accepted, addr = listener.accept()
            task = loop.create_task(serve_connection(accepted, state, addr))
            del accepted
            await loop.sock_sendall(client, request)
            if close_first:
                client.shutdown(socket.SHUT_WR)
            reply = b""
            while chunk := await asyncio.wait_for(loop.sock_recv(client, 65536), 5):
                reply += chunk
                if close_first and reply.endswith(b"\r\n\r\n" + b"ok"):
                    break
            client.close()
            await asyncio.wait_for(task, 5)
        assert not state.connections
        return reply

    return uvloop.run(main())


def test_connection_close_request_frees_everything(no_cyclic_gc: None) -> None:
    assert alive() == NONE_ALIVE
    seen: list[str] = []

    def handler(method: str, query: str, args: Any, headers: Any, body: bytes, ctx: Any) -> Any:
        seen.append(type(ctx.client).__name__)
        return b"ok", 200, {"content-type": "text/plain"}

    reply = serve_one(handler, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 200 OK")
    assert reply.endswith(b"ok")
    assert seen == ["Connection"]
    assert alive() == NONE_ALIVE


def test_keep_alive_connection_closed_by_the_client_frees_everything(no_cyclic_gc: None) -> None:
    seen: list[str] = []

    def handler(method: str, query: str, args: Any, headers: Any, body: bytes, ctx: Any) -> Any:
        seen.append(type(ctx.client).__name__)
        return b"ok", 200, {"content-type": "text/plain"}

    reply = serve_one(handler, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", close_first=True)
    assert reply.startswith(b"HTTP/1.1 200 OK")
    assert seen == ["Connection"]
    assert alive() == NONE_ALIVE


def test_async_handler_connection_frees_everything(no_cyclic_gc: None) -> None:
    seen: list[str] = []

    async def handler(
        method: str, query: str, args: Any, headers: Any, body: bytes, ctx: Any
    ) -> Any:
        seen.append(type(ctx.client).__name__)
        await asyncio.sleep(0)
        return b"ok", 200, {"content-type": "text/plain"}

    reply = serve_one(handler, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 200 OK")
    assert seen == ["Connection"]
    assert alive() == NONE_ALIVE
