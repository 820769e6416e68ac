"""The benchmark app as a plain ASGI 3 app, for uvicorn, granian and gunicorn.

Same routes and bytes as ``bench_app.py``. No framework: the peers are
measured on their own cost, as prefork is. ``GET /big`` is gzipped at level 6
on every request when ``Accept-Encoding`` names gzip, as prefork and nginx do
(the ASGI servers have no compression of their own).
"""

from __future__ import annotations

import zlib

from bigdoc import BIG_JSON

HELLO = b"Hello, World!"
TEXT = [(b"content-type", b"text/plain")]


def _start(status: int, headers: list[tuple[bytes, bytes]], length: int) -> dict:
    return {
        "type": "http.response.start",
        "status": status,
        "headers": [*headers, (b"content-length", str(length).encode())],
    }


def _gzip(data: bytes) -> bytes:
    comp = zlib.compressobj(6, zlib.DEFLATED, 31)  # wbits 31: gzip container
    return comp.compress(data) + comp.flush()


def _accepts_gzip(headers: list[tuple[bytes, bytes]]) -> bool:
    return any(name == b"accept-encoding" and b"gzip" in value for name, value in headers)


async def _lifespan(receive, send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def app(scope, receive, send) -> None:
    if scope["type"] == "lifespan":
        await _lifespan(receive, send)
        return
    path = scope["path"]
    if path == "/hello":
        status, headers, body = 200, TEXT, HELLO
    elif path == "/echo" and scope["method"] == "POST":
        chunks = []
        more = True
        while more:
            message = await receive()
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        # Joined, like the prefork handler's ``body``: the same work for both.
        status, headers, body = 200, TEXT, str(len(b"".join(chunks))).encode()
    elif path == "/big":
        status, headers = 200, [(b"content-type", b"application/json")]
        if _accepts_gzip(scope["headers"]):
            body = _gzip(BIG_JSON)
            headers = [*headers, (b"content-encoding", b"gzip"), (b"vary", b"Accept-Encoding")]
        else:
            body = BIG_JSON
    else:
        status, headers, body = 404, TEXT, b"not found"
    await send(_start(status, headers, len(body)))
    await send({"type": "http.response.body", "body": body})
