"""What every grid app serves alike: the big body, the stream, the counter of abandoned streams.

Each ``*_app.py`` here serves the same endpoints with its framework's own
means (routing, request and response classes, lifespan); ``test_asgi_grid``
checks them all the same way through a real prefork server.

    GET  /hello             "Hello, World!" (text/plain); HEAD too
    GET  /json?name=&n=     {"name": name, "n": int(n)}
    POST /echo              the body back, with the request's content type
    POST /upload            the body read as a stream: {"size": n, "sha256": hex}
    GET  /stream            STREAM_PIECES pieces, written one by one
    GET  /headers           x-seen: the request's x-rep values joined by "|";
                            two x-multi response fields
    GET  /status/{code}     an empty response with that status
    GET  /raise             the route raises (the framework's or the server's 500)
    GET  /cookies           sets cookies a=1 and b=2
    GET  /cookies/echo      {"a": cookie a, "b": cookie b}
    GET  /big               BIG (10 MiB)
    GET  /endless           a stream that ends only when the client leaves
    GET  /left              {"left": streams of /endless that stopped}
    GET  /state             {"state": what lifespan startup stored, or null}
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator

HELLO = "Hello, World!"
BIG = bytes(range(256)) * (40 * 1024)  # 10 MiB
STREAM_PIECES = [f"piece {i}\n".encode() for i in range(5)]
STATE_VALUE = "started"
# A piece of /endless; the client reads a few and leaves.
ENDLESS_PIECE = b"x" * 16384

# /endless streams that stopped after their client left (a list: mutable from the apps).
LEFT = [0]


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def stream_pieces() -> AsyncIterator[bytes]:
    for piece in STREAM_PIECES:
        yield piece
        await asyncio.sleep(0)


async def endless() -> AsyncIterator[bytes]:
    try:
        for _ in range(100_000):  # bounded: 1.6 GB, far more than any client here reads
            yield ENDLESS_PIECE
            await asyncio.sleep(0)
    finally:
        LEFT[0] += 1
