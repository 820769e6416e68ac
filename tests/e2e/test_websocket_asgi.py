"""The ASGI websocket scope end to end: a Starlette app served by prefork, the websockets client."""

from __future__ import annotations

import asyncio
import os
import signal

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.e2e.conftest import ServerProcess, StartServer

pytestmark = pytest.mark.e2e

APP = """
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect


async def chat(websocket: WebSocket) -> None:
    token = websocket.query_params.get("token")
    if token == "deny":
        await websocket.send_denial_response(PlainTextResponse("go away", status_code=401))
        return
    if token != "ok":
        await websocket.close(1008)  # before accept: 403
        return
    await websocket.accept(subprotocol="chat", headers=[(b"x-extra", b"yes")])
    await websocket.send_json({"path": websocket.url.path, "scheme": websocket.url.scheme})
    try:
        async for text in websocket.iter_text():
            if text == "bye":
                await websocket.close(4000, "bye")
                return
            await websocket.send_text(text.upper())
    except WebSocketDisconnect:
        pass


app = Starlette(routes=[WebSocketRoute("/chat", chat)])
"""


@pytest.fixture
def server(start_server: StartServer) -> ServerProcess:
    return start_server(APP, "-w", "1", target="app:app")


async def test_echo_subprotocol_headers_close_code_and_access_log(server: ServerProcess) -> None:
    port = server.port
    url = f"ws://127.0.0.1:{port}/chat?token=ok"
    async with connect(url, subprotocols=["chat"]) as ws:
        assert ws.subprotocol == "chat"
        assert ws.response is not None
        assert ws.response.headers["x-extra"] == "yes"
        assert await ws.recv() == '{"path":"/chat","scheme":"ws"}'
        await ws.send("hello")
        assert await ws.recv() == "HELLO"
        await ws.send("bye")
        with pytest.raises(ConnectionClosed) as info:
            await asyncio.wait_for(ws.recv(), 5)
        assert info.value.rcvd is not None
        assert (info.value.rcvd.code, info.value.rcvd.reason) == (4000, "bye")
    server.wait_log(r'"GET /chat\?token=ok HTTP/1\.1" 101 ')


@pytest.mark.parametrize(("token", "status"), [("deny", 401), ("none", 403)])
async def test_denials(server: ServerProcess, token: str, status: int) -> None:
    port = server.port
    with pytest.raises(InvalidStatus) as info:
        async with connect(f"ws://127.0.0.1:{port}/chat?token={token}"):
            pass
    assert info.value.response.status_code == status
    if status == 401:
        assert info.value.response.body == b"go away"


async def test_graceful_stop_closes_with_1001(server: ServerProcess) -> None:
    port = server.port
    async with connect(f"ws://127.0.0.1:{port}/chat?token=ok", subprotocols=["chat"]) as ws:
        await ws.recv()
        os.killpg(server.pid, signal.SIGTERM)
        with pytest.raises(ConnectionClosed) as info:
            await asyncio.wait_for(ws.recv(), 10)
        assert info.value.rcvd is not None
        assert info.value.rcvd.code == 1001
