"""Slow and idle clients cannot starve a worker (issue 15, part 1).

slowhttptest (a real attack tool) against one worker with default settings:
the service stays available and the attackers lose their connections. Raw
sockets show each rule on its own: a trickled head or body gets 408 long
before its timeout, a client that does not read loses its connection, a
client that is merely slow-but-steady is served, idle connections do not count
towards connection_limit, and at open_connection_limit idle connections make
room for queued clients. And: accept() running out of file descriptors is
logged once per episode.
"""

from __future__ import annotations

import contextlib
import csv
import os
import re
import resource
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from prefork.engine.lifecycle import QUIET_S
from tests.e2e.conftest import ServerProcess, StartServer

APP = """
BIG = b"x" * (100 * 1024)
HUGE = b"y" * (8 * 1024 * 1024)

def handle(method, path, args, headers, body, ctx):
    if path == "/big":
        return BIG, 200, {"content-type": "application/octet-stream"}
    if path == "/huge":
        return HUGE, 200, {"content-type": "application/octet-stream"}
    return "hello " + str(len(body)), 200, {"content-type": "text/plain"}
"""
# A grace of 1 s keeps the raw-socket tests short; the rule is the same.
FAST_RULES = "min_rate_grace = 1\n"
ATTACKERS = 300


def _workers(master: int) -> list[int]:
    return [int(p) for p in Path(f"/proc/{master}/task/{master}/children").read_text().split()]


def _config(tmp_path: Path, text: str) -> str:
    path = tmp_path / "slow.toml"
    path.write_text(text)
    return str(path)


def _read_response(sock: socket.socket, timeout: float = 10.0) -> bytes:
    """Read until the server closes (or resets) the connection."""
    sock.settimeout(timeout)
    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return data
        if not chunk:
            return data
        data += chunk


def _ask(sock: socket.socket, path: str = "/") -> bytes:
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
    data = b""
    while not data.endswith(b"hello 0"):
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError(f"closed after {data!r}")
        data += chunk
    return data


# -- slowhttptest --------------------------------------------------------------


