"""prefork's side-by-side benchmark: prefork, its peers, nginx and the design's ceiling.

    python bench/run.py                       # the full matrix: RESULTS.md, results.png
    python bench/run.py --quick --servers prefork,ceiling    # S1, one 2 s run: a smoke test
    python bench/run.py --scenarios S1,S3 --servers prefork,granian --runs 2 --duration 5

A partial run (--quick, --scenarios or --servers) writes bench/out/ instead of
RESULTS.md. The peers are installed into bench/.venv from
bench/requirements-peers.txt when a selected server needs them; nginx and wrk
come from Debian's packages. See bench/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import hashlib
import importlib.metadata
import json
import os
import platform
import resource
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import build
import heads
import servers
from measure import Load, WrkResult, memory_profile, run_wrk, summarise, wait_quiet
from report import render
from servers import BENCH, REPO, SERVERS, VENV, VENV_PYTHON, Launch

ALL = tuple(SERVERS)
MAIN = ("prefork", "uvicorn", "granian", "gunicorn", "nginx")
# Every Python peer and nginx: the varied-heads scenarios run them all.
PEERS = ("uvicorn", "granian", "granian-wsgi", "gunicorn", "gunicorn-gthread")
ASGI_ROWS = ("prefork", "granian", "uvicorn")
WSGI_ROWS = ("prefork", "granian-wsgi", "gunicorn-gthread")


@dataclass
class Scenario:
    sid: str
    title: str
    short: str
    servers: tuple[str, ...]
    load: Load | None = None  # None: the memory scenario
    workers: int = 1
    pinned: bool = True
    tls: bool = False
    check: str = "hello"
    app: str = "bench"  # servers.APP_TARGETS: the servers' own apps, or one app for all
    varied: bool = False  # every request head different (heads.py), else wrk's one request
    extra: dict = field(default_factory=dict)


def _app_pair(sid: str, what: str, short: str, rows: tuple[str, ...], app: str) -> list[Scenario]:
    """An app-interface scenario on identical heads (``sid``1) and on varied heads (``sid``V)."""
    return [
        Scenario(f"{sid}1", f"{what}, identical heads, 1 worker", f"{short}", rows, Load(),
                 app=app),
        Scenario(f"{sid}V", f"{what}, every request head different, 1 worker", f"{short} varied",
                 rows, Load(), app=app, varied=True, check="varied"),
    ]  # fmt: skip


VARIED = "every request head different (20,000 heads of ~600 bytes)"
SCENARIOS = {
    s.sid: s
    for s in (
        Scenario("V1", f"{VARIED}, keep-alive `GET /hello?..`, 1 worker", "varied heads",
                 ("prefork", "prefork-pure", "prefork-h11", "prefork-metrics", "ceiling",
                  *PEERS[:1],
                  "uvicorn-h11", *PEERS[1:], "nginx"),
                 Load(), varied=True, check="varied"),
        Scenario("V9", "V1 with 1,000 connections", "varied, 1000 conns",
                 ("prefork", "ceiling", *PEERS, "nginx"), Load(connections=1000), varied=True,
                 check="varied"),
        Scenario("V2", "V1 with 2 workers, not pinned", "varied, 2 workers",
                 ("prefork", *PEERS, "nginx"), Load(), workers=2, pinned=False, varied=True,
                 check="varied"),
        Scenario("S1", "identical heads (measures caches): keep-alive `GET /hello`, 1 worker",
                 "identical heads",
                 tuple(n for n in ALL if n != "prefork-nocache"), Load()),
        Scenario("S9", "S1 with 1,000 connections", "1000 conns",
                 (*MAIN[:1], "ceiling", *MAIN[1:]), Load(connections=1000)),
        Scenario("S2", "keep-alive `GET /hello`, 2 workers, not pinned", "2 workers", MAIN,
                 Load(), workers=2, pinned=False),
        Scenario("S3", "`Connection: close` on every request", "close",
                 (*MAIN[:1], "ceiling", *MAIN[1:]), Load(headers=("Connection: close",)),
                 check="close"),
        Scenario("S4", "`POST /echo` with a 64 KiB body", "POST 64K",
                 ("prefork", "uvicorn", "granian", "gunicorn"), Load(path="/echo"), check="echo"),
        Scenario("S5", "keep-alive `GET /hello` over TLS", "TLS", MAIN, Load(), tls=True),
        Scenario("S6", "memory at rest and per idle keep-alive connection (1,000 held)",
                 "memory", (*MAIN[:1], "ceiling", *MAIN[1:])),
        Scenario("S8", "`GET /big` (~100 KiB JSON), `Accept-Encoding: gzip`, level 6", "gzip",
                 ("prefork", "prefork-nocache", *MAIN[1:]),
                 Load(path="/big", headers=("Accept-Encoding: gzip",), timeout=10),
                 check="gzip"),
        *_app_pair("A", "the plain ASGI app", "ASGI", ASGI_ROWS, "asgi"),
        *_app_pair("W", "the plain WSGI app", "WSGI", WSGI_ROWS, "wsgi"),
        *_app_pair("FA", "a FastAPI hello", "FastAPI", ASGI_ROWS, "fastapi"),
        *_app_pair("FL", "a Flask hello", "Flask", WSGI_ROWS, "flask"),
        Scenario("AM", "the plain ASGI app: memory at rest and per idle keep-alive connection "
                 "(1,000 held)", "ASGI memory", ASGI_ROWS, app="asgi"),
        Scenario("WM", "the plain WSGI app: memory at rest and per idle keep-alive connection "
                 "(1,000 held)", "WSGI memory", WSGI_ROWS, app="wsgi"),
    )
}  # fmt: skip

# The order scenarios run in. S9's goal is a ratio to S1 and V9's to V1, so
# each runs right after the other: a change in the shared machine's speed over
# the long run then falls less between the two. RESULTS.md lists them in
# SCENARIOS' order (the headline, varied heads, first).
RUN_ORDER = (
    "V1", "V9", "S1", "S9", "V2", "S2", "S3", "S4", "S5", "S6", "S8",
    "A1", "AV", "AM", "W1", "WV", "WM", "FA1", "FAV", "FL1", "FLV",
)  # fmt: skip
assert sorted(RUN_ORDER) == sorted(SCENARIOS)

ECHO_LUA = """\
wrk.method = "POST"
wrk.body = string.rep("x", 65536)
wrk.headers["Content-Type"] = "application/octet-stream"
"""


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def ensure_venv() -> None:
    """Create bench/.venv and install the pinned peers when missing or when the pins changed."""
    req = BENCH / "requirements-peers.txt"
    digest = hashlib.sha256(req.read_bytes()).hexdigest()
    stamp = VENV / ".requirements.sha256"
    if VENV_PYTHON.exists() and stamp.exists() and stamp.read_text() == digest:
        return
    if not VENV_PYTHON.exists():
        log(f"creating {VENV}")
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    log(f"installing the peers from {req.name}")
    subprocess.run([str(VENV_PYTHON), "-m", "pip", "install", "-q", "-r", str(req)], check=True)
    stamp.write_text(digest)


def make_cert(tmp: Path) -> tuple[str, str]:
    """A self-signed (trustme) certificate for 127.0.0.1; the key as PKCS#8, which granian needs."""
    import trustme
    from cryptography.hazmat.primitives import serialization

    leaf = trustme.CA().issue_cert("127.0.0.1", "localhost")
    cert, key = tmp / "cert.pem", tmp / "key.pem"
    leaf.cert_chain_pems[0].write_to_path(str(cert))
    for pem in leaf.cert_chain_pems[1:]:
        pem.write_to_path(str(cert), append=True)
    private = serialization.load_pem_private_key(leaf.private_key_pem.bytes(), password=None)
    key.write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return str(cert), str(key)


