"""Measurements: wrk runs (parsed), the server tree's CPU share, memory at rest and per connection.

Every number is of the server's whole process tree (master and workers).
"""

from __future__ import annotations

import contextlib
import os
import re
import resource
import socket
import statistics
import subprocess
import time
from dataclasses import asdict, dataclass, field

import psutil
from servers import HOST, Running

_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}
_RPS = re.compile(r"^Requests/sec:\s+([\d.]+)", re.M)
_PCT = re.compile(r"^\s+(50|75|90|99)%\s+([\d.]+)(us|ms|s|m|h)\s*$", re.M)
_SOCKET = re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")
_NON2XX = re.compile(r"Non-2xx or 3xx responses: (\d+)")
_TOTAL = re.compile(r"(\d+) requests in ([\d.]+)(us|ms|s|m|h)")


@dataclass
class WrkResult:
    rps: float
    requests: int
    p50_ms: float
    p99_ms: float
    socket_errors: dict[str, int]
    non_2xx: int
    server_cpu: float = 0.0  # percent of one core, the whole server tree
    wrk_cpu: float = 0.0  # percent of one core
    other_cpu: float = 0.0  # percent of one core: every other process on the machine

    @property
    def errors(self) -> int:
        return sum(self.socket_errors.values())


def parse_wrk(text: str) -> WrkResult:
    """Parse ``wrk --latency`` output; raise ValueError when it holds no result."""
    rps = _RPS.search(text)
    total = _TOTAL.search(text)
    if not rps or not total:
        raise ValueError(f"no result in wrk output:\n{text}")
    pct = {int(m[1]): float(m[2]) * _UNITS[m[3]] for m in _PCT.finditer(text)}
    sock = _SOCKET.search(text)
    errors = dict.fromkeys(("connect", "read", "write", "timeout"), 0)
    if sock:
        errors = dict(zip(errors, map(int, sock.groups()), strict=True))
    non = _NON2XX.search(text)
    return WrkResult(
        rps=float(rps[1]),
        requests=int(total[1]),
        p50_ms=pct.get(50, float("nan")),
        p99_ms=pct.get(99, float("nan")),
        socket_errors=errors,
        non_2xx=int(non[1]) if non else 0,
    )


@dataclass
class Load:
    """One wrk invocation's shape (the URL's host and port come from the server)."""

    path: str = "/hello"
    connections: int = 64
    headers: tuple[str, ...] = ()
    script: str | None = None
    wrk_cpu: str = "1"
    timeout: int | None = None  # wrk --timeout in seconds (wrk's default: 2)


def wrk_argv(server: Running, load: Load, seconds: int) -> list[str]:
    argv = ["taskset", "-c", load.wrk_cpu, "wrk", "-t1", f"-c{load.connections}"]
    argv += [f"-d{seconds}s", "--latency"]
    for header in load.headers:
        argv += ["-H", header]
    if load.script:
        argv += ["-s", load.script]
    if load.timeout:
        argv += ["--timeout", f"{load.timeout}s"]
    return [*argv, server.url + load.path]


def _tree_cpu(server: Running) -> dict[int, float]:
    out = {}
    for p in server.tree():
        with contextlib.suppress(psutil.Error):
            t = p.cpu_times()
            out[p.pid] = t.user + t.system
    return out


def _children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


_TICK = os.sysconf("SC_CLK_TCK")


def _machine_cpu() -> float:
    """Seconds of user + nice + system time on all cores (interrupts and steal left out)."""
    with open("/proc/stat") as f:
        fields = f.readline().split()
    return sum(int(x) for x in fields[1:4]) / _TICK


def wait_quiet(server: Running, max_other: float, timeout: float) -> float:
    """Wait, at most ``timeout`` s, for a quiet 0.5 s: other processes under ``max_other`` %.

    "Other" is every process but the (idle) server tree. Returns the last
    window's share, in % of one core.
    """
    deadline = time.monotonic() + timeout
    while True:
        before, all_before, t0 = _tree_cpu(server), _machine_cpu(), time.monotonic()
        time.sleep(0.5)
        after, all_after = _tree_cpu(server), _machine_cpu()
        used = sum(t - before.get(pid, 0.0) for pid, t in after.items())
        other = max(0.0, 100.0 * (all_after - all_before - used) / (time.monotonic() - t0))
        if other <= max_other or time.monotonic() >= deadline:
            return other