@pytest.mark.skipif(
    shutil.which("slowhttptest") is None,
    reason="slowhttptest is not installed (apt-get install slowhttptest)",
)
@pytest.mark.parametrize(
    ("mode", "path", "closes_as"),
    [
        ("-H", "/", "request head too slow"),
        ("-B", "/", "request body too slow"),
        ("-X", "/big", "response read too slowly"),
    ],
    ids=["slowloris", "slow-body", "slow-read"],
)
def test_slowhttptest_leaves_the_service_available(
    start_server: StartServer, tmp_path: Path, mode: str, path: str, closes_as: str
) -> None:
    server = start_server(APP, "--log-level", "info")  # default limits: one worker, 64 slots
    cmd = ["slowhttptest", mode, "-c", str(ATTACKERS), "-r", "200", "-i", "10", "-p", "3"]
    cmd += ["-l", "7", "-g", "-o", str(tmp_path / "stats")]
    cmd += ["-u", f"http://127.0.0.1:{server.port}{path}"]
    subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60)
    with (tmp_path / "stats.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) >= 5, rows
    # slowhttptest's probe asks for the page every second and waits 3 s for it;
    # the column says 0 when it got no answer (else the -c value, for its chart).
    unavailable = [r["Seconds"] for r in rows if r["Service Available"] == "0"]
    assert unavailable == [], rows
    # Each attacking connection lost its slot to the rate rule, well before the
    # 10 s / 30 s timeouts (the run lasts 7 s).
    closed = server.log().count(closes_as)
    assert closed >= ATTACKERS * 0.95, (closed, server.log()[-2000:])


# -- the rules one at a time, on raw sockets -------------------------------------


@pytest.fixture
def strict(start_server: StartServer, tmp_path: Path) -> ServerProcess:
    return start_server(APP, "-c", _config(tmp_path, FAST_RULES), "--log-level", "info")


def test_a_trickled_head_gets_408_in_seconds(strict: ServerProcess) -> None:
    sock = strict.connect()
    t0 = time.monotonic()
    sock.sendall(b"GET / HTTP/1.1\r\n")
    got = b""
    for i in range(20):  # 8 bytes every 0.4 s: 20 B/s
        try:
            sock.sendall(f"X-{i:03}: 1\r\n".encode())
        except (BrokenPipeError, ConnectionResetError):
            break
        sock.settimeout(0.4)
        try:
            got = sock.recv(4096)
        except TimeoutError:
            continue
        break
    took = time.monotonic() - t0
    sock.close()
    assert got.startswith(b"HTTP/1.1 408 "), got
    assert took < 4, took  # request_header_timeout is 10 s
    strict.wait_log(r"127\.0\.0\.1: request head too slow \(\d+ bytes in [\d.]+s")


def test_a_trickled_body_gets_408_in_seconds(strict: ServerProcess) -> None:
    sock = strict.connect()
    t0 = time.monotonic()
    sock.sendall(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 1000\r\n\r\n")
    got = b""
    for _ in range(20):
        try:
            sock.sendall(b"z")
        except (BrokenPipeError, ConnectionResetError):
            break
        sock.settimeout(0.3)
        try:
            got = sock.recv(4096)
        except TimeoutError:
            continue
        break
    took = time.monotonic() - t0
    sock.close()
    assert got.startswith(b"HTTP/1.1 408 "), got
    assert took < 4, took  # request_body_timeout is 30 s
    strict.wait_log(r"127\.0\.0\.1: request body too slow")


def test_a_client_that_does_not_read_loses_its_connection(strict: ServerProcess) -> None:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", strict.port))
    t0 = time.monotonic()
    sock.sendall(b"GET /huge HTTP/1.1\r\nHost: t\r\n\r\n")
    strict.wait_log(r"127\.0\.0\.1: response read too slowly", timeout=8)
    assert time.monotonic() - t0 < 5  # response_write_timeout is 30 s
    data = _read_response(sock)
    sock.close()
    assert len(data) < 8 * 1024 * 1024  # cut off (reset), not delivered


def test_a_slow_but_steady_client_is_served(strict: ServerProcess) -> None:
    sock = strict.connect()
    sock.sendall(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 6000\r\n\r\n")
    for _ in range(20):  # 300 bytes every 0.1 s: 3 kB/s, for 2 s
        sock.sendall(b"b" * 300)
        time.sleep(0.1)
    sock.settimeout(5)
    data = b""
    while not data.endswith(b"hello 6000"):
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    sock.close()
    assert data.startswith(b"HTTP/1.1 200 OK"), data
    assert data.endswith(b"hello 6000"), data


def test_idle_connections_do_not_count_towards_connection_limit(
    start_server: StartServer, tmp_path: Path
) -> None:
    server = start_server(APP, "-c", _config(tmp_path, "connection_limit = 2\n"))
    idle = [server.connect() for _ in range(4)]
    for sock in idle:
        assert b"200 OK" in _ask(sock)
    # Four open connections, none at work: a fifth client is served at once.
    fresh = server.connect(timeout=2)
    assert b"200 OK" in _ask(fresh)
    for sock in [*idle, fresh]:
        assert b"200 OK" in _ask(sock)  # and nobody was closed for it
        sock.close()


def test_at_open_connection_limit_quiet_connections_make_room(
    start_server: StartServer, tmp_path: Path
) -> None:
    cfg = _config(tmp_path, "connection_limit = 2\nopen_connection_limit = 3\n")
    server = start_server(APP, "-c", cfg, "--log-level", "info")
    idle = [server.connect() for _ in range(3)]
    for sock in idle:
        assert b"200 OK" in _ask(sock)
    time.sleep(QUIET_S + 0.2)
    t0 = time.monotonic()
    queued = server.connect()  # waits in the listen queue: never a 503
    assert b"200 OK" in _ask(queued)
    assert time.monotonic() - t0 < 2
    server.wait_log(r"127\.0\.0\.1: closing a connection waiting for a request")
    closed = 0
    for sock in idle:
        sock.settimeout(0.5)
        with contextlib.suppress(TimeoutError):
            closed += sock.recv(1) == b""
        sock.close()
    queued.close()
    assert closed == 1  # one was enough


def test_accept_out_of_file_descriptors_is_logged_once_per_episode(
    start_server: StartServer,
) -> None:
    server = start_server(APP, "--log-level", "info")
    (worker,) = _workers(server.pid)
    soft, hard = resource.prlimit(worker, resource.RLIMIT_NOFILE)
    in_use = len(os.listdir(f"/proc/{worker}/fd"))
    resource.prlimit(worker, resource.RLIMIT_NOFILE, (in_use + 2, hard))
    try:
        clients = [server.connect() for _ in range(8)]  # a few accepted, the rest starve it
        time.sleep(1.0)  # ~10 retries
        for sock in clients:
            sock.close()
        resource.prlimit(worker, resource.RLIMIT_NOFILE, (soft, hard))
        server.wait_log(r"accept\(\) works again after [\d.]+s out of resources")
        time.sleep(0.3)  # (a connection closing meanwhile may end an episode early)
    finally:
        resource.prlimit(worker, resource.RLIMIT_NOFILE, (soft, hard))
    log = server.log()
    starts = log.count("accept() out of resources")
    ends = [int(n) for n in re.findall(r"out of resources \((\d+) failed attempt", log)]
    # One line when an episode starts and one when it ends, not one per retry.
    assert 1 <= starts <= 3, log
    assert len(ends) == starts, log
    assert sum(ends) >= 5, log
    with server.connect() as sock:
        assert b"200 OK" in _ask(sock)
