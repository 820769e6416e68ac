"""Memory per idle WebSocket connection: a worker's RSS before and after N clients.

Run: python bench/ws_memory.py [N]   (prints KiB per connection, deflate on and off,
for a native handler and for a plain ASGI app)
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
from websockets.asyncio.client import ClientConnection, connect

ROOT = Path(__file__).resolve().parents[1]
APP = """
async def handle(method, path, args, headers, body, ctx):
    ws = await ctx.accept_websocket()
    async for message in ws:
        await ws.send(message)
    return None, None, None
"""
ASGI_APP = """
async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            else:
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "websocket":
        await send({"type": "http.response.start", "status": 404, "headers": []})
        await send({"type": "http.response.body", "body": b""})
        return
    await receive()  # websocket.connect
    await send({"type": "websocket.accept"})
    while True:
        message = await receive()
        if message["type"] != "websocket.receive":
            return
        text, data = message.get("text"), message.get("bytes")
        await send({"type": "websocket.send", "text": text, "bytes": data})
"""


def start(
    directory: Path, deflate: bool, n: int, asgi: bool
) -> tuple[subprocess.Popen[bytes], int]:
    (directory / "app.py").write_text(ASGI_APP if asgi else APP)
    (directory / "ws.toml").write_text(
        f"ws_per_message_deflate = {str(deflate).lower()}\nconnection_limit = {n + 16}\n"
    )
    log = directory / "log"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "prefork",
                "run",
                "app:app" if asgi else "app:handle",
                "--interface",
                "asgi" if asgi else "native",
                "-b",
                "127.0.0.1:0",
                "-w",
                "1",
                "-c",
                "ws.toml",
            ],
            cwd=directory,
            stdout=out,
            stderr=out,
            env=env,
            process_group=0,
        )
    for _ in range(200):
        m = re.search(r"listening on http://[\d.]+:(\d+)", log.read_text())
        if m and "ready" in log.read_text():
            return proc, int(m.group(1))
        time.sleep(0.05)
    raise RuntimeError(log.read_text())


async def measure(deflate: bool, n: int, asgi: bool) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        proc, port = start(Path(tmp), deflate, n, asgi)
        try:
            (worker,) = psutil.Process(proc.pid).children()
            conns: list[ClientConnection] = []
            # Warm up: the first connection imports the websockets modules.
            async with connect(f"ws://127.0.0.1:{port}/") as ws:
                await ws.send("x")
                await ws.recv()
            await asyncio.sleep(0.5)
            before = worker.memory_info().rss
            for _ in range(n):
                ws = await connect(
                    f"ws://127.0.0.1:{port}/",
                    ping_interval=None,
                    compression="deflate" if deflate else None,
                )
                conns.append(ws)
            for ws in conns:  # each session has received and answered once
                await ws.send("x")
                await ws.recv()
            await asyncio.sleep(0.5)
            after = worker.memory_info().rss
            for ws in conns:
                await ws.close()
            return (after - before) / n / 1024
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 500
    for asgi in (False, True):
        for deflate in (False, True):
            kib = asyncio.run(measure(deflate, n, asgi))
            print(
                f"{'ASGI  ' if asgi else 'native'} deflate={'on ' if deflate else 'off'} "
                f"{n} idle WebSockets: {kib:.1f} KiB each"
            )


if __name__ == "__main__":
    main()