def _first_line(argv: list[str]) -> str:
    """The first line a command prints (stdout, else stderr); "?" when none."""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=30)
        text = (proc.stdout or proc.stderr).strip()
        return text.splitlines()[0] if text else "?"
    return "?"


def collect_meta(selected: list[str], settings: dict) -> dict:
    cpu = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_gib = 0.0
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem_gib = int(line.split()[1]) / 1024**2
    osname = "Linux"
    with contextlib.suppress(OSError):
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                osname = line.split("=", 1)[1].strip('"')
    ncpu = len(os.sched_getaffinity(0))
    machine = f"{cpu}, {ncpu} cores, {mem_gib:.0f} GiB, {osname}, kernel {platform.release()}"
    commit = _first_line(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"])
    dirty = _first_line(["git", "-C", str(REPO), "status", "--porcelain", "--", "prefork"]) != "?"
    versions = {"Python": platform.python_version()}
    if any(n.startswith("prefork") for n in selected):
        code = "import prefork as p; print(p.__version__, getattr(p, 'BUILD', 'pure Python'))"
        env = {**os.environ, "PYTHONPATH": str(servers.PREFORK_PATH)}
        # From the servers' directory, as they run: from the checkout, "-c"
        # would import its sources first and report those.
        out = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            env=env,
            cwd=servers.APPS,
            check=False,
        )
        version, _, kind = out.stdout.strip().partition(" ")
        state = f"{commit}{', modified' if dirty else ''}, {kind} build"
        versions["prefork"] = f"{version or '?'} ({state})"
    for dist in ("uvloop", "httptools", "h11", "zlib-ng", "fastapi", "flask"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions[f"{dist} (prefork's)"] = importlib.metadata.version(dist)
    if VENV_PYTHON.exists() and any(SERVERS[n][1] for n in selected):
        code = (
            "import importlib.metadata as m, json; print(json.dumps({d: m.version(d) for d in "
            "('uvicorn', 'httptools', 'uvloop', 'h11', 'granian', 'gunicorn', 'fastapi', "
            "'flask')}))"
        )
        out = subprocess.run(
            [str(VENV_PYTHON), "-c", code], capture_output=True, text=True, check=False
        )
        with contextlib.suppress(ValueError):
            peers = json.loads(out.stdout)
            shared = ("httptools", "uvloop", "h11", "fastapi", "flask")  # prefork's too
            versions |= {f"{d} (peers')" if d in shared else d: v
                         for d, v in peers.items()}  # fmt: skip
    if "nginx" in selected:
        versions["nginx"] = _first_line(["nginx", "-v"]).removeprefix("nginx version: nginx/")
    versions["wrk"] = _first_line(["wrk", "-v"]).split(" [")[0].removeprefix("wrk ")
    date = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return {"date": date, "machine": machine, "versions": versions, "settings": settings}


def measured_run(server: servers.Running, load: Load, args: argparse.Namespace) -> WrkResult:
    """One run; repeated (at most --retries times) while other processes load the machine.

    The machine may be shared (tests of other work running beside the
    benchmark): each attempt first waits (at most --wait-quiet s) until other
    processes use at most --max-other % of a core; an attempt during which
    they used more is done again, and the quietest attempt is kept.
    """

    def attempt() -> WrkResult:
        if args.wait_quiet:
            wait_quiet(server, args.max_other, args.wait_quiet)
        return run_wrk(server, load, args.duration)

    best = last = attempt()
    for _ in range(args.retries):
        if best.other_cpu <= args.max_other:
            break
        log(f"  other processes used {last.other_cpu:.0f} % of a core: running again")
        last = attempt()
        best = min(best, last, key=lambda r: r.other_cpu)
    return best


def _start_checked(
    sc: Scenario, name: str, tmp: Path
) -> tuple[servers.Running | None, dict | None]:
    """Start ``name`` fresh for ``sc`` and check one answer: (server, None) or (None, row)."""
    launch = Launch(
        workers=sc.workers,
        pinned_cpu="0" if sc.pinned else None,
        tls=sc.extra.get("cert") if sc.tls else None,
    )
    workdir = tmp / f"{sc.sid}-{name}"
    # prefork's app interfaces are being built: a row whose server exits or
    # answers wrongly is "not available", and the run goes on.
    unavailable = {"unavailable": True} if servers.interface_row(name, sc.app) else {}
    try:
        server = servers.start(name, launch, workdir, app=sc.app)
    except (RuntimeError, OSError) as exc:
        return None, {"error": f"did not start: {exc}", **unavailable}
    head = None
    if sc.varied:
        head = heads.for_host(sc.extra["first_head"], f"{servers.HOST}:{server.port}")
    problem = servers.check(server, sc.check, head)
    if problem:
        servers.stop(server)
        return None, {"error": f"wrong answer: {problem}", **unavailable}
    return server, None


def _load(sc: Scenario) -> Load:
    assert sc.load is not None
    if sc.check == "echo" or sc.varied:  # a Lua script: the POST body, or the heads
        return Load(**{**asdict(sc.load), "script": sc.extra["lua"]})
    return sc.load


def _failed(exc: Exception, server: servers.Running) -> dict:
    return {"error": f"{type(exc).__name__}: {exc}\n{server.log_tail()}"}


def run_scenario(sc: Scenario, name: str, args: argparse.Namespace, tmp: Path) -> dict:
    """Start ``name`` fresh, check it, measure it, stop it; the row for the report."""
    server, row = _start_checked(sc, name, tmp)
    if server is None:
        assert row is not None
        return row
    try:
        if sc.load is None:
            mem = memory_profile(server, connections=args.connections_held)
            return asdict(mem)
        load = _load(sc)
        if args.warmup:
            run_wrk(server, load, args.warmup)
        runs = [measured_run(server, load, args) for _ in range(args.runs)]
        return asdict(summarise(runs, args.max_other))
    except (RuntimeError, OSError, ValueError) as exc:
        return _failed(exc, server)
    finally:
        servers.stop(server)


def run_interleaved(
    sc: Scenario, names: list[str], args: argparse.Namespace, tmp: Path
) -> dict[str, dict]:
    """A wrk scenario's servers started together and measured in rounds.

    This machine's speed drifts by several per cent over minutes (seen here:
    the same build 15 % apart an hour later). Measured one after the other,
    a server that happens to run in a fast minute gains against one that runs
    in a slow one. Here every round measures each server once, the order
    turning by one each round, so each server's runs are spread over the same
    minutes; only the loaded server uses the CPU, the others sit idle.
    """
    rows: dict[str, dict] = {}
    running: dict[str, servers.Running] = {}
    try:
        for name in names:
            server, row = _start_checked(sc, name, tmp)
            if server is None:
                assert row is not None
                rows[name] = row
            else:
                running[name] = server
        load = _load(sc)
        measured: dict[str, list[WrkResult]] = {name: [] for name in running}
        for r in range(args.runs):
            order = list(running)
            order = order[r % len(order) :] + order[: r % len(order)] if order else order
            for name in order:
                server = running[name]
                try:
                    if r == 0 and args.warmup:
                        run_wrk(server, load, args.warmup)
                    measured[name].append(measured_run(server, load, args))
                except (RuntimeError, OSError, ValueError) as exc:
                    rows[name] = _failed(exc, server)
                    servers.stop(running.pop(name))
        for name, runs in measured.items():
            if name in running:
                rows[name] = asdict(summarise(runs, args.max_other))
    finally:
        for server in running.values():
            servers.stop(server)
    return {name: rows[name] for name in names}


def _describe(row: dict) -> str:
    if row.get("error"):
        first = row["error"].strip().splitlines()[0]
        return ("not available: " if row.get("unavailable") else "FAILED ") + first
    if "rps" in row:
        return (
            f"{row['rps']:,.0f} req/s (min {row['rps_min']:,.0f}), p99 {row['p99_ms']:.2f} ms, "
            f"server CPU {row['server_cpu']:.0f} %, wrk CPU {row['wrk_cpu']:.0f} %, "
            f"other CPU {row['other_cpu']:.0f} %, "
            f"errors {row['socket_errors']}, non-2xx {row['non_2xx']}"
        )
    rss, pss = row["worker_rss"] / 1024, row["tree_pss"] / 1024
    return (
        f"worker RSS {rss:.1f} MiB, tree PSS {pss:.1f} MiB, "
        f"{row['per_conn']:.2f} KiB per idle connection ({row['held']} held)"
    )


def _split(value: str | None, known: tuple[str, ...], what: str) -> list[str] | None:
    if value is None:
        return None
    items = [v.strip() for v in value.split(",") if v.strip()]
    for item in items:
        if item not in known:
            raise SystemExit(f"--{what}: unknown {item!r}; choose from {', '.join(known)}")
    return items


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Benchmark prefork against its peers, nginx and the design's ceiling.",
        epilog=f"scenarios: {', '.join(SCENARIOS)}; servers: {', '.join(ALL)}",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="S1 only, one 2 s run after a 1 s warm-up: a smoke test of the harness",
    )
    p.add_argument(
        "--build",
        choices=("compiled", "source"),
        default="compiled",
        help="prefork's rows run the compiled wheel of this checkout (default; built and kept"
        " in bench/.build/) or its sources; the 'prefork (pure Python)' row always runs the"
        " sources",
    )
    p.add_argument("--scenarios", help="comma-separated, e.g. S1,S3 (default: all)")
    p.add_argument("--servers", help="comma-separated, e.g. prefork,granian (default: all)")
    p.add_argument("--duration", type=int, help="seconds per measured run (default 10)")
    p.add_argument("--runs", type=int, help="measured runs per server and scenario (default 3)")
    p.add_argument("--warmup", type=int, help="seconds of unmeasured warm-up (default 2)")
    p.add_argument(
        "--max-other",
        type=float,
        default=15.0,
        help="CPU %% of a core that other processes may use during a run before it is redone",
    )
    p.add_argument("--retries", type=int, help="redos of a noisy run (default 2; --quick: 0)")
    p.add_argument(
        "--wait-quiet",
        type=float,
        help="seconds to wait for a quiet machine before each run (default 30; --quick: 0)",
    )
    p.add_argument(
        "--sequential",
        action="store_true",
        help="measure one server after another (all runs of one, then the next) instead of"
        " in interleaved rounds",
    )
    p.add_argument("--connections-held", type=int, default=1000, help="S6 (default 1000)")
    p.add_argument(
        "--heads",
        type=int,
        default=heads.DEFAULT_COUNT,
        help=f"distinct heads in the varied-heads scenarios (default {heads.DEFAULT_COUNT})",
    )
    p.add_argument("--output", type=Path, help="the markdown report (default: see above)")
    p.add_argument("--json", type=Path, help="also save the raw results here")
    p.add_argument("--note", help="a line added to the report's method section")
    ns = p.parse_args(argv)
    ns.scenario_list = _split(ns.scenarios, tuple(SCENARIOS), "scenarios")
    ns.server_list = _split(ns.servers, ALL, "servers")
    if ns.quick:
        ns.scenario_list = ns.scenario_list or ["S1"]
        defaults = {"duration": 2, "runs": 1, "warmup": 1, "retries": 0, "wait_quiet": 0}
    else:
        defaults = {"duration": 10, "runs": 3, "warmup": 2, "retries": 2, "wait_quiet": 30}
    for key, value in defaults.items():
        if getattr(ns, key) is None:
            setattr(ns, key, value)
    if ns.heads < 1:
        raise SystemExit("--heads must be >= 1")
    if ns.duration < 1 or ns.runs < 1 or min(ns.warmup, ns.retries, ns.wait_quiet) < 0:
        raise SystemExit(
            "--duration and --runs must be >= 1; --warmup, --retries, --wait-quiet >= 0"
        )
    return ns


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    for program in ("wrk", "taskset"):
        if not servers.have(program):
            log(f"{program} not found: apt-get install wrk util-linux")
            return 2
    partial = args.quick or args.scenario_list is not None or args.server_list is not None
    chosen = args.scenario_list or SCENARIOS
    scenarios = [SCENARIOS[s] for s in RUN_ORDER if s in chosen]
    wanted = args.server_list or list(ALL)
    if "nginx" in wanted and not servers.have("nginx"):
        log("nginx not found (apt-get install nginx-light): leaving it out")
        wanted.remove("nginx")
    selected = [n for n in ALL if n in wanted and any(n in sc.servers for sc in scenarios)]
    if any(SERVERS[n][1] for n in selected):
        ensure_venv()
    if any(n.startswith("prefork") and n != "prefork-pure" for n in selected):
        try:
            servers.PREFORK_PATH = build.pythonpath(args.build)
        except RuntimeError as exc:
            log(f"{exc}\n(--build source runs the checkout's pure Python instead)")
            return 2
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = 65536 if hard == resource.RLIM_INFINITY else min(hard, 65536)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, target), hard))

    def on_signal(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_signal)
    settings = {
        "quick": args.quick,
        "duration": args.duration,
        "runs": args.runs,
        "warmup": args.warmup,
        "max_other": args.max_other,
        "retries": args.retries,
        "wait_quiet": args.wait_quiet,
        "interleaved": not args.sequential,
        "note": args.note or "",
    }
    results: dict = {"meta": collect_meta(selected, settings), "scenarios": {}}
    jobs = [(sc, n) for sc in scenarios for n in sc.servers if n in selected]
    per_job = 3 + args.warmup + args.runs * (args.duration + 0.5)
    log(f"{len(jobs)} server-scenario pairs, about {len(jobs) * per_job / 60:.0f} min")
    started = time.monotonic()
    try:
        with tempfile.TemporaryDirectory(prefix="prefork-bench-") as tmpname:
            tmp = Path(tmpname)
            tmp.chmod(0o755)  # nginx's workers (user nobody) read big.json below it
            varied_lua: Path | None = None
            for sc in scenarios:
                if sc.tls:
                    sc.extra["cert"] = make_cert(tmp)
                if sc.check == "echo":
                    (tmp / "echo.lua").write_text(ECHO_LUA)
                    sc.extra["lua"] = str(tmp / "echo.lua")
                if sc.varied:
                    if varied_lua is None:
                        varied_lua = heads.write(tmp, args.heads)
                    sc.extra["lua"] = str(varied_lua)
                    sc.extra["first_head"] = heads.generate(1)[0]
                rows: dict[str, dict] = {}
                results["scenarios"][sc.sid] = {
                    "title": sc.title,
                    "short": sc.short,
                    "kind": "wrk" if sc.load else "memory",
                    "workers": sc.workers,
                    "app": sc.app,
                    "varied": sc.varied,
                    "connections": sc.load.connections if sc.load else 0,
                    "rows": rows,
                }
                names = [n for n in sc.servers if n in selected]
                if sc.load is not None and not args.sequential:
                    rows.update(run_interleaved(sc, names, args, tmp))
                else:
                    rows.update((n, run_scenario(sc, n, args, tmp)) for n in names)
                for name in names:
                    log(f"[{sc.sid}] {SERVERS[name][0]}: {_describe(rows[name])}")
                    if rows[name].get("error"):
                        log("    " + rows[name]["error"].strip().replace("\n", "\n    "))
    except KeyboardInterrupt:
        log("interrupted: stopping the servers")
        servers.stop_all()
        return 130
    finally:
        servers.stop_all()
    log(f"done in {(time.monotonic() - started) / 60:.1f} min")
    done = results["scenarios"]
    results["scenarios"] = {sid: done[sid] for sid in SCENARIOS if sid in done}
    return write_outputs(results, args, partial)


def write_outputs(results: dict, args: argparse.Namespace, partial: bool) -> int:
    out_dir = BENCH / "out"
    out_dir.mkdir(exist_ok=True)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    if args.output:
        md = args.output
    elif args.quick:
        md = out_dir / "quick.md"
    elif partial:
        md = out_dir / f"run-{stamp}.md"
    else:
        md = BENCH / "RESULTS.md"
    raw = out_dir / ("quick.json" if args.quick else f"results-{stamp}.json")
    raw.write_text(json.dumps(results, indent=1))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    png = md.parent / ("results.png" if md == BENCH / "RESULTS.md" else md.stem + ".png")
    chart = None
    if not args.quick and VENV_PYTHON.exists():
        proc = subprocess.run(
            [str(VENV_PYTHON), str(BENCH / "chart.py"), str(raw), str(png)],
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode == 0:
            chart = png.name
        else:
            log(f"chart failed:\n{proc.stderr}")
    text = render(results, chart)
    md.write_text(text)
    print(text)
    log(f"wrote {md}" + (f" and {png}" if chart else "") + f"; raw results in {raw}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
