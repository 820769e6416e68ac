"""WebSocket throughput: echo round trips and a broadcast fan-out, prefork vs uvicorn and granian.

    python bench/ws_bench.py                      # all servers, 3 rounds of 5 s per scenario
    python bench/ws_bench.py --duration 3 --servers prefork,uvicorn

Each server runs the plain ASGI app ``apps/ws_app.py`` with 1 worker, pinned
to core 0 (``taskset``); this load generator pins itself to core 1. Two
scenarios, each run bounded by ``--duration``; the servers of a scenario run
side by side and are measured in ``--rounds`` interleaved rounds (the row is
each server's median round; see ``run_rounds``):

- echo: 64 connections, each with one small text message (16 bytes) in
  flight; a reply sends the next. Reported: round trips per second.
- broadcast: 1,000 subscribers; a trigger connection asks the server to send
  one small text message to every subscriber, and the next broadcast starts
  when all 1,000 have it. Reported: messages delivered per second and the
  time for one broadcast to reach all (median and worst).

The load generator must not be the bottleneck, so it is not a WebSocket
library: each connection is a uvloop ``asyncio.Protocol`` that sends a
pre-built masked frame and counts the bytes of the server's replies, whose
frames have a known length (no compression is offered and server pings are
off). The first reply of each connection is checked byte for byte. Its CPU
is printed beside the server's (in % of one core); a client near 100 %
makes that row's figure a floor, not the server's rate.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psutil
import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent))
import build
import servers

HOST = servers.HOST
SERVER_CPU = "0"
CLIENT_CPU = 1
PAYLOAD = b"0123456789abcdef"
MASK = b"\x37\xfa\x21\x3d"
SUBSCRIBERS = 1000
ECHO_CONNECTIONS = 64
CONNECT_BATCH = 50  # connections opened at once (kept below every server's backlog)


def client_frame(payload: bytes) -> bytes:
    """A masked, final text frame (payload < 126 bytes), as a client must send it."""
    masked = bytes(b ^ MASK[i % 4] for i, b in enumerate(payload))
    return bytes([0x81, 0x80 | len(payload)]) + MASK + masked


def server_frame(payload: bytes) -> bytes:
    """The unmasked text frame a server sends for ``payload`` (< 126 bytes)."""
    return bytes([0x81, len(payload)]) + payload


ECHO_FRAME = client_frame(PAYLOAD)
ECHO_REPLY = server_frame(PAYLOAD)
DONE_REPLY = server_frame(b"done")


class Conn(asyncio.Protocol):
    """One client WebSocket: a raw handshake, then byte counting of known-size frames."""

    def __init__(self, path: str, port: int, frame_len: int, on_frame: Callable[[Conn], None]):
        self.request = (
            f"GET {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
        self.frame_len = frame_len
        self.on_frame = on_frame
        self.head = b""
        self.first = b""  # the first frame's bytes, checked by the caller
        self.pending = 0
        self.open = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's TCPTransport
        self.transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        if not self.open.done():
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                return
            status = self.head.split(b"\r\n", 1)[0]
            if b" 101 " not in status + b" ":
                self.open.set_exception(RuntimeError(f"handshake answered {status!r}"))
                return
            data = self.head[end + 4 :]
            self.open.set_result(None)
        if len(self.first) < self.frame_len:
            self.first += data[: self.frame_len - len(self.first)]
        self.pending += len(data)
        while self.pending >= self.frame_len:
            self.pending -= self.frame_len
            self.on_frame(self)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.open.done():
            self.open.set_exception(exc or ConnectionError("closed during the handshake"))


async def connect_all(
    port: int, path: str, n: int, frame_len: int, on_frame: Callable[[Conn], None]
) -> list[Conn]:
    loop = asyncio.get_running_loop()
    conns: list[Conn] = []
    for start in range(0, n, CONNECT_BATCH):
        batch = [
            Conn(path, port, frame_len, on_frame) for _ in range(min(CONNECT_BATCH, n - start))
        ]

        async def one(c: Conn) -> None:
            await loop.create_connection(lambda: c, HOST, port)
            await c.open

        await asyncio.wait_for(asyncio.gather(*(one(c) for c in batch)), 30)
        conns += batch
    return conns


def close_all(conns: list[Conn]) -> None:
    for c in conns:
        if c.transport is not None:
            c.transport.abort()


@dataclass
class Result:
    rate: float = 0.0  # echo: round trips/s; broadcast: messages delivered/s
    median_ms: float = 0.0  # broadcast only
    worst_ms: float = 0.0
    server_cpu: float = 0.0  # % of one core
    client_cpu: float = 0.0
    error: str = ""


class CpuWindow:
    """CPU of the server tree and of this process over a measured window."""

    def __init__(self, server: servers.Running):
        self.procs = server.tree()
        self.t0 = time.monotonic()
        self.s0 = self._server()
        self.c0 = self._client()

    def _server(self) -> float:
        total = 0.0
        for p in self.procs:
            with contextlib.suppress(psutil.Error):
                t = p.cpu_times()
                total += t.user + t.system
        return total

    @staticmethod
    def _client() -> float:
        r = resource.getrusage(resource.RUSAGE_SELF)
        return r.ru_utime + r.ru_stime

    def done(self, result: Result) -> None:
        wall = time.monotonic() - self.t0
        result.server_cpu = 100 * (self._server() - self.s0) / wall
        result.client_cpu = 100 * (self._client() - self.c0) / wall


async def echo(server: servers.Running, duration: float) -> Result:
    counter = [0]
    running = [True]

    def on_frame(c: Conn) -> None:
        counter[0] += 1
        if running[0] and c.transport is not None:
            c.transport.write(ECHO_FRAME)

    conns = await connect_all(server.port, "/echo", ECHO_CONNECTIONS, len(ECHO_REPLY), on_frame)
    try:
        # Warm-up, then the measured window, both with every connection busy.
        for c in conns:
            assert c.transport is not None
            c.transport.write(ECHO_FRAME)
        await asyncio.sleep(min(1.0, duration / 4))
        bad = [c.first for c in conns if c.first != ECHO_REPLY]
        if bad:
            return Result(error=f"echo answered {bad[0]!r}, expected {ECHO_REPLY!r}")
        window = CpuWindow(server)
        n0, t0 = counter[0], time.monotonic()
        await asyncio.sleep(duration)
        result = Result(rate=(counter[0] - n0) / (time.monotonic() - t0))
        window.done(result)
        running[0] = False
        return result
    finally:
        close_all(conns)


async def broadcast(server: servers.Running, duration: float) -> Result:
    loop = asyncio.get_running_loop()
    state = {"received": 0, "target": 0}
    all_in: list[asyncio.Future[None]] = [loop.create_future()]
    done_in: list[asyncio.Future[None]] = [loop.create_future()]

    def on_message(_: Conn) -> None:
        state["received"] += 1
        if state["received"] >= state["target"] and not all_in[0].done():
            all_in[0].set_result(None)

    def on_done(_: Conn) -> None:
        if not done_in[0].done():
            done_in[0].set_result(None)

    subs = await connect_all(server.port, "/fanout", SUBSCRIBERS, len(ECHO_REPLY), on_message)
    (trigger,) = await connect_all(server.port, "/broadcast", 1, len(DONE_REPLY), on_done)

    async def one(limit: float = 10.0) -> float:
        all_in[0], done_in[0] = loop.create_future(), loop.create_future()
        state["received"], state["target"] = 0, SUBSCRIBERS
        t0 = time.perf_counter()
        assert trigger.transport is not None
        trigger.transport.write(ECHO_FRAME)
        await asyncio.wait_for(asyncio.gather(all_in[0], done_in[0]), limit)
        return time.perf_counter() - t0

    try:
        # The 101 may go out before the app has registered its subscriber:
        # probe broadcasts until one reaches all of them (bounded).
        for _ in range(20):
            with contextlib.suppress(TimeoutError):
                await one(limit=2.0)
                break
            await asyncio.sleep(0.5)
        else:
            return Result(error="a broadcast never reached all subscribers")
        bad = [c.first for c in subs if c.first != ECHO_REPLY]
        if bad:
            return Result(error=f"broadcast delivered {bad[0]!r}, expected {ECHO_REPLY!r}")
        warm_until = time.monotonic() + min(1.0, duration / 4)
        while time.monotonic() < warm_until:
            await one()
        window = CpuWindow(server)
        times: list[float] = []
        t0 = time.monotonic()
        while time.monotonic() - t0 < duration:
            times.append(await one())
        elapsed = time.monotonic() - t0
        result = Result(
            rate=SUBSCRIBERS * len(times) / elapsed,
            median_ms=1000 * statistics.median(times),
            worst_ms=1000 * max(times),
        )
        window.done(result)
        return result
    finally:
        close_all([*subs, trigger])


# ---- servers -------------------------------------------------------------

PREFORK_TOML = """\
# ws_bench.py: no server pings (they would add frames the client does not
# count), no deflate (the client offers none anyway), room for 1,000 sockets.
connection_limit = 2048
open_connection_limit = 4096
backlog = 4096
ws_ping_interval = 0
ws_per_message_deflate = false
"""

LABELS = {
    "prefork": "prefork (ASGI)",
    "uvicorn": "uvicorn (websockets)",
    "granian": "granian (ASGI)",
}


def peer_python() -> str:
    return str(servers.VENV_PYTHON) if servers.VENV_PYTHON.exists() else sys.executable


def peer_granian() -> str:
    venv = servers.VENV / "bin" / "granian"
    return str(venv) if venv.exists() else (shutil.which("granian") or "granian")


def command(name: str, port: int, workdir: Path) -> list[str]:
    if name == "prefork":
        toml = workdir / "ws.toml"
        toml.write_text(PREFORK_TOML)
        return [
            sys.executable, "-m", "prefork", "run", "ws_app:app", "--interface", "asgi",
            "-b", f"{HOST}:{port}", "-w", "1", "-c", str(toml), "--log-level", "warning",
        ]  # fmt: skip
    if name == "uvicorn":
        return [
            peer_python(), "-m", "uvicorn", "ws_app:app", "--host", HOST, "--port", str(port),
            "--workers", "1", "--loop", "uvloop", "--http", "httptools", "--ws", "websockets",
            # 0 would make websockets ping without pause: an hour is "off" here.
            "--ws-ping-interval", "3600", "--ws-per-message-deflate", "false",
            "--no-access-log", "--log-level", "warning", "--backlog", "4096",
        ]  # fmt: skip
    if name == "granian":
        return [
            peer_granian(), "--interface", "asgi", "--host", HOST, "--port", str(port),
            "--workers", "1", "--http", "1", "--loop", "uvloop", "--ws",
            "--no-access-log", "--log-level", "warning", "--backlog", "4096",
            "--working-dir", str(servers.APPS), "ws_app:app",
        ]  # fmt: skip
    raise ValueError(f"unknown server {name!r} (prefork, uvicorn, granian)")


def start(name: str, workdir: Path, timeout: float = 30.0) -> servers.Running:
    """Start ``name`` pinned to SERVER_CPU; return once it answers HTTP."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = servers.free_port()
    argv = ["taskset", "-c", SERVER_CPU, *command(name, port, workdir)]
    path = servers.PREFORK_PATH if name == "prefork" else servers.REPO
    env = {**os.environ, "PYTHONPATH": str(path), "PYTHONUNBUFFERED": "1"}
    env.pop("VIRTUAL_ENV", None)
    log_path = workdir / "server.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            argv,
            cwd=servers.APPS,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            process_group=0,
        )
    server = servers.Running(name, proc, port, False, log_path, workdir)
    servers.REGISTRY.append(server)
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            servers.stop(server)
            raise RuntimeError(f"{name} exited with {proc.returncode}:\n{server.log_tail()}")
        with contextlib.suppress(OSError, http.client.HTTPException):
            servers.request(server, "GET", "/hello", timeout=1.0)
            server.tree()
            return server
        if time.monotonic() > deadline:
            servers.stop(server)
            raise RuntimeError(f"{name} did not answer within {timeout:.0f}s:\n{server.log_tail()}")
        time.sleep(0.05)


