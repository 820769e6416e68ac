"""The echo app Autobahn's fuzzingclient talks to (a native handler)."""

from __future__ import annotations

from typing import Any

from prefork.apps.websocket import HandshakeRejected


async def handle(
    method: str, path: str, args: Any, headers: dict[str, str], body: bytes, ctx: Any
) -> Any:
    if "upgrade" not in headers:
        return "a WebSocket echo server\n", 200, {}
    try:
        ws = await ctx.accept_websocket()
    except HandshakeRejected as exc:
        return exc.result
    async for message in ws:
        await ws.send(message)
    return None, None, None
