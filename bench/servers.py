"""The servers under test: how to start each one, wait for it, check it, stop it.

Every server runs the same three routes (``apps/``). Each is started fresh,
in its own process group, optionally under ``taskset``; it is stopped by its
PID and then its process group, never by name.
"""

from __future__ import annotations

import contextlib
import gzip
import http.client
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
APPS = BENCH / "apps"
VENV = BENCH / ".venv"
VENV_PYTHON = VENV / "bin" / "python"
HOST = "127.0.0.1"
HELLO = b"Hello, World!"

sys.path.insert(0, str(APPS))
from bigdoc import BIG_JSON  # noqa: E402

# name -> (label, needs the peers' venv, Python peer?)
SERVERS: dict[str, tuple[str, bool, bool]] = {
    "prefork": ("prefork", False, False),
    "prefork-h11": ("prefork (h11)", False, False),
    "prefork-access": ("prefork (access log on)", False, False),
    "prefork-nocache": ("prefork (compression cache off)", False, False),
    "prefork-metrics": ("prefork (metrics on)", False, False),
    "ceiling": ("design ceiling", False, False),
    "uvicorn": ("uvicorn (httptools)", True, True),
    "uvicorn-h11": ("uvicorn (h11)", True, True),
    "granian": ("granian", True, True),
    "gunicorn": ("gunicorn + uvicorn worker", True, True),
    "nginx": ("nginx", False, False),
}
PYTHON_PEERS = tuple(name for name, (_, _, peer) in SERVERS.items() if peer)


@dataclass
class Launch:
    """What a scenario asks of a server."""

    workers: int = 1
    pinned_cpu: str | None = "0"  # taskset -c value, None = not pinned
    tls: tuple[str, str] | None = None  # (certfile, keyfile)


@dataclass
class Running:
    name: str
    proc: subprocess.Popen[bytes]
    port: int
    tls: bool
    log_path: Path
    workdir: Path
    pids: set[int] = field(default_factory=set)

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{HOST}:{self.port}"

    def tree(self) -> list[psutil.Process]:
        """The server's process tree, root first (also remembered for stop())."""
        try:
            root = psutil.Process(self.proc.pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []
        self.pids.update(p.pid for p in procs)
        return procs

    def workers(self) -> list[psutil.Process]:
        """The processes that serve: the leaves of the tree (the root when alone)."""
        procs = self.tree()
        leaves = []
        for p in procs[1:]:
            with contextlib.suppress(psutil.Error):
                if not p.children():
                    leaves.append(p)
        return leaves or procs[:1]

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def command(name: str, port: int, launch: Launch, workdir: Path) -> list[str]:
    """The argv that starts ``name`` on ``port`` (without taskset)."""
    w = str(launch.workers)
    tls = launch.tls
    if name.startswith("prefork"):
        argv = [sys.executable, "-m", "prefork", "run", "bench_app:handle"]
        # prefork-nocache and prefork-metrics have a config file of their own.
        toml = f"{name}.toml" if name in ("prefork-nocache", "prefork-metrics") else "prefork.toml"
        argv += ["-b", f"{HOST}:{port}", "-w", w, "-c", str(APPS / toml)]
        argv += ["--log-level", "access" if name == "prefork-access" else "info"]
        argv += ["--http", "h11" if name == "prefork-h11" else "httptools"]
        if tls:
            argv += ["--certfile", tls[0], "--keyfile", tls[1]]
        return argv
    if name == "ceiling":
        return [sys.executable, str(BENCH / "ceiling.py"), "--host", HOST, "--port", str(port)]
    if name.startswith("uvicorn"):
        argv = [str(VENV_PYTHON), "-m", "uvicorn", "asgi_app:app", "--host", HOST]
        argv += ["--port", str(port), "--workers", w, "--loop", "uvloop"]
        argv += ["--http", "h11" if name == "uvicorn-h11" else "httptools"]
        argv += ["--no-access-log", "--log-level", "warning", "--timeout-keep-alive", "60"]
        if tls:
            argv += ["--ssl-certfile", tls[0], "--ssl-keyfile", tls[1]]
        return argv
    if name == "granian":
        argv = [str(VENV / "bin" / "granian"), "--interface", "asgi", "--host", HOST]
        argv += ["--port", str(port), "--workers", w, "--loop", "uvloop", "--http", "1"]
        argv += ["--no-ws", "--no-access-log", "--log-level", "warning"]
        argv += ["--working-dir", str(APPS)]
        if tls:
            argv += ["--ssl-certificate", tls[0], "--ssl-keyfile", tls[1]]
        return [*argv, "asgi_app:app"]
    if name == "gunicorn":
        argv = [str(VENV_PYTHON), "-m", "gunicorn", "-k", "uvicorn.workers.UvicornWorker"]
        argv += ["-w", w, "-b", f"{HOST}:{port}", "--keep-alive", "60", "--backlog", "4096"]
        argv += ["--log-level", "warning"]
        if tls:
            argv += ["--certfile", tls[0], "--keyfile", tls[1]]
        return [*argv, "asgi_app:app"]
    if name == "nginx":
        conf = nginx_conf(port, launch, workdir)
        return ["nginx", "-p", str(workdir), "-c", str(conf), "-e", str(workdir / "error.log")]
    raise ValueError(f"unknown server {name!r}")


def nginx_conf(port: int, launch: Launch, workdir: Path) -> Path:
    """Fill in apps/nginx.conf.template; nginx's workers (user nobody) must read workdir."""
    workdir.chmod(0o755)
    (workdir / "big.json").write_bytes(BIG_JSON)
    tls = ""
    if launch.tls:
        tls = (
            f"ssl_certificate {launch.tls[0]};\n        ssl_certificate_key {launch.tls[1]};\n"
            "        ssl_protocols TLSv1.2 TLSv1.3;"
        )
    text = (APPS / "nginx.conf.template").read_text()
    for key, value in {
        "WORKERS": str(launch.workers),
        "DIR": str(workdir),
        "PORT": str(port),
        "SSL": "ssl" if launch.tls else "",
        "TLS": tls,
    }.items():
        text = text.replace(f"@{key}@", value)
    conf = workdir / "nginx.conf"
    conf.write_text(text)
    return conf


def start(name: str, launch: Launch, workdir: Path, timeout: float = 30.0) -> Running:
    """Start ``name`` and return once it answers ``GET /hello``; raise RuntimeError if not."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    argv = command(name, port, launch, workdir)
    if launch.pinned_cpu is not None:
        argv = ["taskset", "-c", launch.pinned_cpu, *argv]
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
    env.pop("VIRTUAL_ENV", None)
    log_path = workdir / "server.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            argv,
            cwd=APPS,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            process_group=0,
        )
    server = Running(name, proc, port, launch.tls is not None, log_path, workdir)
    REGISTRY.append(server)
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            stop(server)
            raise RuntimeError(f"{name} exited with {proc.returncode}:\n{server.log_tail()}")
        with contextlib.suppress(OSError, http.client.HTTPException):
            status, _, _ = request(server, "GET", "/hello", timeout=1.0)
            if status == 200:
                server.tree()
                return server
        if time.monotonic() > deadline:
            stop(server)
            raise RuntimeError(f"{name} did not answer within {timeout:.0f}s:\n{server.log_tail()}")
        time.sleep(0.05)


def stop(server: Running, timeout: float = 15.0) -> None:
    """SIGTERM to the server's PID; then SIGKILL to its process group and any leftover PID."""
    server.tree()
    proc = server.proc
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=timeout)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    for pid in server.pids - {proc.pid}:
        with contextlib.suppress(psutil.Error):
            p = psutil.Process(pid)
            p.kill()
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)
    if server in REGISTRY:
        REGISTRY.remove(server)


