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
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psutil

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
APPS = BENCH / "apps"
VENV = BENCH / ".venv"
VENV_PYTHON = VENV / "bin" / "python"
HOST = "127.0.0.1"
# Where prefork's processes import it from (build.pythonpath): the compiled
# build by default, set by run.py; the "pure Python" row always runs REPO.
PREFORK_PATH = REPO
HELLO = b"Hello, World!"

sys.path.insert(0, str(APPS))
from bigdoc import BIG_JSON  # noqa: E402

# name -> (label, needs the peers' venv, Python peer?)
SERVERS: dict[str, tuple[str, bool, bool]] = {
    "prefork": ("prefork", False, False),
    "prefork-pure": ("prefork (pure Python)", False, False),
    "prefork-h11": ("prefork (h11)", False, False),
    "prefork-access": ("prefork (access log on)", False, False),
    "prefork-metrics": ("prefork (metrics on)", False, False),
    "prefork-nocache": ("prefork (compression cache off)", False, False),
    "ceiling": ("design ceiling", False, False),
    "uvicorn": ("uvicorn (httptools)", True, True),
    "uvicorn-h11": ("uvicorn (h11)", True, True),
    "granian": ("granian (ASGI)", True, True),
    "granian-wsgi": ("granian (WSGI)", True, True),
    "gunicorn": ("gunicorn + uvicorn worker", True, True),
    "gunicorn-gthread": ("gunicorn gthread", True, True),
    "nginx": ("nginx", False, False),
}
PYTHON_PEERS = tuple(name for name, (_, _, peer) in SERVERS.items() if peer)

# The apps a scenario can ask for, and what each interface runs for it
# (MODULE:ATTR in apps/). "bench" is every server's own app: prefork's native
# handler, the plain ASGI or WSGI app for the peers, nginx's config. The
# others put prefork on an app interface (--interface asgi or wsgi) beside the
# peers that serve the same app.
APP_TARGETS: dict[str, dict[str, str]] = {
    "bench": {"native": "bench_app:handle", "asgi": "asgi_app:app", "wsgi": "wsgi_app:app"},
    "asgi": {"asgi": "asgi_app:app"},
    "wsgi": {"wsgi": "wsgi_app:app"},
    "fastapi": {"asgi": "fastapi_app:app"},
    "flask": {"wsgi": "flask_app:app"},
}
APP_INTERFACE = {"asgi": "asgi", "wsgi": "wsgi", "fastapi": "asgi", "flask": "wsgi"}
_WSGI_PEERS = ("granian-wsgi", "gunicorn-gthread")
# gunicorn's gthread worker: threads per worker (gunicorn's docs suggest 2-4 x
# cores; the hello apps never block, so more would only add switching).
GTHREAD_THREADS = 4


def interface_of(name: str, app: str) -> str:
    """The interface ``name`` serves ``app`` through: native, asgi, wsgi or "" (nginx, ceiling)."""
    if name.startswith("prefork"):
        return APP_INTERFACE.get(app, "native")
    if name in ("ceiling", "nginx"):
        return ""
    return "wsgi" if name in _WSGI_PEERS else "asgi"


def app_target(name: str, app: str) -> str:
    """MODULE:ATTR that ``name`` runs for ``app``; ValueError when it cannot serve it."""
    iface = interface_of(name, app)
    target = APP_TARGETS[app].get(iface)
    if target is None:
        raise ValueError(f"{name} cannot serve the {app!r} app")
    return target


def interface_row(name: str, app: str) -> bool:
    """A prefork row on an app interface (ASGI/WSGI), which may not exist yet."""
    return name.startswith("prefork") and app in APP_INTERFACE


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


