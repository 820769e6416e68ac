"""The echo app Autobahn's fuzzingclient talks to, as a bare ASGI app."""

from __future__ import annotations

from typing import Any


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "websocket":
        return  # lifespan: not supported, which prefork's lifespan=auto accepts
    await receive()  # websocket.connect
    await send({"type": "websocket.accept"})
    while True:
        event = await receive()
        if event["type"] == "websocket.disconnect":
            return
        try:
            await send(
                {"type": "websocket.send", "text": event.get("text"), "bytes": event.get("bytes")}
            )
        except OSError:
            return  # the client failed the protocol meanwhile
