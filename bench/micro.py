"""Micro-benchmark of prefork's per-request path, without sockets.

    python bench/micro.py                 # CPU time per keep-alive GET, both parsers
    python bench/micro.py --access        # the same with the access log on (to /dev/null)
    python bench/micro.py --access --json # ... as JSON lines (access_log_format = "json")
    python bench/micro.py --metrics       # with metrics counted (metrics_bind set)
    python bench/micro.py --memory        # bytes per parked keep-alive connection (tracemalloc)

A connection is given a fake transport that swallows writes; its coroutine is
parked waiting for the next request, and requests are fed with
``data_received`` the way the event loop does. What is measured is prefork's
Python work per request (parse, checks, handler call, response bytes): the
syscalls and the event loop are left out, so this isolates the part that a
change to the hot path moves. Process time, best of 5 rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from prefork import log
from prefork.apps.native import NativeApp, exchange
from prefork.config import Config
from prefork.engine.connection import Connection
from prefork.engine.shared import Shared

REQUEST = b"GET /hello HTTP/1.1\r\nHost: localhost:8080\r\nUser-Agent: wrk\r\nAccept: */*\r\n\r\n"


def handle(method: str, query: str, args: Any, headers: Any, body: bytes, ctx: Any) -> Any:
    return "Hello, World!", 200, {"content-type": "text/plain"}


class NullTransport:
    def write(self, data: bytes) -> None:
        pass

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 40000) if name == "peername" else default

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        pass

    def abort(self) -> None:
        pass

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


EXTRA: dict[str, Any] = {}  # config keys from the flags (--json, --metrics)


def _state(backend: str, level: str) -> Shared:
    raw = {"http": backend, "log_level": level, "requests_per_connection": 10**9, **EXTRA}
    return Shared(Config.build(raw), NativeApp(handle))


async def _connection(state: Shared) -> Connection:
    conn = Connection(state)
    conn.connection_made(NullTransport())  # type: ignore[arg-type]

    async def loop() -> None:
        while True:
            await exchange(conn, state, "127.0.0.1", conn.count, None)

    asyncio.get_running_loop().create_task(loop())
    await asyncio.sleep(0)  # the coroutine parks, waiting for a request
    return conn


async def per_request(backend: str, level: str, n: int) -> float:
    state = _state(backend, level)
    state.start()
    conn = await _connection(state)
    best = float("inf")
    for _ in range(5):
        started = time.process_time()
        for _ in range(n):
            conn.data_received(REQUEST)
        best = min(best, (time.process_time() - started) / n)
        state.access.flush()
    return best * 1e6


async def per_connection(n: int) -> float:
    state = _state("httptools", "info")
    state.start()
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    conns = [await _connection(state) for _ in range(n)]
    for conn in conns:
        conn.data_received(REQUEST)
    await asyncio.sleep(0)
    gc.collect()
    after = tracemalloc.take_snapshot()
    grown = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
    return grown / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--access", action="store_true", help="access log on (to /dev/null)")
    parser.add_argument("--json", action="store_true", help='access_log_format = "json"')
    parser.add_argument("--metrics", action="store_true", help="count metrics (metrics_bind)")
    parser.add_argument("--memory", action="store_true", help="bytes per parked connection")
    parser.add_argument("-n", type=int, default=40000, help="requests per round")
    args = parser.parse_args()
    if args.memory:
        print(f"{uvloop.run(per_connection(1000)):.0f} bytes per parked keep-alive connection")
        return
    level = "access" if args.access else "info"
    if args.json:
        EXTRA["access_log_format"] = "json"
    if args.metrics:
        EXTRA["metrics_bind"] = "127.0.0.1:0"  # only counted here: nothing is bound
    if args.access:
        sys.stderr = open(os.devnull, "w")  # noqa: SIM115 - the access log's stream
    log.setup(level)
    for backend in ("httptools", "h11"):
        us = uvloop.run(per_request(backend, level, args.n))
        extra = "".join(f", {key} {value}" for key, value in EXTRA.items())
        print(f"{backend:9} {us:6.2f} us per keep-alive GET /hello (log level {level}{extra})")


if __name__ == "__main__":
    main()
