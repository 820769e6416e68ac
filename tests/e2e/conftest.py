"""End-to-end fixtures: start real ``prefork run`` processes in their own process group.

A started server is ready when a worker has answered a request (the master
binds, and logs its address, before any worker runs). The raw HTTP client and
the module-scoped server pool are in ``helpers.py``.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import wait_until

LISTEN_RE = re.compile(r"listening on (https?)://([\d.]+):(\d+)")

pytestmark = pytest.mark.e2e


class ServerProcess:
    """A running ``python -m prefork run ...`` and the lines it logged."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self.port = 0
        self.scheme = "http"
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self._lock:
                self.lines.append(line.rstrip("\n"))
            if not self.port:
                m = LISTEN_RE.search(line)
                if m:
                    self.scheme, self.port = m.group(1), int(m.group(3))

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        with self._lock:
            return "\n".join(self.lines)

    def wait_log(self, pattern: str, timeout: float = 10.0) -> re.Match[str]:
        rx = re.compile(pattern)

        def found() -> re.Match[str] | None:
            with self._lock:
                for line in self.lines:
                    m = rx.search(line)
                    if m:
                        return m
            return None

        result = wait_until(found, timeout=timeout)
        assert isinstance(result, re.Match)
        return result

    def connect(self, timeout: float = 10.0) -> socket.socket:
        s = socket.create_connection(("127.0.0.1", self.port), timeout=timeout)
        return s

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int | None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=5)
        self._reader.join(timeout=5)
        if self.proc.stderr is not None:
            self.proc.stderr.close()
        return self.proc.returncode


StartServer = Callable[..., ServerProcess]


def launch_server(
    directory: Path,
    *args: str,
    target: str = "app:handle",
    env: dict[str, str] | None = None,
    wait: bool = True,
) -> ServerProcess:
    """``python -m prefork run TARGET -b 127.0.0.1:0 ARGS`` in ``directory``, in its own
    process group; with ``wait``, returns once a worker answers (stopped on failure)."""
    cmd = [sys.executable, "-m", "prefork", "run", target, "-b", "127.0.0.1:0", *args]
    proc = subprocess.Popen(
        cmd,
        cwd=directory,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        process_group=0,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
    )
    server = ServerProcess(proc)
    if wait:
        try:
            wait_ready(server)
        except BaseException:
            server.stop()
            raise
    return server


def wait_ready(server: ServerProcess) -> None:
    """Wait for the startup line, then until a worker answers."""
    proc = server.proc
    wait_until(lambda: server.port or proc.poll() is not None, timeout=20)
    if not server.port:
        raise AssertionError(f"server did not start:\n{server.log()}")
    # The master logs the address once bound, before any worker runs: the
    # kernel queues connections then, so only an answer means a worker is up.
    wait_until(lambda: worker_answers(server), timeout=20)


@pytest.fixture
def app_dir(tmp_path: Path) -> Path:
    return tmp_path


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[StartServer]:
    """Start ``prefork run MODULE:ATTR`` with ``app_source`` written to ``app.py`` in tmp_path.

    Waits until a worker answers and returns a ServerProcess; every started
    process group is stopped (TERM, then KILL) on teardown.
    """
    started: list[ServerProcess] = []

    def start(
        app_source: str,
        *args: str,
        target: str = "app:handle",
        wait: bool = True,
        env: dict[str, str] | None = None,
    ) -> ServerProcess:
        (tmp_path / "app.py").write_text(textwrap.dedent(app_source))
        server = launch_server(tmp_path, *args, target=target, env=env, wait=False)
        started.append(server)
        if wait:
            wait_ready(server)
        return server

    yield start
    for server in started:
        server.stop()


# A request a worker refuses before any handler runs (no Host): it leaves no
# trace in a test app's records, only a 400.
PROBE = b"GET / HTTP/1.1\r\n\r\n"


def worker_answers(server: ServerProcess, timeout: float = 1.0) -> bool:
    """True when a worker answers a request on the server's port within ``timeout``.

    Over TLS, a handshake (even one the server refuses: a client certificate
    required) is the answer: only a worker speaks TLS.
    """
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=timeout) as raw:
            if server.scheme != "https":
                raw.sendall(PROBE)
                return raw.recv(16).startswith(b"HTTP/1.")
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            try:
                with context.wrap_socket(raw):
                    return True  # the handshake finished: a worker holds the connection
            except ssl.SSLError:
                return True
    except OSError:
        return False
