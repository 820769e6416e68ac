"""Per-message Python cost of prefork's WebSocket path, without sockets.

    python bench/ws_micro.py              # echo and broadcast, best of 5 rounds
    python bench/ws_micro.py -n 20000     # messages per round (echo; broadcasts: n / 1000)

The ASGI app of ``ws_bench.py`` (``bench/apps/ws_app.py``) runs behind
``serve_asgi_websocket`` on in-memory connections (``ConnectionLike``) whose
``read`` hands over one client-masked 16-byte text frame per call at once and
whose ``write`` counts bytes, so what is measured is prefork's own code and
the ``websockets`` library's (parsing, unmasking, UTF-8, framing), not the
event loop or the kernel:

- echo: one connection receives a message and sends it back, n times;
- broadcast: the ``/broadcast`` route sends one message to 1,000 subscribed
  connections, n / 1,000 times.

Deterministic enough for callgrind (``--rounds 1``): the instruction count of
one run is stable to a fraction of a percent.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent / "apps"))
import uvloop
import ws_app

from prefork.apps.websocket import Options
from prefork.apps.websocket_asgi import WebSocketRequest, serve_asgi_websocket

MASK = b"\x37\xfa\x21\x3d"
PAYLOAD = b"0123456789abcdef"
MASKED = bytes(b ^ MASK[i % 4] for i, b in enumerate(PAYLOAD))
FRAME = bytes([0x81, 0x80 | len(PAYLOAD)]) + MASK + MASKED
OPTS = Options(ping_interval=None, ping_timeout=None, per_message_deflate=False)
HEADERS = [
    (b"host", b"127.0.0.1"),
    (b"upgrade", b"websocket"),
    (b"connection", b"Upgrade"),
    (b"sec-websocket-key", b"dGhlIHNhbXBsZSBub25jZQ=="),
    (b"sec-websocket-version", b"13"),
]


class MemoryConnection:
    """A ``ConnectionLike``: ``read`` gives ``frames`` frames at once, then waits (or EOF)."""

    peername = None
    server_name = None

    def __init__(self, frames: int, eof: bool = True) -> None:
        self.frames = frames
        self.eof = eof
        self.written = 0
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def read(self, n: int) -> bytes:
        if self.frames > 0:
            self.frames -= 1
            return FRAME
        if not self.eof:
            await self.closed
        return b""

    async def write(self, data: bytes) -> None:
        self.written += len(data)

    def send(self, data: bytes) -> None:
        self.written += len(data)

    write_paused = False
    lost = False

    async def drain(self) -> None:
        pass

    def close(self) -> None:
        if not self.closed.done():
            self.closed.set_result(None)

    def abort(self) -> None:
        self.close()

    def on_drain(self, callback: Any) -> None:
        pass


def request(path: str) -> WebSocketRequest:
    return WebSocketRequest(
        method="GET",
        path=path,
        raw_path=path.encode(),
        query_string=b"",
        headers=list(HEADERS),
        client=("127.0.0.1", 1),
        server=("127.0.0.1", 80),
    )


async def echo(n: int) -> float:
    conn = MemoryConnection(n)
    started = time.perf_counter()
    await serve_asgi_websocket(ws_app.app, request("/echo"), conn, OPTS)
    elapsed = time.perf_counter() - started
    # 2 bytes of head per echoed frame, plus the 101 response and the close frame.
    assert conn.written > n * (2 + len(PAYLOAD)), conn.written
    return elapsed / n


async def broadcast(n: int, subscribers: int = 1000) -> float:
    subs = [MemoryConnection(0, eof=False) for _ in range(subscribers)]
    tasks = [
        asyncio.create_task(serve_asgi_websocket(ws_app.app, request("/fanout"), c, OPTS))
        for c in subs
    ]
    for _ in range(100):  # each subscriber's app registers on its first turn
        if len(ws_app.SUBSCRIBERS) >= subscribers:
            break
        await asyncio.sleep(0)
    rounds = max(1, n // subscribers)
    trigger = MemoryConnection(rounds)
    started = time.perf_counter()
    await serve_asgi_websocket(ws_app.app, request("/broadcast"), trigger, OPTS)
    elapsed = time.perf_counter() - started
    for c in subs:
        assert c.written > rounds * (2 + len(PAYLOAD)), c.written
        c.close()
    await asyncio.gather(*tasks)
    return elapsed / (rounds * subscribers)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--only", choices=("echo", "broadcast"))
    args = parser.parse_args()
    for name, fn in (("echo", echo), ("broadcast", broadcast)):
        if args.only not in (None, name):
            continue
        best = min(uvloop.run(fn(args.n)) for _ in range(args.rounds))
        print(f"{name:10s} {best * 1e6:6.2f} us per message ({1 / best:10,.0f} /s)")


if __name__ == "__main__":
    main()
