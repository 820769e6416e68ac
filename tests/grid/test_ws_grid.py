"""Real ASGI frameworks' WebSocket endpoints served by ``prefork run``, the ``websockets`` client.

Starlette, FastAPI, Litestar and Django Channels each serve the same two
routes with their own means, one real server per framework (module-scoped):

    /chat?token=ok   accept with subprotocol "chat" and a field x-grid: yes;
                     text is sent back upper-cased, bytes reversed; "bye"
                     closes with 4000 "bye"; "left?" answers how many
                     sessions of this worker have seen their client leave
    /chat (no token) denied before the accept: a close (403) or, where the
                     framework has it, its own HTTP response (Starlette: 401)
"""

from __future__ import annotations

import asyncio
import os
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.e2e.conftest import ServerProcess, launch_server

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]

STARLETTE = """
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

LEFT = [0]


async def chat(websocket: WebSocket) -> None:
    if websocket.query_params.get("token") != "ok":
        await websocket.send_denial_response(PlainTextResponse("no token", status_code=401))
        return
    await websocket.accept(subprotocol="chat", headers=[(b"x-grid", b"yes")])
    try:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                LEFT[0] += 1
                return
            if message.get("bytes") is not None:
                await websocket.send_bytes(message["bytes"][::-1])
            elif message["text"] == "bye":
                await websocket.close(4000, "bye")
                return
            elif message["text"] == "left?":
                await websocket.send_text(str(LEFT[0]))
            else:
                await websocket.send_text(message["text"].upper())
    except WebSocketDisconnect:
        LEFT[0] += 1


app = Starlette(routes=[WebSocketRoute("/chat", chat)])
"""

FASTAPI = """
from __future__ import annotations

import fastapi
from fastapi import FastAPI, WebSocketException

LEFT = [0]
app = FastAPI()


@app.websocket("/chat")
async def chat(websocket: fastapi.WebSocket, token: str = "") -> None:
    if token != "ok":
        raise WebSocketException(code=1008)  # a close before the accept: 403
    await websocket.accept(subprotocol="chat", headers=[(b"x-grid", b"yes")])
    try:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                LEFT[0] += 1
                return
            if message.get("bytes") is not None:
                await websocket.send_bytes(message["bytes"][::-1])
            elif message["text"] == "bye":
                await websocket.close(4000, "bye")
                return
            elif message["text"] == "left?":
                await websocket.send_text(str(LEFT[0]))
            else:
                await websocket.send_text(message["text"].upper())
    except fastapi.WebSocketDisconnect:
        LEFT[0] += 1
"""

LITESTAR = """
from typing import Any

from litestar import Litestar, WebSocket, websocket
from litestar.exceptions import WebSocketDisconnect

LEFT = [0]


@websocket("/chat")
async def chat(socket: WebSocket[Any, Any, Any]) -> None:
    if socket.query_params.get("token") != "ok":
        await socket.close(1008)  # before the accept: 403
        return
    await socket.accept(subprotocols="chat", headers={"x-grid": "yes"})
    try:
        while True:
            message = await socket.receive()  # the ASGI event, text or bytes
            if message["type"] == "websocket.disconnect":
                LEFT[0] += 1
                return
            if message.get("bytes") is not None:
                await socket.send_bytes(message["bytes"][::-1])
            elif message["text"] == "bye":
                await socket.close(4000, "bye")
                return
            elif message["text"] == "left?":
                await socket.send_text(str(LEFT[0]))
            else:
                await socket.send_text(message["text"].upper())
    except WebSocketDisconnect:
        LEFT[0] += 1


app = Litestar(route_handlers=[chat])
"""

CHANNELS = """
import django
from django.conf import settings

settings.configure(
    DEBUG=False,
    SECRET_KEY="grid",
    ALLOWED_HOSTS=["*"],
    INSTALLED_APPS=["channels"],
    ROOT_URLCONF=__name__,
)
django.setup()

from channels.generic.websocket import AsyncWebsocketConsumer
from channels.routing import ProtocolTypeRouter, URLRouter
from django.urls import path

urlpatterns = []
LEFT = [0]


class Chat(AsyncWebsocketConsumer):
    async def connect(self):
        if b"token=ok" not in self.scope["query_string"]:
            await self.close()  # before the accept: 403
            return
        await self.accept(subprotocol="chat")

    async def receive(self, text_data=None, bytes_data=None):
        if bytes_data is not None:
            await self.send(bytes_data=bytes_data[::-1])
        elif text_data == "bye":
            await self.close(code=4000, reason="bye")
        elif text_data == "left?":
            await self.send(text_data=str(LEFT[0]))
        else:
            await self.send(text_data=text_data.upper())

    async def disconnect(self, code):
        if code not in (4000,):
            LEFT[0] += 1


app = ProtocolTypeRouter({"websocket": URLRouter([path("chat", Chat.as_asgi())])})
"""

