"""Reading a PROXY protocol header off an accepted socket, before TLS and HTTP."""

from __future__ import annotations

import asyncio
import socket

from prefork.http.proxy_protocol import ProxyHeaderError, Source, parse

# Bytes looked at per peek: a v1 line or a v2 header with its usual TLVs.
_PEEK_BYTES = 4096
# While a header is incomplete the socket stays readable (the bytes are only
# peeked at), so the next look waits this long instead of spinning.
_INCOMPLETE_WAIT_S = 0.01


async def _readable(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> None:
    fut: asyncio.Future[None] = loop.create_future()
    fd = sock.fileno()

    def ready() -> None:
        if not fut.done():
            fut.set_result(None)

    loop.add_reader(fd, ready)
    try:
        await fut
    finally:
        loop.remove_reader(fd)


async def read_proxy_header(sock: socket.socket, timeout: float) -> Source:  # noqa: ASYNC109
    """The source address the header names (None: keep the peer's); consumes only the header.

    Raises ProxyHeaderError (no valid header: the caller closes the connection)
    or TimeoutError (not complete within ``timeout``).
    """
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(timeout):
        seen = -1
        while True:
            await _readable(loop, sock)
            try:
                data = sock.recv(_PEEK_BYTES, socket.MSG_PEEK)
            except (BlockingIOError, InterruptedError):
                continue
            if not data:
                raise ProxyHeaderError("connection closed before a PROXY protocol header")
            result = parse(data)
            if result is not None:
                length, source = result
                got = 0
                while got < length:  # the bytes are in the socket's buffer already
                    got += len(sock.recv(length - got))
                return source
            if len(data) >= _PEEK_BYTES and len(data) == seen:
                raise ProxyHeaderError("PROXY protocol header too long")
            seen = len(data)
            await asyncio.sleep(_INCOMPLETE_WAIT_S)