def command(name: str, port: int, launch: Launch, workdir: Path, app: str = "bench") -> list[str]:
    """The argv that starts ``name`` on ``port`` serving ``app`` (without taskset)."""
    w = str(launch.workers)
    tls = launch.tls
    if name in ("ceiling", "nginx") and app != "bench":
        raise ValueError(f"{name} cannot serve the {app!r} app")
    if name.startswith("prefork"):
        argv = [sys.executable, "-m", "prefork", "run", app_target(name, app)]
        toml = {
            "prefork-nocache": "prefork-nocache.toml",
            "prefork-metrics": "prefork-metrics.toml",
        }
        argv += ["-b", f"{HOST}:{port}", "-w", w, "-c", str(APPS / toml.get(name, "prefork.toml"))]
        argv += ["--log-level", "access" if name == "prefork-access" else "info"]
        argv += ["--http", "h11" if name == "prefork-h11" else "httptools"]
        if interface_row(name, app):
            argv += ["--interface", APP_INTERFACE[app]]
        if tls:
            argv += ["--certfile", tls[0], "--keyfile", tls[1]]
        return argv
    if name == "ceiling":
        return [sys.executable, str(BENCH / "ceiling.py"), "--host", HOST, "--port", str(port)]
    if name == "nginx":
        conf = nginx_conf(port, launch, workdir)
        return ["nginx", "-p", str(workdir), "-c", str(conf), "-e", str(workdir / "error.log")]
    target = app_target(name, app)
    if name.startswith("uvicorn"):
        argv = [str(VENV_PYTHON), "-m", "uvicorn", target, "--host", HOST]
        argv += ["--port", str(port), "--workers", w, "--loop", "uvloop"]
        argv += ["--http", "h11" if name == "uvicorn-h11" else "httptools"]
        argv += ["--no-access-log", "--log-level", "warning", "--timeout-keep-alive", "60"]
        if tls:
            argv += ["--ssl-certfile", tls[0], "--ssl-keyfile", tls[1]]
        return argv
    if name.startswith("granian"):
        iface = interface_of(name, app)
        argv = [str(VENV / "bin" / "granian"), "--interface", iface, "--host", HOST]
        argv += ["--port", str(port), "--workers", w, "--http", "1"]
        if iface == "asgi":
            argv += ["--loop", "uvloop"]
        argv += ["--no-ws", "--no-access-log", "--log-level", "warning"]
        argv += ["--working-dir", str(APPS)]
        if tls:
            argv += ["--ssl-certificate", tls[0], "--ssl-keyfile", tls[1]]
        return [*argv, target]
    if name.startswith("gunicorn"):
        argv = [str(VENV_PYTHON), "-m", "gunicorn"]
        if name == "gunicorn-gthread":
            argv += ["-k", "gthread", "--threads", str(GTHREAD_THREADS)]
            argv += ["--worker-connections", "2048"]
        else:
            argv += ["-k", "uvicorn.workers.UvicornWorker"]
        argv += ["-w", w, "-b", f"{HOST}:{port}", "--keep-alive", "60", "--backlog", "4096"]
        argv += ["--log-level", "warning"]
        if tls:
            argv += ["--certfile", tls[0], "--keyfile", tls[1]]
        return [*argv, target]
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


def start(
    name: str,
    launch: Launch,
    workdir: Path,
    timeout: float = 30.0,
    app: str = "bench",
    argv_of: Callable[[int], list[str]] | None = None,
) -> Running:
    """Start ``name`` and return once it answers ``GET /hello``; raise RuntimeError if not.

    Any HTTP answer means it is up (whether the answer is right is check()'s
    business): a server that answers 500, say an interface not built yet,
    fails at once instead of after ``timeout``. ``argv_of(port)``: the
    command line, when not ``command()``'s (another app, or under callgrind).
    """
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    argv = argv_of(port) if argv_of else command(name, port, launch, workdir, app)
    if launch.pinned_cpu is not None:
        argv = ["taskset", "-c", launch.pinned_cpu, *argv]
    path = PREFORK_PATH if name.startswith("prefork") and name != "prefork-pure" else REPO
    env = {**os.environ, "PYTHONPATH": str(path), "PYTHONUNBUFFERED": "1"}
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
            request(server, "GET", "/hello", timeout=1.0)
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


def raw_request(server: Running, head: bytes, timeout: float = 5.0) -> tuple[int, bytes]:
    """Send ``head`` (a whole request head, no body) as it is; the answer's status and body."""
    sock = socket.create_connection((HOST, server.port), timeout=timeout)
    if server.tls:
        sock = _client_context().wrap_socket(sock)
    with sock:
        sock.sendall(head)
        resp = http.client.HTTPResponse(sock, method="GET")
        try:
            resp.begin()
            return resp.status, resp.read()
        finally:
            resp.close()


def check(server: Running, route: str, head: bytes | None = None) -> str | None:
    """One request on ``route`` ("hello", "close", "echo", "gzip", "varied": ``head`` as it
    is); None if the answer is right."""
    try:
        if route == "varied":
            assert head is not None
            status, body = raw_request(server, head)
            want = HELLO
        elif route == "hello":
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
