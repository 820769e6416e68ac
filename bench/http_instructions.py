"""Instructions per HTTP request in the server, prefork vs its peers (callgrind).

    python bench/http_instructions.py                                # AV and FAV: ASGI, FastAPI
    python bench/http_instructions.py --scenarios AV,WV,V1 --requests 4000
    python bench/http_instructions.py --servers prefork --scenarios FAV

The same scenarios as run.py (the same apps, heads and settings), counted
rather than timed: each server runs under ``valgrind --tool=callgrind``
(``callgrind.py``); after 3,000 requests to warm it up, the counters are
zeroed, a fixed number of requests is sent on the same 16 keep-alive
connections, and the counters are dumped. Reported: the user-space
instructions of the server's processes per request, and each peer's count
over prefork's. On this shared host a scenario's req/s ratio moves by 30 %
between runs; this count does not, so a change to the request path is
judged here first.

What it leaves out: the kernel (about a third of a worker's time on the
plain apps here), and thread switches (granian hands every request between
its Rust threads and Python's: time the count does not show).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import build
import heads
import servers
from callgrind import Counted
from servers import Launch

# scenario -> (what, app, varied heads): run.py's ids.
SCENARIOS = {
    "V1": ("the bench app, every server's own interface", "bench", True),
    "A1": ("the plain ASGI app, identical heads", "asgi", False),
    "AV": ("the plain ASGI app", "asgi", True),
    "WV": ("the plain WSGI app", "wsgi", True),
    "FAV": ("a FastAPI hello", "fastapi", True),
    "FLV": ("a Flask hello", "flask", True),
}
CONNECTIONS = 16
# Requests before the counters are zeroed: past what a server does only in
# its first minutes of varied traffic (prefork's head cache looks up and notes
# every head until 2,048 new ones in a row, then one in 32).
WARM = 3000
IDENTICAL = b"GET /hello HTTP/1.1\r\nHost: @HOST@\r\n\r\n"


class Client:
    """CONNECTIONS keep-alive connections, open across the warm-up and the measure."""

    def __init__(self) -> None:
        self.conns: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    async def open(self, port: int) -> None:
        for _ in range(CONNECTIONS):
            self.conns.append(await asyncio.open_connection(servers.HOST, port))

    async def send_all(self, requests: list[bytes]) -> None:
        """Every request in ``requests``, each connection taking every CONNECTIONS-th one."""
        await asyncio.gather(
            *(_exchange(r, w, requests[i::CONNECTIONS]) for i, (r, w) in enumerate(self.conns))
        )

    def close(self) -> None:
        for _, writer in self.conns:
            writer.close()


async def _exchange(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, todo: list[bytes]
) -> None:
    for head in todo:
        writer.write(head)
        status_and_fields = await reader.readuntil(b"\r\n\r\n")
        status = status_and_fields.split(b" ", 2)[1]
        if status != b"200":
            raise RuntimeError(f"answered {status_and_fields!r}")
        length = None
        for line in status_and_fields.split(b"\r\n"):
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        if length is None:  # (every app here answers with a Content-Length)
            raise RuntimeError(f"no Content-Length in {status_and_fields!r}")
        await reader.readexactly(length)


async def _counted_run(counted: Counted, varied: bool, n: int) -> int:
    """Warm up, then the instructions of ``n`` requests on the same connections."""
    client = Client()
    await client.open(counted.port)
    try:
        # The heads are distinct within a run, the warm-up's included, as
        # in run.py's 20,000.
        everything = request_heads(varied, WARM + n, counted.port)
        await client.send_all(everything[:WARM])
        await asyncio.to_thread(counted.zero)
        await client.send_all(everything[WARM:])
        return await asyncio.to_thread(counted.instructions)
    finally:
        client.close()


def request_heads(varied: bool, count: int, port: int) -> list[bytes]:
    host = f"{servers.HOST}:{port}"
    if varied:
        return [heads.for_host(h, host) for h in heads.generate(count)]
    return [heads.for_host(IDENTICAL, host)] * count


def measure(name: str, sid: str, n: int, workdir: Path) -> float:
    """Instructions per request of ``name`` in scenario ``sid``."""
    _, app, varied = SCENARIOS[sid]
    out = workdir / f"{name}-{sid}"
    launch = Launch(workers=1)
    counted = Counted(name, lambda port: servers.command(name, port, launch, out, app), out)
    try:
        return asyncio.run(_counted_run(counted, varied, n)) / n
    finally:
        counted.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--servers", default="prefork,granian,uvicorn")
    parser.add_argument("--scenarios", default="AV,FAV", help=", ".join(SCENARIOS))
    parser.add_argument("--requests", type=int, default=3000, help="requests measured")
    build.add_argument(parser)
    parser.add_argument(
        "--keep", type=Path, help="write the callgrind files here (for callgrind_annotate)"
    )
    args = parser.parse_args()
    names = [n.strip() for n in args.servers.split(",") if n.strip()]
    sids = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    for sid in sids:
        if sid not in SCENARIOS:
            parser.error(f"unknown scenario {sid!r}: one of {', '.join(SCENARIOS)}")
    for name in names:
        if name not in servers.SERVERS:
            parser.error(f"unknown server {name!r}: one of {', '.join(servers.SERVERS)}")
    if any(servers.SERVERS[n][1] for n in names) and not servers.VENV_PYTHON.exists():
        parser.error("the peers are not installed: run bench/run.py once (it installs them)")
    if any(n.startswith("prefork") for n in names):
        servers.PREFORK_PATH = build.pythonpath(args.build)
    rows: dict[str, dict[str, float | str]] = {sid: {} for sid in sids}
    with tempfile.TemporaryDirectory(prefix="http_instr-") as tmp:
        workdir = args.keep or Path(tmp)
        try:
            for sid in sids:
                app = SCENARIOS[sid][1]
                for name in names:
                    try:
                        servers.app_target(name, app)
                    except ValueError:
                        continue  # (a WSGI app on an ASGI-only peer: another row serves it)
                    try:
                        count = measure(name, sid, args.requests, workdir)
                    except (RuntimeError, OSError, asyncio.IncompleteReadError) as exc:
                        # (One server's failure is its row's, not the run's.)
                        rows[sid][name] = f"error: {type(exc).__name__}: {exc}".splitlines()[0]
                        print(f"{sid} {name}: {exc}", file=sys.stderr, flush=True)
                        continue
                    rows[sid][name] = count
                    print(f"{sid} {name}: {count:,.0f}", file=sys.stderr, flush=True)
        finally:
            servers.stop_all()
    print("| scenario | server | instructions per request | over prefork's |")
    print("|---|---|---:|---:|")
    for sid, row in rows.items():
        mine = row.get("prefork")
        for name, count in row.items():
            label = servers.SERVERS[name][0]
            if isinstance(count, str):
                print(f"| {sid} | {label} | {count} | |")
                continue
            ratio = f"{count / mine:.2f}x" if isinstance(mine, float) else ""
            print(f"| {sid} | {label} | {count:,.0f} | {ratio} |")


if __name__ == "__main__":
    main()