def run_wrk(server: Running, load: Load, seconds: int) -> WrkResult:
    """One measured wrk run, with the server tree's and wrk's CPU over it."""
    before, wrk_before, all_before = _tree_cpu(server), _children_cpu(), _machine_cpu()
    t0 = time.monotonic()
    proc = subprocess.Popen(
        wrk_argv(server, load, seconds), stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        out, _ = proc.communicate(timeout=seconds + 30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise RuntimeError("wrk did not finish in time") from None
    wall = time.monotonic() - t0
    after, wrk_after, all_after = _tree_cpu(server), _children_cpu(), _machine_cpu()
    result = parse_wrk(out.decode(errors="replace"))
    used = sum(t - before.get(pid, 0.0) for pid, t in after.items())
    wrk_used = wrk_after - wrk_before
    result.server_cpu = 100.0 * used / wall
    result.wrk_cpu = 100.0 * wrk_used / wall
    result.other_cpu = max(0.0, 100.0 * (all_after - all_before - used - wrk_used) / wall)
    return result


@dataclass
class Summary:
    """A server's runs in one scenario, as reported."""

    rps: float
    rps_min: float
    rps_max: float
    p50_ms: float
    p99_ms: float
    socket_errors: int
    non_2xx: int
    server_cpu: float
    wrk_cpu: float
    other_cpu: float
    noisy_runs: int  # runs kept although other processes used more CPU than allowed
    runs: list[dict] = field(default_factory=list)


def summarise(runs: list[WrkResult], max_other: float = 100.0) -> Summary:
    """Medians over the runs (req/s, p50, p99, CPU); errors and non-2xx summed."""
    med = statistics.median
    return Summary(
        rps=med(r.rps for r in runs),
        rps_min=min(r.rps for r in runs),
        rps_max=max(r.rps for r in runs),
        p50_ms=med(r.p50_ms for r in runs),
        p99_ms=med(r.p99_ms for r in runs),
        socket_errors=sum(r.errors for r in runs),
        non_2xx=sum(r.non_2xx for r in runs),
        server_cpu=med(r.server_cpu for r in runs),
        wrk_cpu=med(r.wrk_cpu for r in runs),
        other_cpu=med(r.other_cpu for r in runs),
        noisy_runs=sum(r.other_cpu > max_other for r in runs),
        runs=[asdict(r) for r in runs],
    )


# -- memory (S6) ---------------------------------------------------------------


@dataclass
class Memory:
    """KiB. Tree sums over the master and workers; ``per_conn`` from the workers' USS."""

    tree_rss: float
    tree_pss: float
    tree_uss: float
    worker_rss: float  # mean over the serving processes
    workers: int
    per_conn: float = float("nan")
    held: int = 0


def _memory(server: Running) -> Memory:
    rss = pss = uss = 0
    for p in server.tree():
        with contextlib.suppress(psutil.Error):
            m = p.memory_full_info()
            rss, pss, uss = rss + m.rss, pss + m.pss, uss + m.uss
    worker_rss = []
    for p in server.workers():
        with contextlib.suppress(psutil.Error):
            worker_rss.append(p.memory_info().rss)
    mean = statistics.fmean(worker_rss) if worker_rss else float("nan")
    return Memory(rss / 1024, pss / 1024, uss / 1024, mean / 1024, len(worker_rss))


def _hello(sock: socket.socket) -> None:
    """Send one keep-alive ``GET /hello`` and read the whole response."""
    sock.sendall(f"GET /hello HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode())
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed before the response head")
        buf += chunk
    head, _, rest = buf.partition(b"\r\n\r\n")
    match = re.search(rb"(?im)^content-length:\s*(\d+)", head)
    length = int(match[1]) if match else 0
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed before the response body")
        rest += chunk


def memory_profile(server: Running, connections: int, settle: float = 1.0) -> Memory:
    """RSS/PSS/USS at rest, then the USS growth per idle keep-alive connection.

    At rest = after a short warm-up (100 requests on 10 connections, closed) and
    ``settle`` seconds. Then ``connections`` sockets each send one request, read
    the answer and stay open, idle; the workers' USS (private memory) is read
    again and the growth divided by the count. Kernel socket buffers are not in
    any process's memory and are not counted, for any server.
    """
    for _ in range(10):
        with socket.create_connection((HOST, server.port), timeout=5) as s:
            for _ in range(10):
                _hello(s)
    time.sleep(settle)
    rest = _memory(server)
    socks: list[socket.socket] = []
    deadline = time.monotonic() + 60
    try:
        for _ in range(connections):
            if time.monotonic() > deadline:
                raise RuntimeError(f"opened only {len(socks)} connections in 60 s")
            s = socket.create_connection((HOST, server.port), timeout=5)
            socks.append(s)
            _hello(s)
        time.sleep(settle)
        loaded = _memory(server)
        # Every connection must still be open: dropping idle ones would save memory unfairly.
        alive = 0
        for s in socks:
            s.setblocking(False)
            try:
                alive += s.recv(1) != b""
            except BlockingIOError:
                alive += 1
            except OSError:
                pass
    finally:
        for s in socks:
            s.close()
    rest.per_conn = (loaded.tree_uss - rest.tree_uss) / connections
    rest.held = alive
    return rest
