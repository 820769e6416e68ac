"""The WebSocket benchmark app as a plain ASGI 3 app, for prefork, uvicorn and granian.

No framework, so each server is measured on its own cost:

- ``/echo``: every message is sent back as it came (text stays text);
- ``/fanout``: a subscriber; it only receives the broadcasts;
- ``/broadcast``: the trigger; each message it receives is sent to every
  subscriber of this worker, one after the other, and then ``done`` is sent
  back to the trigger (so its client knows the server has written them all);
- any HTTP request: ``200 Hello, World!`` (the harness's readiness probe).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

# The subscribers of this worker (each server runs one worker in the bench).
SUBSCRIBERS: set[Send] = set()


async def _http(receive: Receive, send: Send) -> None:
    headers = [(b"content-type", b"text/plain"), (b"content-length", b"13")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": b"Hello, World!"})


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def _echo(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] != "websocket.receive":
            return
        if message.get("text") is not None:
            await send({"type": "websocket.send", "text": message["text"]})
        else:
            await send({"type": "websocket.send", "bytes": message["bytes"]})


async def _fanout(receive: Receive, send: Send) -> None:
    SUBSCRIBERS.add(send)
    try:
        while (await receive())["type"] == "websocket.receive":
            pass
    finally:
        SUBSCRIBERS.discard(send)


async def _broadcast(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] != "websocket.receive":
            return
        out = {"type": "websocket.send", "text": message.get("text") or "x"}
        for subscriber in list(SUBSCRIBERS):
            try:
                await subscriber(out)
            except Exception:  # a subscriber that left mid-broadcast
                SUBSCRIBERS.discard(subscriber)
        await send({"type": "websocket.send", "text": "done"})


ROUTES = {"/echo": _echo, "/fanout": _fanout, "/broadcast": _broadcast}


async def app(scope: dict[str, Any], receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        await _lifespan(receive, send)
        return
    if scope["type"] == "http":
        await _http(receive, send)
        return
    route = ROUTES.get(scope["path"])
    message = await receive()  # websocket.connect
    if route is None or message["type"] != "websocket.connect":
        await send({"type": "websocket.close", "code": 1008})
        return
    await send({"type": "websocket.accept"})
    await route(receive, send)
