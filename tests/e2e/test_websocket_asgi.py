"""The ASGI websocket scope end to end: a Starlette app served by prefork, the websockets client."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

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


async def test_access_line_keeps_log_headers_of_a_long_session(
    start_server: StartServer, tmp_path: Path
) -> None:
    """The session drops the request's field dict while it lasts; the access
    line written at its end still has the log_headers values."""
    (tmp_path / "log.toml").write_text('log_headers = ["x-trace", "user-agent"]\n')
    server = start_server(APP, "-w", "1", "-c", "log.toml", target="app:app")
    url = f"ws://127.0.0.1:{server.port}/chat?token=ok"
    headers = {"X-Trace": "t-42", "User-Agent": "grid-client/1"}
    async with connect(url, subprotocols=["chat"], additional_headers=headers) as ws:
        await ws.recv()
        await ws.send("one")
        assert await ws.recv() == "ONE"
    line = server.wait_log(r'"GET /chat\?token=ok HTTP/1\.1" 101 .*').group(0)
    assert line.endswith('x-trace="t-42" user-agent="grid-client/1"'), line
