"""A plain ASGI 3 app (no framework) for the rules a framework would hide.

Each path makes the app do one thing, right or wrong, so that the tests in
``test_asgi_raw`` can check what the server makes of it. ``/record`` reports
what the app saw afterwards (the type of a send() failure, a disconnect).
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import os
from typing import Any

# What the app saw on the paths that watch the client: read back by /record.
SEEN: dict[str, Any] = {}
# /slow-reader waits on this after its first piece; GET /release sets it.
RELEASE: list[asyncio.Event] = []
PIECE = b"y" * 16384
# Set by /context-set and never reset: a request that reads it must not see
# what an earlier request on its connection set (each request has its own context).
REQUEST_MARK: contextvars.ContextVar[str] = contextvars.ContextVar("request_mark", default="unset")


async def read_body(receive: Any) -> bytes:
    parts = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise RuntimeError("disconnected while reading")
        parts.append(message["body"])
        if not message.get("more_body"):
            return b"".join(parts)


async def start(send: Any, status: int = 200, headers: Any = (), **extra: Any) -> None:
    await send({"type": "http.response.start", "status": status, "headers": list(headers), **extra})


async def body(send: Any, data: bytes = b"", more: bool = False) -> None:
    await send({"type": "http.response.body", "body": data, "more_body": more})


async def lifespan(receive: Any, send: Any, state: dict[str, Any]) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            if os.environ.get("RAW_APP_FAIL_STARTUP"):
                await send({"type": "lifespan.startup.failed", "message": "no database today"})
                return
            state["started"] = "yes"
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            marker = os.environ.get("RAW_APP_SHUTDOWN_FILE")
            if marker:
                with open(marker, "a") as f:  # noqa: ASYNC230 - one short write at shutdown
                    f.write("shutdown\n")
            await send({"type": "lifespan.shutdown.complete"})
            return


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        await lifespan(receive, send, scope["state"])
        return
    path = scope["path"][len(scope["root_path"]) :]  # the path includes root_path
    text = [(b"content-type", b"text/plain")]
    if path.startswith("/scope"):
        data = await read_body(receive)
        shown = {
            key: (value.decode("latin-1") if isinstance(value, bytes) else value)
            for key, value in scope.items()
            if key not in ("headers", "extensions", "state", "asgi")
        }
        shown["headers"] = [[n.decode("latin-1"), v.decode("latin-1")] for n, v in scope["headers"]]
        shown["extensions"] = sorted(scope["extensions"])
        shown["tls"] = scope["extensions"].get("tls")
        shown["state"] = dict(scope["state"])
        shown["asgi"] = scope["asgi"]
        shown["body_len"] = len(data)
        scope["state"]["written-by-a-request"] = True  # must not reach the next request
        out = json.dumps(shown).encode()
        await start(send, 200, [(b"content-type", b"application/json")])
        await body(send, out)
    elif path == "/context-set":
        REQUEST_MARK.set(scope["query_string"].decode())
        await asyncio.sleep(0.01)  # suspended: the value is still this request's after it
        await start(send, 200, text)
        await body(send, REQUEST_MARK.get().encode())
    elif path == "/context-get":
        await start(send, 200, text)
        await body(send, REQUEST_MARK.get().encode())
    elif path == "/echo":
        data = await read_body(receive)
        await start(send, 200, text)
        await body(send, data)
    elif path == "/count-events":
        events = 0
        size = 0
        while True:
            message = await receive()
            events += 1
            size += len(message.get("body", b""))
            if not message.get("more_body"):
                break
        await start(send, 200, text)
        await body(send, f"{events} {size}".encode())
    elif path == "/no-read":
        await start(send, 200, text)
        await body(send, b"answered without reading")
    elif path == "/stream":
        await start(send, 200, text)
        for i in range(4):
            await body(send, f"piece {i}\n".encode() * 100, more=True)
        await body(send)
    elif path == "/stream-length":
        await start(send, 200, [*text, (b"content-length", b"12")])
        await body(send, b"hello ", more=True)
        await body(send, b"world!")
    elif path == "/fail-after-start":
        await start(send, 200, text)
        await body(send, b"part of it", more=True)
        raise RuntimeError("failing mid-stream")
    elif path == "/fail-before-start":
        raise RuntimeError("failing before the response")
    elif path == "/return-without-response":
        return
    elif path == "/return-mid-stream":
        await start(send, 200, text)
        await body(send, b"part", more=True)
    elif path == "/bad-type":
        await send({"type": "http.response.bogus"})
    elif path == "/bad-body":
        await start(send, 200, text)
        await send({"type": "http.response.body", "body": "a str, not bytes"})
    elif path == "/bad-status":
        await start(send, "200", text)
    elif path == "/bad-header":
        await start(send, 200, [(b"x-evil", b"a\r\nx-injected: 1")])
        await body(send, b"never")
    elif path == "/str-header":
        await start(send, 200, [("x-str", "not bytes")])
        await body(send, b"never")
    elif path == "/trailers":
        await start(send, 200, text, trailers=True)
        await body(send, b"body")
    elif path == "/status":
        code = int(scope["query_string"] or b"200")
        await start(send, code, [(b"content-length", b"5")] if code == 200 else [])
        await body(send, b"hello")
    elif path == "/pathsend":
        name = scope["query_string"].decode()
        await start(send, 200, [(b"content-type", b"application/octet-stream")])
        await send({"type": "http.response.pathsend", "path": name})
    elif path == "/watch-disconnect":
        await read_body(receive)
        message = await receive()  # blocks until the client leaves
        SEEN["disconnect"] = message["type"]
    elif path == "/send-after-leaving":
        await start(send, 200, text)
        try:
            for _ in range(100_000):  # bounded; the client leaves after a few pieces
                await body(send, PIECE, more=True)
        except OSError as exc:
            SEEN["send_error"] = [type(exc).__name__, isinstance(exc, OSError)]
            raise
    elif path == "/slow-reader":
        first = await receive()
        size = len(first["body"])
        if not RELEASE:
            RELEASE.append(asyncio.Event())
        await RELEASE[0].wait()
        more = first.get("more_body", False)
        while more:
            message = await receive()
            size += len(message["body"])
            more = message.get("more_body", False)
        await start(send, 200, text)
        await body(send, str(size).encode())
    elif path == "/release":
        if not RELEASE:
            RELEASE.append(asyncio.Event())
        RELEASE[0].set()
        await start(send, 200, text)
        await body(send, b"released")
    elif path == "/record":
        await start(send, 200, [(b"content-type", b"application/json")])
        await body(send, json.dumps(SEEN).encode())
    elif path == "/big-text":
        await start(send, 200, text)
        await body(send, b"compress me please " * 20000)
    elif path == "/stream-text":
        await start(send, 200, text)
        for _ in range(5):
            await body(send, b"compress me please " * 1000, more=True)
            await asyncio.sleep(0)
        await body(send)
    else:
        await start(send, 404, text)
        await body(send, b"not found")
