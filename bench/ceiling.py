"""The design's ceiling: the least a coroutine-per-connection uvloop + httptools server does.

An ``asyncio.Protocol`` feeds llhttp and wakes the connection's coroutine only
when a whole request is there; the coroutine answers ``GET /hello`` with the
same 13 bytes as the benchmark apps (Date formatted once a second, one
``transport.write`` per response) and closes when the request asks for it.
No limits, timeouts, logging or error handling: prefork's S1 divided by this
server's S1 says how much of the possible speed the engine keeps.

    python bench/ceiling.py --port 8000
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import email.utils
import time

import httptools
import uvloop

HELLO = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 13\r\ndate: "
NOT_FOUND = b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\ndate: "
_date = [0, b""]


def date_header() -> bytes:
    now = int(time.time())
    if now != _date[0]:
        _date[:] = [now, email.utils.formatdate(now, usegmt=True).encode()]
    return _date[1]


class Connection(asyncio.Protocol):
    def __init__(self) -> None:
        self.parser = httptools.HttpRequestParser(self)
        self.requests: collections.deque[tuple[bytes, bool]] = collections.deque()
        self.waiter: asyncio.Future[None] | None = None
        self.url = b""
        self.closed = False

    def connection_made(self, transport) -> None:
        self.transport = transport
        asyncio.get_running_loop().create_task(self.serve())

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.transport.close()

    def on_url(self, url: bytes) -> None:
        self.url = url

    def on_message_complete(self) -> None:
        self.requests.append((self.url, self.parser.should_keep_alive()))
        self._wake()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._wake()

    def _wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    async def serve(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while not self.requests:
                if self.closed:
                    return
                self.waiter = loop.create_future()
                await self.waiter
            url, keep_alive = self.requests.popleft()
            # The path, whatever the query (the varied-heads scenarios send one).
            hello = url == b"/hello" or url.startswith(b"/hello?")
            head = HELLO if hello else NOT_FOUND
            tail = b"\r\n\r\nHello, World!" if head is HELLO else b"\r\n\r\n"
            if keep_alive:
                self.transport.write(b"".join((head, date_header(), tail)))
            else:
                self.transport.write(
                    b"".join((head, date_header(), b"\r\nconnection: close", tail))
                )
                self.transport.close()
                return


async def main(host: str, port: int) -> None:
    server = await asyncio.get_running_loop().create_server(
        Connection, host, port, backlog=4096, reuse_address=True
    )
    print(f"listening on http://{host}:{port}", flush=True)
    await server.serve_forever()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    ns = parser.parse_args()
    uvloop.run(main(ns.host, ns.port))