APPS = {"starlette": STARLETTE, "fastapi": FASTAPI, "litestar": LITESTAR, "channels": CHANNELS}
# Which send the x-grid field with the 101 (Channels' accept takes no headers)
# and how each denies (Starlette with its own response).
WITH_HEADERS = {"starlette", "fastapi", "litestar"}
DENIAL = {"starlette": 401, "fastapi": 403, "litestar": 403, "channels": 403}


@pytest.fixture(scope="module", params=list(APPS))
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, ServerProcess]]:
    name = request.param
    if name == "channels":
        pytest.importorskip("channels")
    directory = tmp_path_factory.mktemp(f"ws-{name}")
    (directory / "ws_grid_app.py").write_text(textwrap.dedent(APPS[name]))
    (directory / "grid.toml").write_text("ws_ping_interval = 0\n")
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    proc = launch_server(directory, "-w", "1", "-c", "grid.toml", target="ws_grid_app:app", env=env)
    try:
        yield name, proc
    finally:
        proc.stop()


def url(server: ServerProcess, query: str = "?token=ok") -> str:
    return f"ws://127.0.0.1:{server.port}/chat{query}"


async def test_echo_subprotocol_headers_and_close_code(server: tuple[str, ServerProcess]) -> None:
    name, proc = server
    async with connect(url(proc), subprotocols=["chat"]) as ws:
        assert ws.subprotocol == "chat"
        assert ws.response is not None
        if name in WITH_HEADERS:
            assert ws.response.headers["x-grid"] == "yes"
        await ws.send("héllo")
        assert await asyncio.wait_for(ws.recv(), 5) == "HÉLLO"
        payload = bytes(range(256)) * 64
        await ws.send(payload)
        assert await asyncio.wait_for(ws.recv(), 5) == payload[::-1]
        await ws.send("bye")
        with pytest.raises(ConnectionClosed) as info:
            await asyncio.wait_for(ws.recv(), 5)
        assert info.value.rcvd is not None
        assert (info.value.rcvd.code, info.value.rcvd.reason) == (4000, "bye")
    proc.wait_log(r'"GET /chat\?token=ok HTTP/1\.1" 101 ')


async def test_denied_before_accept(server: tuple[str, ServerProcess]) -> None:
    name, proc = server
    with pytest.raises(InvalidStatus) as info:
        async with connect(url(proc, "")):
            pass
    response = info.value.response
    assert response.status_code == DENIAL[name]
    if name == "starlette":
        assert response.body == b"no token"


async def test_a_client_that_leaves_is_seen_by_the_app(server: tuple[str, ServerProcess]) -> None:
    _, proc = server
    async with connect(url(proc), subprotocols=["chat"]) as probe:
        await probe.send("left?")
        before = int(await asyncio.wait_for(probe.recv(), 5))
        async with connect(url(proc), subprotocols=["chat"]) as ws:
            await ws.send(b"x")
            assert await asyncio.wait_for(ws.recv(), 5) == b"x"
        # (a close frame with 1000: the app hears websocket.disconnect)
        for _ in range(50):  # bounded: 5 s
            await probe.send("left?")
            if int(await asyncio.wait_for(probe.recv(), 5)) == before + 1:
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError("the app never saw its client leave")


async def test_many_sessions_at_once(server: tuple[str, ServerProcess]) -> None:
    _, proc = server

    async def session(i: int) -> str:
        async with connect(url(proc), subprotocols=["chat"]) as ws:
            for _ in range(5):
                await ws.send(f"m{i}")
                reply = await asyncio.wait_for(ws.recv(), 10)
            return str(reply)

    replies = await asyncio.gather(*(session(i) for i in range(40)))
    assert replies == [f"M{i}" for i in range(40)]