# ---- report --------------------------------------------------------------


def table(echo_rows: dict[str, Result], fan_rows: dict[str, Result], duration: float) -> str:
    def best_ratio(rows: dict[str, Result]) -> str:
        peers = [r.rate for n, r in rows.items() if n != "prefork" and not r.error]
        me = rows.get("prefork")
        if me is None or me.error or not peers:
            return "n/a"
        value = me.rate / max(peers)
        return f"{value:.2f}x ({'PASS' if value >= 1.5 else 'MISS'}, goal >= 1.5x)"

    lines = [
        f"Echo: {ECHO_CONNECTIONS} connections, {len(PAYLOAD)}-byte text messages, "
        f"one in flight each, {duration:g} s",
        "",
        "| server | round trips/s | server CPU | client CPU |",
        "|---|---:|---:|---:|",
    ]
    for name, r in echo_rows.items():
        if r.error:
            lines.append(f"| {LABELS[name]} | error: {r.error} | | |")
        else:
            lines.append(
                f"| {LABELS[name]} | {r.rate:,.0f} | {r.server_cpu:.0f} % | {r.client_cpu:.0f} % |"
            )
    lines += [
        "",
        f"prefork / best peer: {best_ratio(echo_rows)}",
        "",
        f"Broadcast: {SUBSCRIBERS:,} subscribers, one {len(PAYLOAD)}-byte text message each "
        f"per broadcast, back to back, {duration:g} s",
        "",
        "| server | messages delivered/s | one broadcast, median | worst "
        "| server CPU | client CPU |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, r in fan_rows.items():
        if r.error:
            lines.append(f"| {LABELS[name]} | error: {r.error} | | | | |")
        else:
            lines.append(
                f"| {LABELS[name]} | {r.rate:,.0f} | {r.median_ms:.1f} ms | {r.worst_ms:.1f} ms "
                f"| {r.server_cpu:.0f} % | {r.client_cpu:.0f} % |"
            )
    lines += ["", f"prefork / best peer: {best_ratio(fan_rows)}"]
    return "\n".join(lines)


def run_rounds(
    names: list[str], scenario: str, duration: float, rounds: int, workdir: Path
) -> dict[str, Result]:
    """Every server started once for ``scenario``, then measured in ``rounds`` rounds.

    Each round measures every server once, the order turning by one each
    round, so that the machine's drift in speed over minutes falls on every
    server alike (run one after the other, a server that happens to run in a
    fast minute gains on one that runs in a slow one). The servers not being
    measured sit idle. A server's row is its median round (by rate).
    """
    coro = echo if scenario == "echo" else broadcast
    running: dict[str, servers.Running] = {}
    rows: dict[str, Result] = {}
    measured: dict[str, list[Result]] = {name: [] for name in names}
    try:
        for name in names:
            try:
                running[name] = start(name, workdir / f"{name}-{scenario}")
            except RuntimeError as exc:
                rows[name] = Result(error=str(exc).splitlines()[0])
        for r in range(rounds):
            order = list(running)
            turn = r % len(order) if order else 0
            for name in order[turn:] + order[:turn]:
                try:
                    run = asyncio.wait_for(coro(running[name], duration), duration + 60)
                    result = uvloop.run(run)
                except (OSError, TimeoutError, RuntimeError) as exc:
                    rows[name] = Result(error=f"{type(exc).__name__}: {exc}")
                    servers.stop(running.pop(name))
                    continue
                measured[name].append(result)
    finally:
        for server in running.values():
            servers.stop(server)
    for name in running:
        results = sorted(measured[name], key=lambda m: m.rate)
        rows[name] = results[(len(results) - 1) // 2]  # the median (the lower of two)
    return {name: rows[name] for name in names}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=5.0, help="seconds measured per run")
    parser.add_argument("--rounds", type=int, default=3, help="measured runs per server")
    parser.add_argument("--servers", default="prefork,uvicorn,granian")
    build.add_argument(parser)
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error("--rounds must be >= 1")
    names = [n.strip() for n in args.servers.split(",") if n.strip()]
    for name in names:
        if name not in LABELS:
            parser.error(f"unknown server {name!r} (prefork, uvicorn, granian)")
    if shutil.which("taskset") is None:
        parser.error("taskset not found (apt-get install util-linux)")
    if "prefork" in names:
        servers.PREFORK_PATH = build.pythonpath(args.build)
    os.sched_setaffinity(0, {CLIENT_CPU})
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 4 * SUBSCRIBERS:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 8 * SUBSCRIBERS), hard))
    echo_rows: dict[str, Result] = {}
    fan_rows: dict[str, Result] = {}
    with tempfile.TemporaryDirectory(prefix="ws_bench-") as tmp:
        try:
            echo_rows = run_rounds(names, "echo", args.duration, args.rounds, Path(tmp))
            fan_rows = run_rounds(names, "broadcast", args.duration, args.rounds, Path(tmp))
        finally:
            servers.stop_all()
    print(table(echo_rows, fan_rows, args.duration))


if __name__ == "__main__":
    main()
