"""``serve_asgi_websocket`` under real ASGI frameworks: Starlette, FastAPI, Litestar.

Each app runs on one end of a socket pair and the ``websockets`` client talks
to it on the other (``asgi_pair`` from test_websocket).
"""

from __future__ import annotations

import asyncio
from typing import Any

import fastapi
import pytest
from fastapi import FastAPI, WebSocketException
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.unit.test_websocket import asgi_pair

# (FastAPI reads the annotations of the endpoint: its types must be names of
# this module, with ``from __future__ import annotations``.)


def starlette_app() -> Any:
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import WebSocketRoute
    from starlette.websockets import WebSocket

    async def chat(websocket: WebSocket) -> None:
        if websocket.query_params.get("token") != "ok":
            # Starlette's denial goes through the websocket.http.response extension.
            await websocket.send_denial_response(PlainTextResponse("no token", status_code=401))
            return
        await websocket.accept(subprotocol="chat")
        async for text in websocket.iter_text():
            if text == "bye":
                await websocket.close(4000, "bye")
                return
            await websocket.send_text(text.upper())

    return Starlette(routes=[WebSocketRoute("/chat", chat)])


def fastapi_app() -> Any:
    app = FastAPI()

    @app.websocket("/chat")
    async def chat(websocket: fastapi.WebSocket, token: str = "") -> None:
        if token != "ok":
            raise WebSocketException(code=1008)  # a close before accept: 403
        await websocket.accept(subprotocol="chat")
        try:
            while True:
                data = await websocket.receive_text()
                if data == "bye":
                    await websocket.close(4000, "bye")
                    return
                await websocket.send_text(data.upper())
        except fastapi.WebSocketDisconnect:
            pass

    return app


def litestar_app() -> Any:
    from litestar import Litestar, WebSocket, websocket
    from litestar.exceptions import WebSocketDisconnect

    @websocket("/chat")
    async def chat(socket: WebSocket[Any, Any, Any]) -> None:
        if socket.query_params.get("token") != "ok":
            await socket.close(1008)  # before accept: 403
            return
        await socket.accept(subprotocols="chat")
        try:
            while True:
                data = await socket.receive_text()
                if data == "bye":
                    await socket.close(4000, "bye")
                    return
                await socket.send_text(data.upper())
        except WebSocketDisconnect:
            pass

    return Litestar(route_handlers=[chat])


FRAMEWORKS = {"starlette": starlette_app, "fastapi": fastapi_app, "litestar": litestar_app}


@pytest.mark.parametrize("framework", FRAMEWORKS)
async def test_echo_subprotocol_and_close_code(framework: str) -> None:
    app = FRAMEWORKS[framework]()
    async with asgi_pair(app, path="/chat?token=ok", subprotocols=["chat"]) as (ws, _, _):
        assert ws.subprotocol == "chat"
        await ws.send("hello")
        assert await asyncio.wait_for(ws.recv(), 5) == "HELLO"
        await ws.send("bye")
        with pytest.raises(ConnectionClosed) as info:
            await asyncio.wait_for(ws.recv(), 5)
        assert info.value.rcvd is not None
        assert (info.value.rcvd.code, info.value.rcvd.reason) == (4000, "bye")


@pytest.mark.parametrize("framework", FRAMEWORKS)
async def test_denied_before_accept(framework: str) -> None:
    app = FRAMEWORKS[framework]()
    with pytest.raises(InvalidStatus) as info:
        async with asgi_pair(app, path="/chat?token=no"):
            pass
    response = info.value.response
    if framework == "starlette":
        assert (response.status_code, response.body) == (401, b"no token")
    else:
        assert response.status_code == 403


@pytest.mark.parametrize("framework", FRAMEWORKS)
async def test_client_disconnect_reaches_the_app(framework: str) -> None:
    app = FRAMEWORKS[framework]()
    async with asgi_pair(app, path="/chat?token=ok", subprotocols=["chat"]) as (ws, task, _):
        await ws.send("one")
        assert await asyncio.wait_for(ws.recv(), 5) == "ONE"
        await ws.close(1001)
    outcome = await asyncio.wait_for(task, 5)  # the app saw the disconnect and returned
    assert outcome.status == 101
