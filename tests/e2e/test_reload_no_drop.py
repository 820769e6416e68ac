"""No request is lost when the server closes a connection (issue 15, part 2).

A draining worker answers the next request on every keep-alive connection with
``Connection: close`` and closes a connection waiting for a request only once
it has been quiet for ``QUIET_S``: wrk (which never retries) sees no read
error across reloads, and a raw client shows both halves of the rule.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from prefork.engine.lifecycle import QUIET_S
from tests.conftest import wait_until
from tests.e2e.conftest import ServerProcess, StartServer

APP = """
def handle(method, path, args, headers, body, ctx):
    return "ok " + str(len(body)), 200, {"content-type": "text/plain"}
"""
POST_LUA = """
wrk.method = "POST"
wrk.body = string.rep("x", 512)
wrk.headers["Content-Type"] = "text/plain"
"""
GET = b"GET / HTTP/1.1\r\nHost: t\r\n\r\n"


def server_url(server: ServerProcess) -> str:
    return f"http://127.0.0.1:{server.port}/"


def _workers(master: int) -> set[int]:
    text = Path(f"/proc/{master}/task/{master}/children").read_text()
    return {int(pid) for pid in text.split()}


@pytest.mark.skipif(
    shutil.which("wrk") is None, reason="wrk is not installed (apt-get install wrk)"
)
def test_reloads_under_keep_alive_post_load_lose_no_request(
    start_server: StartServer, tmp_path: Path
) -> None:
    server = start_server(APP, "-w", "2", "--log-level", "info")
    (tmp_path / "post.lua").write_text(POST_LUA)
    wrk = subprocess.Popen(
        ["wrk", "-t2", "-c32", "-d8s", "-s", str(tmp_path / "post.lua"), server_url(server)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        for _ in range(3):
            time.sleep(1.5)
            before = _workers(server.pid)
            os.kill(server.pid, signal.SIGHUP)
            # The old generation has gone: two new workers serve.
            wait_until(lambda b=before: not (_workers(server.pid) & b), timeout=15)  # type: ignore[misc]
        out, _ = wrk.communicate(timeout=30)
    finally:
        if wrk.poll() is None:
            wrk.kill()
            wrk.wait()
    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    assert requests > 1000, out
    assert "Socket errors" not in out, out  # no read error: no request closed under
    assert "Non-2xx" not in out, out


@pytest.mark.skipif(
    shutil.which("wrk") is None, reason="wrk is not installed (apt-get install wrk)"
)
def test_max_requests_recycling_under_load_loses_no_request(
    start_server: StartServer, tmp_path: Path
) -> None:
    config = tmp_path / "recycle.toml"
    config.write_text("max_requests = 20000\n")
    server = start_server(APP, "-w", "2", "-c", str(config), "--log-level", "info")
    out = subprocess.run(
        ["wrk", "-t2", "-c32", "-d6s", server_url(server)],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    recycled = server.log().count("(max_requests); asking for a replacement")
    assert recycled >= 2, (out, server.log()[-3000:])
    assert "Socket errors" not in out, out
    assert "Non-2xx" not in out, out


def _ask(sock: socket.socket) -> bytes:
    """Send a GET on a keep-alive connection and read its whole (small) response."""
    sock.sendall(GET)
    data = b""
    while b"\r\n\r\n" not in data or not data.endswith(b"ok 0"):
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError(f"closed under a request after {data!r}")
        data += chunk
    return data


def _closed_within(sock: socket.socket, seconds: float) -> bool:
    sock.settimeout(seconds)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def test_a_stopping_worker_answers_a_request_sent_just_after_and_closes_quiet_ones(
    start_server: StartServer,
) -> None:
    server = start_server(APP, "--log-level", "info")
    quiet = server.connect()
    busy = server.connect()
    assert b"200 OK" in _ask(quiet)
    time.sleep(QUIET_S + 0.3)
    assert b"200 OK" in _ask(busy)  # its client goes on at once, as wrk does
    os.kill(server.pid, signal.SIGTERM)
    time.sleep(0.3)  # the drain has begun; "busy" was answered 0.3 s ago
    last = _ask(busy)
    assert b"200 OK" in last
    assert b"Connection: close" in last
    assert _closed_within(busy, 3)
    # The one that was quiet for longer than QUIET_S closed at once, with no request lost.
    assert _closed_within(quiet, 1)
    assert server.proc.wait(timeout=10) == 0
    busy.close()
    quiet.close()
