"""Micro-benchmark of prefork's per-request Python cost, without sockets.

    python bench/micro.py                 # varied heads: the cost split by stage, both parsers
    python bench/micro.py --access        # the same with the access log on (to /dev/null)
    python bench/micro.py --access --json # ... as JSON lines (access_log_format = "json")
    python bench/micro.py --metrics       # with the metrics counted (metrics_bind set)
    python bench/micro.py --memory        # bytes per parked keep-alive connection (tracemalloc)
    python bench/micro.py -n 5000         # fewer distinct heads per round
    python bench/micro.py --asgi          # the ASGI path (bench/apps/asgi_app.py) split by stage
    python bench/micro.py --asgi --asgi-app fastapi                # ... with the FastAPI hello
    python bench/micro.py --asgi-whole varied --rounds 1 -n 2000   # that path alone (callgrind)

The heads are those of the varied-heads scenario (``heads.py``: every head
different, ~600 bytes), so prefork's cache of parsed heads never hits, as
behind a load balancer. Per request, in microseconds of process time (best of
5 rounds over all the heads):

- parse: the parser backend alone (llhttp or h11) turning a head into
  method, target, version and raw header fields;
- checks: the rest of the request reader (framing, the shared checks on the
  raw bytes, the semantic checks of ``build_request``), i.e. the reader's
  cost less parse and less the header dict below;
- arguments: what the handler is given, built from a parsed head: the header
  dict (the bare cost of ``{name.lower(): value}`` on the same fields) and
  the query args (``parse_args``);
- response: the rest of the whole path, i.e. the handler call, the response
  bytes and their write, the exchange and connection bookkeeping. The whole
  path runs a real ``Connection`` with a transport that swallows writes, its
  coroutine parked and fed with ``data_received`` as the event loop does (no
  syscalls, no event loop turns); "identical" is the same path with one
  repeated head (the head cache hits).

The ASGI path (``--asgi``): the plain ASGI app of the benchmark, or the
FastAPI hello (``--asgi-app fastapi``), awaited by ``AsgiApp.exchange`` on a
real ``Connection`` whose coroutine is woken per request (one event loop
turn each, as on a socket), with the GC frozen after set-up as in a worker;
split into the reader, the scope, the forwarded fields and the rest (app
call, events, response bytes, write, the loop turn). Instructions per
request: run ``--asgi-whole varied --rounds 1`` under ``valgrind
--tool=callgrind`` (the interpreter binary itself, not a pyenv shim) with
``-n 2000`` and ``-n 4000``; the difference of the totals / 2000.

Only the public pieces of prefork are used, imported in one place below; when
the engine's modules move, the whole-path rows say so and the sans-I/O stages
still run.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import sys
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import uvloop

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))
sys.path.insert(0, str(BENCH))

import heads  # noqa: E402

# -- prefork's pieces: every import of prefork is here -----------------------
from prefork import log  # noqa: E402
from prefork.apps.native import NativeApp, exchange  # noqa: E402
from prefork.config import Config  # noqa: E402
from prefork.engine.connection import Connection  # noqa: E402
from prefork.engine.shared import Shared  # noqa: E402
from prefork.http.parsers import make_parser  # noqa: E402
from prefork.http.protocol import RequestReader  # noqa: E402
from prefork.http.request import Limits, build_request, parse_args  # noqa: E402

WHOLE_PATH_MISSING: str | None = None
# -----------------------------------------------------------------------------

IDENTICAL = b"GET /hello HTTP/1.1\r\nHost: localhost:8080\r\nUser-Agent: wrk\r\nAccept: */*\r\n\r\n"
ROUNDS = 5


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


def best_per_item(items: list[Any], work: Callable[[list[Any]], object]) -> float:
    """Microseconds of process time per item of ``work(items)``, best of ROUNDS."""
    best = float("inf")
    for _ in range(ROUNDS):
        started = time.process_time()
        work(items)
        best = min(best, (time.process_time() - started) / len(items))
    return best * 1e6


EXTRA: dict[str, Any] = {}  # config keys from the flags (--json, --metrics)


def _config(backend: str, level: str = "info") -> Any:
    raw = {"http": backend, "log_level": level, "requests_per_connection": 10**9, **EXTRA}
    return Config.build(raw)


def sans_io_stages(backend: str, varied: list[bytes]) -> dict[str, float]:
    """parse, reader (all of reading a head), bare header dict, query args: us per head."""
    cfg = _config(backend)
    limits = Limits.from_config(cfg)
    parser = make_parser(backend)
    parsed = [parser.parse(h) for h in varied]
    check_fields = not parser.strict_fields

    def parse(items: list[bytes]) -> None:
        for h in items:
            parser.parse(h)

    def read(items: list[bytes]) -> None:
        reader = RequestReader(parser, limits)  # no head cache: every head is fresh
        for h in items:
            reader.feed(h)
            reader.take()

    def header_dict(items: list[Any]) -> None:
        for _method, _target, _version, raw, _known in items:
            {name.decode("latin-1").lower(): value.decode("latin-1") for name, value in raw}

    requests = [build_request(m, t, v, raw, limits, check_fields) for m, t, v, raw, _ in parsed]

    def query_args(items: list[Any]) -> None:
        for req in items:
            parse_args(req.query)

    return {
        "parse": best_per_item(varied, parse),
        "reader": best_per_item(varied, read),
        "dict": best_per_item(parsed, header_dict),
        "args": best_per_item(requests, query_args),
    }


async def _connection(state: Any) -> Any:
    conn = Connection(state)
    conn.connection_made(NullTransport())

    async def loop() -> None:
        while True:
            await exchange(conn, state, "127.0.0.1", conn.count, None)

    asyncio.get_running_loop().create_task(loop())
    await asyncio.sleep(0)  # the coroutine parks, waiting for a request
    return conn


async def whole_path(backend: str, level: str, items: list[bytes]) -> float:
    """us per request through a Connection, fed ``items`` in turn."""
    state = Shared(_config(backend, level), NativeApp(handle))
    state.start()
    conn = await _connection(state)
    best = float("inf")
    for _ in range(ROUNDS):
        started = time.process_time()
        for data in items:
            conn.data_received(data)
        best = min(best, (time.process_time() - started) / len(items))
        state.access.flush()
    return best * 1e6


async def per_connection(n: int) -> float:
    state = Shared(_config("httptools"), NativeApp(handle))
    state.start()
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    conns = [await _connection(state) for _ in range(n)]
    for conn in conns:
        conn.data_received(IDENTICAL)
    await asyncio.sleep(0)
    gc.collect()
    after = tracemalloc.take_snapshot()
    grown = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
    return grown / n


# -- WSGI (issue 18): the per-request path of ``interface = "wsgi"`` ----------
#
#     python bench/micro.py --wsgi            # plain app and Flask, varied and identical heads
#     python bench/micro.py --wsgi-requests N [--flask] [--identical]
#         only the whole path, N requests; for callgrind, instructions per request are
#         the difference of two runs over the difference of their N:
#         valgrind --tool=callgrind --callgrind-out-file=/dev/null python bench/micro.py \
#             --wsgi-requests 500    (then 2500)
#
# Stages, us of process time per request (all threads), best of ROUNDS:
# - reader: the Connection's RequestReader (head cache as in a worker);
# - environ: ``request_environ`` from the parsed request;
# - app: the app alone, with a start_response that does nothing;
# - response: the rest of ``wsgi_call.Call.run`` (start_response's checks,
#   the head and body bytes), i.e. Call.run less the app;
# - hand-off: the whole path less all of the above: the connection's wake-up,
#   the exchange, the pool thread's queue and the loop's wake-up back, the write,
#   the trusted proxy's X-Forwarded-* fields (127.0.0.1 is trusted by default),
#   and the collector's work on the requests in flight.
# The whole path runs WSGI_CONNECTIONS real Connections over a transport
# that counts writes, each fed one request per round as wrk's connections do,
# with the interface's real thread pool and event loop.

WSGI_CONNECTIONS = 50
WSGI_THREADS = 0  # --wsgi-threads: the pool's size (0: the wsgi_threads default)
CALLGRIND_HEADS = 4000


class WsgiTransport(NullTransport):
    """Swallows writes, counting them; resolves ``waiter`` at ``target`` writes."""

    def __init__(self, counter: list[Any]) -> None:
        self.counter = counter

    def write(self, data: bytes) -> None:
        counter = self.counter
        counter[0] += 1
        if counter[0] >= counter[1] and not counter[2].done():
            counter[2].set_result(None)


def _wsgi_apps() -> dict[str, Any]:
    sys.path.insert(0, str(BENCH / "apps"))
    import flask_app  # (bench/apps is on sys.path only now)
    import wsgi_app

    return {"plain": wsgi_app.app, "flask": flask_app.app}


async def _wsgi_whole_path(app: Any, items: list[bytes], rounds: int) -> float:
    """us per request (process time, all threads) of ``items`` through real Connections."""
    from prefork.apps.wsgi import WsgiApp

    cfg = _config("httptools")
    wsgi = WsgiApp(app, cfg, "bench")
    if WSGI_THREADS:
        wsgi.threads = WSGI_THREADS
    state = Shared(cfg, wsgi)
    state.start()
    await wsgi.startup()
    loop = asyncio.get_running_loop()
    counter: list[Any] = [0, 0, loop.create_future()]
    conns = []
    tasks = []
    for _ in range(WSGI_CONNECTIONS):
        conn = Connection(state)
        conn.connection_made(WsgiTransport(counter))
        conns.append(conn)

        async def serve(conn: Connection = conn) -> None:
            while await wsgi.exchange(conn) == "keep-alive":
                pass

        tasks.append(loop.create_task(serve()))
    await asyncio.sleep(0)
    best = float("inf")
    per_round = len(items) // WSGI_CONNECTIONS * WSGI_CONNECTIONS
    for _ in range(rounds):
        started = time.process_time()
        for base in range(0, per_round, WSGI_CONNECTIONS):
            counter[1] = counter[0] + WSGI_CONNECTIONS
            counter[2] = loop.create_future()
            for i, conn in enumerate(conns):
                conn.data_received(items[base + i])
            await counter[2]
        best = min(best, (time.process_time() - started) / per_round)
    for conn in conns:
        conn.abort()
    await wsgi.shutdown()
    return best * 1e6


async def _wsgi_stages(app: Any, items: list[bytes]) -> dict[str, float]:
    """reader, environ, app, Call.run: us per request, on this thread (no loop needed)."""
    from prefork.apps.wsgi import WsgiApp
    from prefork.apps.wsgi_call import Call
    from prefork.apps.wsgi_environ import ConnectionEnviron, request_environ

    cfg = _config("httptools")
    wsgi = WsgiApp(app, cfg, "bench")
    state = Shared(cfg, wsgi)

    def read(heads_: list[bytes]) -> None:
        # (The requests are dropped as read: kept, they would make the
        # collector's work part of this stage.)
        reader = RequestReader(state.head_parser, state.limits, state.head_cache)
        for h in heads_:
            reader.feed(h)
            reader.take()

    reader = RequestReader(state.head_parser, state.limits, state.head_cache)
    requests = []
    for h in items:
        reader.feed(h)
        requests.append(reader.take())
    conn = Connection(state)
    conn.connection_made(NullTransport())
    env = ConnectionEnviron("", "http", "127.0.0.1", ("127.0.0.1", 40000), ("127.0.0.1", 8080))

    def environs(reqs: list[Any]) -> None:
        for req in reqs:
            request_environ(env, req)

    def nothing(status: str, headers: list[Any], exc_info: Any = None) -> Any:
        return None

    def bare_app(reqs: list[Any]) -> None:
        for req in reqs:
            app(request_environ(env, req), nothing)

    def call(reqs: list[Any]) -> None:
        for req in reqs:
            Call(wsgi, conn, req, request_environ(env, req), True).run()

    st = {
        "reader": best_per_item(items, read),
        "environ": best_per_item(requests, environs),
    }
    st["app"] = best_per_item(requests, bare_app) - st["environ"]
    st["call"] = best_per_item(requests, call) - st["environ"]
    return st


def wsgi_report(count: int) -> list[str]:
    varied = [heads.for_host(h, "127.0.0.1:8080") for h in heads.generate(count)]
    lines = []
    for name, app in _wsgi_apps().items():
        for kind, items in (("varied", varied), ("identical", [IDENTICAL] * count)):
            st = uvloop.run(_wsgi_stages(app, items))
            whole = uvloop.run(_wsgi_whole_path(app, items, ROUNDS))
            rest = whole - st["reader"] - st["environ"] - st["call"]
            lines += [
                f"WSGI {name} app, {kind} heads ({count}, {WSGI_CONNECTIONS} connections),"
                " us per request",
                f"  reader     {st['reader']:6.2f}   RequestReader feed + take",
                f"  environ    {st['environ']:6.2f}   request_environ",
                f"  app        {st['app']:6.2f}   the app alone",
                f"  response   {st['call'] - st['app']:6.2f}   start_response, head and body"
                " (Call.run - app)",
                f"  hand-off   {rest:6.2f}   the rest: wake-ups, exchange, pool, write,"
                " forwarded fields, GC (whole - the stages)",
                f"  whole path {whole:6.2f}",
            ]
    return lines


def wsgi_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--wsgi", action="store_true", help="the WSGI path, by stage")
    parser.add_argument(
        "--wsgi-requests", type=int, default=0, help="only the WSGI whole path, N requests"
    )
    parser.add_argument("--flask", action="store_true", help="with --wsgi-requests: Flask")
    parser.add_argument("--identical", action="store_true", help="with --wsgi-requests")
    parser.add_argument("--wsgi-threads", type=int, default=0, help="the WSGI pool's size")


def wsgi_main(args: argparse.Namespace) -> bool:
    """Run what the WSGI flags ask for; False when they ask for nothing."""
    global WSGI_THREADS  # a flag of this script
    WSGI_THREADS = args.wsgi_threads
    if args.wsgi_requests:
        log.setup("info")
        app = _wsgi_apps()["flask" if args.flask else "plain"]
        n = max(args.wsgi_requests, WSGI_CONNECTIONS)
        if args.identical:
            items = [IDENTICAL] * n
        else:
            # Always as many heads made: only the requests differ between two runs.
            made = heads.generate(max(n, CALLGRIND_HEADS))
            items = [heads.for_host(h, "127.0.0.1:8080") for h in made[:n]]
        uvloop.run(_wsgi_whole_path(app, items, 1))
        return True
    if args.wsgi:
        log.setup("info")
        print("\n".join(wsgi_report(args.n)))
        return True
    return False


def report(backend: str, level: str, count: int) -> list[str]:
    varied = [heads.for_host(h, "127.0.0.1:8080") for h in heads.generate(count)]
    st = sans_io_stages(backend, varied)
    checks = st["reader"] - st["parse"] - st["dict"]
    arguments = st["dict"] + st["args"]
    lines = [
        f"{backend}: varied heads ({count} distinct, ~{sum(map(len, varied)) // count} bytes),"
        f" us per request",
        f"  parse      {st['parse']:6.2f}   the {backend} backend alone",
        f"  checks     {checks:6.2f}   framing, raw-byte and semantic checks"
        f" (reader {st['reader']:.2f} - parse - header dict)",
        f"  arguments  {arguments:6.2f}   header dict {st['dict']:.2f} + query args"
        f" {st['args']:.2f}",
    ]
    if WHOLE_PATH_MISSING is not None:
        lines.append(f"  response   (whole path not available: {WHOLE_PATH_MISSING})")
        return lines
    whole = uvloop.run(whole_path(backend, level, varied))
    same = uvloop.run(whole_path(backend, level, [IDENTICAL] * count))
    lines += [
        f"  response   {whole - st['reader'] - st['args']:6.2f}   handler call, response bytes,"
        " write, exchange (whole - reader - query args)",
        f"  whole path {whole:6.2f}   (identical heads, cache hits: {same:.2f}; log level {level}"
        + "".join(f", {key} {value}" for key, value in EXTRA.items())
        + ")",
    ]
    return lines


# -- the ASGI path --------------------------------------------------------------
# The plain ASGI app of the benchmark (bench/apps/asgi_app.py) through
# AsgiApp.exchange on a real Connection. Unlike the native handler it is not
# answered from the protocol callback: each request wakes the connection's
# coroutine, so each one here costs one event loop turn too, as on a socket.


ASGI_APPS = {"plain": "asgi_app", "fastapi": "fastapi_app"}  # modules in bench/apps
ASGI_APP = "plain"


def _asgi_pieces() -> tuple[Any, Any, Any]:
    sys.path.insert(0, str(BENCH / "apps"))
    import importlib

    from prefork.apps.asgi import AsgiApp
    from prefork.apps.asgi_scope import conn_scope, http_scope

    module = importlib.import_module(ASGI_APPS[ASGI_APP])
    return module.app, AsgiApp, (conn_scope, http_scope)


class CountingTransport(NullTransport):
    def __init__(self) -> None:
        self.writes = 0
        self.closed = False

    def write(self, data: bytes) -> None:
        self.writes += 1

    def close(self) -> None:
        self.closed = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "sockname":
            return ("127.0.0.1", 8080)
        return super().get_extra_info(name, default)


async def asgi_whole_path(items: list[bytes]) -> float:
    """us per request of the ASGI app through a Connection, fed ``items`` in turn."""
    app, asgi_app_cls, _ = _asgi_pieces()
    cfg = _config("httptools")
    interface = asgi_app_cls(app, "asgi_app:app", cfg)
    await interface.startup()
    state = Shared(cfg, interface)
    state.start()
    conn = Connection(state)
    transport = CountingTransport()
    conn.connection_made(transport)

    async def serve() -> None:
        while await interface.exchange(conn) == "keep-alive":
            pass

    loop = asyncio.get_running_loop()
    task = loop.create_task(serve())
    await asyncio.sleep(0)  # parked, waiting for a request
    # What the worker does once booted: the set-up out of the collector's way.
    gc.collect()
    gc.freeze()
    best = float("inf")
    for _ in range(ROUNDS):
        started = time.process_time()
        for data in items:
            before = transport.writes
            # From a callback of the loop, as a socket's data comes (not from a task).
            loop.call_soon(conn.data_received, data)
            for _turn in range(10):  # one loop turn: the coroutine answers
                await asyncio.sleep(0)
                if transport.writes != before:
                    break
            else:
                raise RuntimeError("the ASGI app did not answer")
        best = min(best, (time.process_time() - started) / len(items))
    gc.unfreeze()
    task.cancel()
    await interface.shutdown()
    return best * 1e6


def asgi_scope_stage(varied: list[bytes]) -> dict[str, float]:
    """The scope (and the forwarded fields) of fresh requests: us per request."""
    _, _, (conn_scope, http_scope) = _asgi_pieces()
    from prefork.http.forwarded import Trust, resolve

    cfg = _config("httptools")
    limits = Limits.from_config(cfg)
    parser = make_parser("httptools")
    reqs = [build_request(*parser.parse(h)[:4], limits, False) for h in varied]
    info = conn_scope(CountingTransport(), ("127.0.0.1", 40000), None, None)
    asgi = {"version": "3.0", "spec_version": "2.5"}
    trust = Trust(cfg.forwarded_allow_ips)

    def scope(items: list[Any]) -> None:
        for req in items:
            http_scope(req, info, "", {}, asgi)

    def forwarded(items: list[Any]) -> None:
        for req in items:
            resolve(req.headers, trust)

    return {"scope": best_per_item(reqs, scope), "forwarded": best_per_item(reqs, forwarded)}


def asgi_report(count: int) -> list[str]:
    varied = [heads.for_host(h, "127.0.0.1:8080") for h in heads.generate(count)]
    reader = sans_io_stages("httptools", varied)["reader"]
    st = asgi_scope_stage(varied)
    whole = uvloop.run(asgi_whole_path(varied))
    same = uvloop.run(asgi_whole_path([IDENTICAL] * count))
    rest = whole - reader - st["scope"] - st["forwarded"]
    return [
        f"asgi (httptools, {ASGI_APPS[ASGI_APP]}): varied heads ({count} distinct), us per request",
        f"  reader     {reader:6.2f}   the request reader (parse, checks, header dict)",
        f"  scope      {st['scope']:6.2f}   http_scope of a fresh request",
        f"  forwarded  {st['forwarded']:6.2f}   the trusted proxy's fields (X-Forwarded-*)",
        f"  app+resp   {rest:6.2f}   app call, receive/send events, response bytes, write,"
        " loop turn (whole - the above)",
        f"  whole path {whole:6.2f}   (identical heads, cache hits: {same:.2f})",
    ]


def main() -> None:
    global ROUNDS, ASGI_APP
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    wsgi_arguments(parser)
    parser.add_argument("--access", action="store_true", help="access log on (to /dev/null)")
    parser.add_argument("--json", action="store_true", help='access_log_format = "json"')
    parser.add_argument("--metrics", action="store_true", help="count metrics (metrics_bind)")
    parser.add_argument("--memory", action="store_true", help="bytes per parked connection")
    parser.add_argument("--asgi", action="store_true", help="the ASGI path (asgi_report)")
    parser.add_argument(
        "--asgi-app", choices=tuple(ASGI_APPS), default="plain", help="the app of --asgi*"
    )
    parser.add_argument(
        "--asgi-whole",
        choices=("varied", "identical"),
        help="only the ASGI whole path, on -n heads (for callgrind: the difference of two -n)",
    )
    parser.add_argument(
        "--rounds", type=int, default=ROUNDS, help="rounds per measure, best kept (5)"
    )
    parser.add_argument(
        "-n", type=int, default=heads.DEFAULT_COUNT, help="distinct heads per round (20000)"
    )
    args = parser.parse_args()
    ROUNDS = args.rounds
    ASGI_APP = args.asgi_app
    if args.asgi_whole:
        log.setup("info")
        # At least 4,000 heads made whatever -n: the same set-up cost for two
        # runs whose difference callgrind is to count (-n 2000 and -n 4000).
        made = [heads.for_host(h, "127.0.0.1:8080") for h in heads.generate(max(args.n, 4000))]
        items = made[: args.n] if args.asgi_whole == "varied" else [IDENTICAL] * args.n
        print(f"{uvloop.run(asgi_whole_path(items)):.2f} us per request")
        return
    if args.asgi:
        log.setup("info")
        print("\n".join(asgi_report(args.n)))
        return
    if args.memory:
        if WHOLE_PATH_MISSING is not None:
            raise SystemExit(f"the engine is not importable: {WHOLE_PATH_MISSING}")
        print(f"{uvloop.run(per_connection(1000)):.0f} bytes per parked keep-alive connection")
        return
    if wsgi_main(args):
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
        print("\n".join(report(backend, level, args.n)))


if __name__ == "__main__":
    main()
