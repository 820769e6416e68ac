"""permessage-deflate state dropped while idle: a real server, the real ``websockets`` client.

The client is the library's own, with compression negotiated as browsers do
(``client_max_window_bits`` offered); its extension only records the size of
each compressed frame it receives, and sends the one query message ("state")
uncompressed, so asking does not itself make the server's decompressor again.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence
from pathlib import Path

import pytest
from websockets.asyncio.client import connect
from websockets.extensions.base import Extension
from websockets.extensions.permessage_deflate import (
    ClientPerMessageDeflateFactory,
    PerMessageDeflate,
)
from websockets.frames import Frame
from websockets.typing import ExtensionParameter

from prefork.apps.websocket_deflate import PARK_TICK_S
from tests.e2e.conftest import StartServer

pytestmark = pytest.mark.e2e

# Echoes; "state" answers whether the worker's deflate extensions hold zlib
# state (read before the answer is compressed).
APP = """
import gc
from prefork.apps.websocket_deflate import ParkingDeflate


async def handle(method, path, args, headers, body, ctx):
    ws = await ctx.accept_websocket()
    async for message in ws:
        if message == "state":
            parked = [o.parked for o in gc.get_objects() if isinstance(o, ParkingDeflate)]
            await ws.send(repr(parked))
        else:
            await ws.send(message)
    return None, None, None
"""
ASGI_APP = """
import gc
from prefork.apps.websocket_deflate import ParkingDeflate


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    await receive()
    await send({"type": "websocket.accept"})
    while True:
        event = await receive()
        if event["type"] != "websocket.receive":
            return
        if event.get("text") == "state":
            parked = [o.parked for o in gc.get_objects() if isinstance(o, ParkingDeflate)]
            await send({"type": "websocket.send", "text": repr(parked)})
        else:
            await send({"type": "websocket.send", "text": event.get("text"),
                        "bytes": event.get("bytes")})
"""


class Recording(PerMessageDeflate):
    """The library's client extension, noting the compressed size of what it receives."""

    sizes: list[int]

    def decode(self, frame: Frame, *, max_size: int | None = None) -> Frame:
        if frame.rsv1:
            self.sizes.append(len(frame.data))
        return super().decode(frame, max_size=max_size)

    def encode(self, frame: Frame) -> Frame:
        if frame.data == b"state":
            return frame  # uncompressed (RFC 7692 allows it): not part of any window
        return super().encode(frame)


class RecordingFactory(ClientPerMessageDeflateFactory):
    made: Recording | None = None

    def process_response_params(
        self, params: Sequence[ExtensionParameter], accepted_extensions: Sequence[Extension]
    ) -> PerMessageDeflate:
        ext = super().process_response_params(params, accepted_extensions)
        rec = Recording(
            ext.remote_no_context_takeover,
            ext.local_no_context_takeover,
            ext.remote_max_window_bits,
            ext.local_max_window_bits,
            ext.compress_settings,
        )
        rec.sizes = []
        self.made = rec
        return rec


@pytest.mark.parametrize("interface", ["native", "asgi"])
async def test_an_idle_connection_parks_its_zlib_state_and_keeps_its_window(
    start_server: StartServer, tmp_path: Path, interface: str
) -> None:
    (tmp_path / "ws.toml").write_text("ws_ping_interval = 0\n")
    if interface == "asgi":
        server = start_server(
            ASGI_APP, "-w", "1", "-c", "ws.toml", "--interface", "asgi", target="app:app"
        )
    else:
        server = start_server(APP, "-w", "1", "-c", "ws.toml")
    factory = RecordingFactory(compress_settings={"memLevel": 5})
    # Random bytes (incompressible alone), within deflate's reach of a 4 KiB
    # window: only context takeover makes the second copy small.
    message = random.Random(7).randbytes(3000)
    async with connect(f"ws://127.0.0.1:{server.port}/", extensions=[factory]) as ws:
        rec = factory.made
        assert rec is not None
        assert rec.local_max_window_bits == rec.remote_max_window_bits == 12
        await ws.send(message)
        assert await ws.recv() == message
        assert rec.sizes[-1] > 3000  # the first copy: nothing to refer to
        for _ in range(2):
            await ws.send("state")
            assert await ws.recv() == "[False]"  # just used: zlib state live
            await asyncio.sleep(2 * PARK_TICK_S + 0.5)
            await ws.send("state")
            assert await ws.recv() == "[True]"  # idle: none left
            # The client's never-parked compressor refers back into the window
            # the server's decompressor is made again with; the server's
            # compressor, made again, refers to its own.
            await ws.send(message)
            assert await ws.recv() == message
            assert rec.sizes[-1] < 64
            await ws.send("text after " + "x" * 100)
            assert await ws.recv() == "text after " + "x" * 100
