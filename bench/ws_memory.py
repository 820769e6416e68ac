"""Memory per idle WebSocket connection: what one more costs a worker.

Run: python bench/ws_memory.py [N] [--build source|compiled] [--only native|asgi]

For a native handler and for a plain ASGI echo app, deflate off and on, one
worker: N clients (the ``websockets`` client) connect one after the other,
each sends one message, gets its echo and stays idle (for SETTLE_S before
the RSS is read). Two figures, in KiB
per connection, from the worker's RSS:

- ``marginal``: (RSS after all N - RSS after the first N/4) / (3N/4), the
  figure to quote. The first quarter uses up the memory the worker held free
  already (pymalloc arenas and heap left by its start: ~0.7 MiB, i.e. the
  first ~600 connections cost less), so each connection of the other three
  quarters pays its full cost. The window spans a factor of 4 in the number
  open because the worker's per-connection sets (the acceptor's tasks, the
  open connections, asyncio's task registry, a ping-wheel bucket) quadruple
  their tables as they fill: such a window holds exactly one growth of each,
  whose cost is in proportion to N, so the figure does not depend on N (for
  N >= ~3000: below that the first quarter leaves part of the free memory
  for the window). A window of N/2 to N would swing by ~0.4 KiB with N,
  after whether a growth fell inside it.
- ``average``: (RSS after all N - RSS before any) / N, the older figure. It
  rises with N toward the marginal one, since the free memory absorbed is
  spread over fewer connections the fewer there are.
"""

from __future__ import annotations

import argparse
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
# Idle: no data for this long before RSS is read. A session lets go of its
# frame parser within a second of its last data (websocket_handshake.Session),
# of its deflate state within two PARK_TICK_S (websocket_deflate, 1 s).
SETTLE_S = 2.5
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
    directory: Path, deflate: bool, n: int, asgi: bool, pythonpath: Path
) -> tuple[subprocess.Popen[bytes], int]:
    (directory / "app.py").write_text(ASGI_APP if asgi else APP)
    (directory / "ws.toml").write_text(
        f"ws_per_message_deflate = {str(deflate).lower()}\nconnection_limit = {n + 16}\n"
    )
    log = directory / "log"
    env = {**os.environ, "PYTHONPATH": str(pythonpath)}
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


async def open_idle(port: int, count: int, deflate: bool) -> list[ClientConnection]:
    """``count`` clients, one after the other; each has sent one message and got its echo."""
    conns: list[ClientConnection] = []
    for _ in range(count):
        ws = await connect(
            f"ws://127.0.0.1:{port}/",
            ping_interval=None,
            compression="deflate" if deflate else None,
        )
        conns.append(ws)
    for ws in conns:  # each session has received and answered once
        await ws.send("x")
        await ws.recv()
    return conns


async def measure(deflate: bool, n: int, asgi: bool, pythonpath: Path) -> tuple[float, float]:
    """(marginal, average) KiB per idle connection; see the module docstring."""
    with tempfile.TemporaryDirectory() as tmp:
        proc, port = start(Path(tmp), deflate, n, asgi, pythonpath)
        try:
            (worker,) = psutil.Process(proc.pid).children()
            conns: list[ClientConnection] = []
            # Warm up: the first connection imports the websockets modules.
            async with connect(f"ws://127.0.0.1:{port}/") as ws:
                await ws.send("x")
                await ws.recv()
            await asyncio.sleep(SETTLE_S)
            before = worker.memory_info().rss
            first = n // 4
            conns += await open_idle(port, first, deflate)
            await asyncio.sleep(SETTLE_S)
            middle = worker.memory_info().rss
            conns += await open_idle(port, n - first, deflate)
            await asyncio.sleep(SETTLE_S)
            after = worker.memory_info().rss
            for ws in conns:
                await ws.close()
            return (after - middle) / (n - first) / 1024, (after - before) / n / 1024
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("n", nargs="?", type=int, default=4000, help="connections (default 4000)")
    parser.add_argument("--build", choices=("source", "compiled"), default="source")
    parser.add_argument("--only", choices=("native", "asgi"), help="one interface only")
    parser.add_argument("--deflate", choices=("on", "off"), help="one deflate setting only")
    args = parser.parse_args()
    if args.n < 4:
        parser.error("N must be at least 4")
    sys.path.insert(0, str(ROOT / "bench"))
    from build import pythonpath  # bench/build.py

    path = pythonpath(args.build)
    print(f"{args.n} idle WebSockets, one worker, {args.build} build; KiB per connection")
    for asgi in (False, True):
        if args.only and args.only != ("asgi" if asgi else "native"):
            continue
        for deflate in (False, True):
            if args.deflate and (args.deflate == "on") != deflate:
                continue
            marginal, average = asyncio.run(measure(deflate, args.n, asgi, path))
            print(
                f"{'ASGI  ' if asgi else 'native'} deflate={'on ' if deflate else 'off'} "
                f"marginal {marginal:5.2f}   average {average:5.2f}"
            )


if __name__ == "__main__":
    main()
