"""Instructions per WebSocket message in the server, prefork vs its peers (callgrind).

    python bench/ws_instructions.py                       # echo and broadcast, all servers
    python bench/ws_instructions.py --servers prefork --echo 4000

Wall-clock rates need a quiet machine; this does not. Each server of
``ws_bench.py`` (same app, same settings) runs under ``valgrind --tool=callgrind``;
after the connections are open and warm, the counters are zeroed
(``callgrind_control -z``), a fixed number of echo round trips (64
connections) or broadcast messages (to 1,000 subscribers) is run, and the
counters are dumped. Reported: user-space instructions of the server's
processes (all threads) per message; the kernel's share (the syscalls, alike
for every server on uvloop) is not counted.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path

import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent))
import build
import servers
import ws_bench
from callgrind import Counted


async def echo_round_trips(counted: Counted, n: int) -> int:
    port = counted.port
    done = asyncio.get_running_loop().create_future()
    left = [0]

    def on_frame(c: ws_bench.Conn) -> None:
        left[0] -= 1
        if left[0] >= ws_bench.ECHO_CONNECTIONS and c.transport is not None:
            c.transport.write(ws_bench.ECHO_FRAME)
        elif left[0] <= 0 and not done.done():
            done.set_result(None)

    conns = await ws_bench.connect_all(
        port, "/echo", ws_bench.ECHO_CONNECTIONS, len(ws_bench.ECHO_REPLY), on_frame
    )
    total = 0
    try:
        for phase in ("warm", "measure"):
            left[0] = n
            done = asyncio.get_running_loop().create_future()
            if phase == "measure":
                await asyncio.to_thread(counted.zero)
            for c in conns:
                assert c.transport is not None
                c.transport.write(ws_bench.ECHO_FRAME)
            await asyncio.wait_for(done, 600)
            if phase == "measure":
                total = await asyncio.to_thread(counted.instructions)
    finally:
        ws_bench.close_all(conns)
    return total


async def broadcasts(counted: Counted, n: int) -> int:
    port = counted.port
    loop = asyncio.get_running_loop()
    state = {"received": 0}
    waiters: list[asyncio.Future[None]] = [loop.create_future(), loop.create_future()]

    def on_message(_: ws_bench.Conn) -> None:
        state["received"] += 1
        if state["received"] >= ws_bench.SUBSCRIBERS and not waiters[0].done():
            waiters[0].set_result(None)

    def on_done(_: ws_bench.Conn) -> None:
        if not waiters[1].done():
            waiters[1].set_result(None)

    subs = await ws_bench.connect_all(
        port, "/fanout", ws_bench.SUBSCRIBERS, len(ws_bench.ECHO_REPLY), on_message
    )
    (trigger,) = await ws_bench.connect_all(
        port, "/broadcast", 1, len(ws_bench.DONE_REPLY), on_done
    )

    async def one() -> None:
        waiters[:] = [loop.create_future(), loop.create_future()]
        state["received"] = 0
        assert trigger.transport is not None
        trigger.transport.write(ws_bench.ECHO_FRAME)
        await asyncio.wait_for(asyncio.gather(*waiters), 600)

    try:
        for _ in range(30):  # until every subscriber is registered (bounded)
            try:
                await asyncio.wait_for(asyncio.shield(one()), 20)
                break
            except TimeoutError:
                continue
        await asyncio.to_thread(counted.zero)
        for _ in range(n):
            await one()
        return await asyncio.to_thread(counted.instructions)
    finally:
        ws_bench.close_all([*subs, trigger])


def measure(name: str, scenario: str, n: int, workdir: Path) -> float:
    # (prefork's row runs the build ws_bench.py measures: servers.PREFORK_PATH.)
    out = workdir / f"{name}-{scenario}"
    counted = Counted(name, lambda port: ws_bench.command(name, port, out), out)
    try:
        if scenario == "echo":
            return uvloop.run(echo_round_trips(counted, n)) / n
        total = uvloop.run(broadcasts(counted, n))
        return total / (n * ws_bench.SUBSCRIBERS)
    finally:
        counted.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--servers", default="prefork,uvicorn,granian")
    parser.add_argument("--echo", type=int, default=4000, help="echo round trips measured")
    parser.add_argument("--broadcasts", type=int, default=5, help="broadcasts measured")
    build.add_argument(parser)
    args = parser.parse_args()
    names = [n.strip() for n in args.servers.split(",") if n.strip()]
    if "prefork" in names:
        servers.PREFORK_PATH = build.pythonpath(args.build)
    rows: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="ws_instr-") as tmp:
        try:
            for name in names:
                rows[name] = {
                    "echo": measure(name, "echo", args.echo, Path(tmp)),
                    "broadcast": measure(name, "broadcast", args.broadcasts, Path(tmp)),
                }
        finally:
            servers.stop_all()
    print("| server | instructions per echo round trip | per broadcast message |")
    print("|---|---:|---:|")
    for name, row in rows.items():
        print(f"| {ws_bench.LABELS[name]} | {row['echo']:,.0f} | {row['broadcast']:,.0f} |")
    me = rows.get("prefork")
    peers = {n: r for n, r in rows.items() if n != "prefork"}
    if me and peers:
        for kind in ("echo", "broadcast"):
            best = min(r[kind] for r in peers.values())
            print(f"{kind}: the best peer needs {best / me[kind]:.2f}x prefork's instructions")


if __name__ == "__main__":
    main()