REGISTRY: list[Running] = []


def stop_all() -> None:
    for server in list(REGISTRY):
        stop(server, timeout=5)


def _client_context() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def request(
    server: Running,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 5.0,
) -> tuple[int, dict[str, str], bytes]:
    conn: http.client.HTTPConnection
    if server.tls:
        conn = http.client.HTTPSConnection(
            HOST, server.port, timeout=timeout, context=_client_context()
        )
    else:
        conn = http.client.HTTPConnection(HOST, server.port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        data = resp.read()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, data
    finally:
        conn.close()


def check(server: Running, route: str) -> str | None:
    """One request on ``route`` ("hello", "close", "echo", "gzip"); None if the answer is right."""
    try:
        if route == "hello":
            status, _, body = request(server, "GET", "/hello")
            want = HELLO
        elif route == "close":
            status, _, body = request(server, "GET", "/hello", headers={"Connection": "close"})
            want = HELLO
        elif route == "echo":
            payload = b"x" * 65536
            status, _, body = request(server, "POST", "/echo", body=payload)
            want = b"65536"
        elif route == "gzip":
            status, headers, body = request(
                server, "GET", "/big", headers={"Accept-Encoding": "gzip"}
            )
            if status == 200 and headers.get("content-encoding") != "gzip":
                return f"GET /big: not gzipped (content-encoding {headers.get('content-encoding')})"
            body = gzip.decompress(body) if status == 200 else body
            want = BIG_JSON
        else:
            raise ValueError(route)
    except (OSError, http.client.HTTPException, gzip.BadGzipFile) as exc:
        return f"{route}: {type(exc).__name__}: {exc}"
    if status != 200 or body != want:
        return f"{route}: status {status}, {len(body)} bytes, expected 200 and {len(want)} bytes"
    return None


def have(program: str) -> bool:
    return shutil.which(program) is not None
