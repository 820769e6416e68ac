"""prefork under systemd, end to end: sd_notify, socket activation, ``prefork check``, PREFORK_*.

A datagram socket bound by the test stands in for systemd's notify socket;
Debian's ``systemd-socket-activate`` (package systemd) passes real listening
sockets the way a .socket unit does. Every server runs in its own process
group and is stopped by it; traffic goes to 127.0.0.1 (or a unix socket) only.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import tomllib
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from prefork.config import Config
from prefork.master.systemd import monotonic_usec
from tests.conftest import free_port, wait_until
from tests.e2e.conftest import ServerProcess, StartServer
from tests.e2e.helpers import http_exchange

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
REQUEST = b"GET / HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"
NOTIFY_TIMEOUT_S = 20.0

APP = """
import json, os

SEEN = ("NOTIFY_SOCKET", "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES")
KEYS = ("http", "max_header_count", "keepalive_idle_timeout", "request_line_limit")

def handle(method, query, args, headers, body, ctx):
    answer = {
        "pid": os.getpid(),
        "env": {k: os.environ.get(k) for k in SEEN},
        "cfg": {k: ctx.cfg[k] for k in KEYS},
    }
    return json.dumps(answer), 200, {"content-type": "application/json"}
"""


def generation_pids(server: ServerProcess, generation: int) -> set[int]:
    """The pids of the workers of ``generation`` that logged ready."""
    return {int(m) for m in re.findall(rf"pid (\d+), gen {generation}\) ready", server.log())}


def answer(port: int) -> dict[str, Any]:
    raw = http_exchange(port, REQUEST, timeout=20)
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), raw
    result: dict[str, Any] = json.loads(body)
    return result


# --- sd_notify -----------------------------------------------------------------


class NotifySocket:
    """A datagram socket standing in for systemd's NOTIFY_SOCKET."""

    def __init__(self, abstract: bool, directory: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        if abstract:
            self.address = f"@prefork-e2e-{uuid.uuid4().hex}"
            self.sock.bind(b"\0" + self.address[1:].encode())
        else:
            self.address = os.path.join(directory, "notify")
            self.sock.bind(self.address)

    def next(self, timeout: float = NOTIFY_TIMEOUT_S) -> dict[str, str]:
        """The next message as {KEY: VALUE}."""
        self.sock.settimeout(timeout)
        data = self.sock.recv(4096).decode()
        return dict(line.split("=", 1) for line in data.split("\n"))


@pytest.fixture(params=["path", "abstract"])
def notify(request: pytest.FixtureRequest) -> Iterator[NotifySocket]:
    # A short directory: a unix socket path must fit in 108 bytes.
    with tempfile.TemporaryDirectory(prefix="pf-") as directory:
        sock = NotifySocket(request.param == "abstract", directory)
        yield sock
        sock.sock.close()


def test_notify_ready_reloading_ready_stopping(
    start_server: StartServer, notify: NotifySocket
) -> None:
    server = start_server(APP, "-w", "2", env={"NOTIFY_SOCKET": notify.address})
    ready = notify.next()
    assert ready["READY"] == "1"
    assert ready["STATUS"] == "generation 1 serving, 2 worker(s)"
    first = answer(server.port)
    # The master took NOTIFY_SOCKET out: a worker (and what it runs) never speaks for it.
    assert first["env"]["NOTIFY_SOCKET"] is None

    before = monotonic_usec()
    os.kill(server.pid, signal.SIGHUP)
    reloading = notify.next()
    after = monotonic_usec()
    assert reloading["RELOADING"] == "1"
    assert before <= int(reloading["MONOTONIC_USEC"]) <= after
    assert "reloading" in reloading["STATUS"]
    reloaded = notify.next()
    assert reloaded["READY"] == "1"
    assert reloaded["STATUS"] == "reloaded; generation 2 serving, 2 worker(s)"
    server.wait_log(r"generation 2 ready")
    gen2 = generation_pids(server, 2)
    wait_until(lambda: answer(server.port)["pid"] in gen2, timeout=20)

    os.kill(server.pid, signal.SIGTTIN)
    assert notify.next() == {"STATUS": "generation 2 serving, 3 worker(s)"}

    os.kill(server.pid, signal.SIGTERM)
    stopping = notify.next()
    assert stopping["STOPPING"] == "1"
    assert stopping["STATUS"].startswith("stopping (graceful)")
    assert server.proc.wait(timeout=30) == 0


def test_a_failed_reload_still_reports_ready(start_server: StartServer, tmp_path: Path) -> None:
    # systemd waits for READY=1 after RELOADING=1; a reload that does not take
    # must send it too, or the unit would sit in "reloading".
    with tempfile.TemporaryDirectory(prefix="pf-") as directory:
        notify = NotifySocket(False, directory)
        config = tmp_path / "prefork.toml"
        config.write_text("workers = 1\n")
        server = start_server(APP, "-c", str(config), env={"NOTIFY_SOCKET": notify.address})
        assert notify.next()["READY"] == "1"

        # 1. A config that does not validate: nothing is forked.
        config.write_text("workers = 0\n")
        os.kill(server.pid, signal.SIGHUP)
        assert notify.next()["RELOADING"] == "1"
        done = notify.next()
        assert done["READY"] == "1"
        assert done["STATUS"].startswith("reload failed: workers: must be >= 1")
        assert done["STATUS"].endswith("generation 1 serving, 1 worker(s)")

        # 2. A new generation that cannot boot: the reload is aborted.
        config.write_text("workers = 1\n")
        (tmp_path / "app.py").write_text("raise RuntimeError('broken deploy')\n")
        os.kill(server.pid, signal.SIGHUP)
        assert notify.next()["RELOADING"] == "1"
        done = notify.next()
        assert done["READY"] == "1"
        assert done["STATUS"].startswith("reload failed:")
        assert "failed to boot" in done["STATUS"]
        assert done["STATUS"].endswith("generation 1 serving, 1 worker(s)")
        assert answer(server.port)["env"]["NOTIFY_SOCKET"] is None  # generation 1 serves
        notify.sock.close()


def test_ready_waits_for_every_worker_of_the_first_generation(
    start_server: StartServer, notify: NotifySocket
) -> None:
    # The first worker to import the app boots in 0.5 s, the second in 3 s:
    # READY=1 must wait for the slower one, not come with the first.
    slow = APP + textwrap.dedent(
        """
        import time
        try:
            os.close(os.open("first-import", os.O_CREAT | os.O_EXCL))
            time.sleep(0.5)
        except FileExistsError:
            time.sleep(3)
        """
    )
    started = time.monotonic()
    start_server(slow, "-w", "2", env={"NOTIFY_SOCKET": notify.address}, wait=False)
    assert notify.next()["READY"] == "1"
    assert time.monotonic() - started >= 3


# --- socket activation -------------------------------------------------------


def socket_activate() -> str:
    path = shutil.which("systemd-socket-activate")
    if path is None:
        pytest.skip("systemd-socket-activate not found (Debian package systemd)")
    return path


def activated(directory: Path, listen: str, *args: str, fdname: str = "web") -> ServerProcess:
    """``systemd-socket-activate -l LISTEN python -m prefork run app:handle ARGS``.

    The tool binds LISTEN, waits for the first connection, then execs prefork
    with the socket as fd 3; its environment is only what -E passes.
    """
    cmd = [
        socket_activate(),
        "-l",
        listen,
        f"--fdname={fdname}",
        "-E",
        f"PYTHONPATH={ROOT}",
        "-E",
        "PYTHONUNBUFFERED=1",
        sys.executable,
        "-m",
        "prefork",
        "run",
        "app:handle",
        *args,
    ]
    proc = subprocess.Popen(
        cmd,
        cwd=directory,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        process_group=0,
    )
    return ServerProcess(proc)


@pytest.fixture
def servers() -> Iterator[list[ServerProcess]]:
    started: list[ServerProcess] = []
    yield started
    for server in started:
        server.stop()


def socket_inode(pid: int, fd: int) -> str:
    return os.readlink(f"/proc/{pid}/fd/{fd}")


def test_socket_activation_serves_and_keeps_the_socket_across_reloads(
    tmp_path: Path, servers: list[ServerProcess]
) -> None:
    (tmp_path / "app.py").write_text(APP)
    (tmp_path / "prefork.toml").write_text("backlog = 100\n")
    port = free_port()
    # The flag names an address no one here can bind (TEST-NET-1): the master
    # must serve on the socket it was given instead.
    args = ["-w", "2", "-b", "192.0.2.1:80", "-c", "prefork.toml"]
    server = activated(tmp_path, f"127.0.0.1:{port}", *args)
    servers.append(server)
    server.wait_log(rf"Listening on 127\.0\.0\.1:{port} as 3")  # the tool's own line
    first = answer(port)  # this connection makes the tool exec prefork
    assert set(first["env"].values()) == {None}  # LISTEN_* and NOTIFY_SOCKET: all cleared
    server.wait_log(rf"listening on http://127\.0\.0\.1:{port} \(from systemd, fd 3, web\)")
    # systemd-socket-activate execs: its pid is the master's.
    inode = socket_inode(server.pid, 3)
    assert inode.startswith("socket:")

    # A changed backlog would need a restart with sockets of our own; with
    # systemd's, the .socket unit has the say and the reload just goes on.
    (tmp_path / "prefork.toml").write_text("backlog = 200\n")
    os.kill(server.pid, signal.SIGHUP)
    server.wait_log(r"generation 2 ready", timeout=30)
    gen2 = generation_pids(server, 2)
    wait_until(lambda: answer(port)["pid"] in gen2, timeout=20)
    assert socket_inode(server.pid, 3) == inode  # the same socket, not re-bound
    log = server.log()
    assert log.count("listening on") == 1, log
    assert "needs a restart" not in log
    assert "cannot bind" not in log

    assert server.stop(signal.SIGTERM) == 0


def test_socket_activation_on_a_unix_socket(tmp_path: Path, servers: list[ServerProcess]) -> None:
    (tmp_path / "app.py").write_text(APP)
    with tempfile.TemporaryDirectory(prefix="pf-") as directory:
        path = os.path.join(directory, "prefork.sock")
        server = activated(tmp_path, path, fdname="unix")
        servers.append(server)
        wait_until(lambda: os.path.exists(path), timeout=10)
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.settimeout(20)
            client.connect(path)
            client.sendall(REQUEST)
            raw = b""
            while chunk := client.recv(65536):
                raw += chunk
        assert raw.startswith(b"HTTP/1.1 200"), raw
        server.wait_log(rf"listening on http\+unix:{path} \(from systemd, fd 3, unix\)")
        assert server.stop(signal.SIGTERM) == 0


# --- prefork check -------------------------------------------------------------


def prefork(
    directory: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``python -m prefork ARGS`` to completion, in its own process group."""
    return subprocess.run(
        [sys.executable, "-m", "prefork", *args],
        cwd=directory,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        process_group=0,
        env={**os.environ, **(env or {})},
    )


def config_lines(stdout: str) -> dict[str, Any]:
    """The ``key = value`` lines of check's output, read as TOML."""
    return tomllib.loads("\n".join(ln for ln in stdout.splitlines() if not ln.startswith("#")))


def test_check_prints_the_effective_config_and_imports_the_app(tmp_path: Path) -> None:
    (tmp_path / "app.py").write_text(
        "import pathlib\npathlib.Path('imported').write_text('yes')\n" + APP
    )
    (tmp_path / "prefork.toml").write_text("workers = 2\nmax_header_count = 50\nbacklog = 64\n")
    # A port that is taken, and a "Redis" that listens: check binds nothing and
    # connects to nothing.
    with (
        socket.create_server(("127.0.0.1", 0)) as taken,
        socket.create_server(("127.0.0.1", 0)) as redis,
    ):
        port = taken.getsockname()[1]
        redis_url = f"redis://127.0.0.1:{redis.getsockname()[1]}/0"
        proc = prefork(
            tmp_path,
            "check",
            "app:handle",
            "-c",
            "prefork.toml",
            "-w",
            "3",
            "-b",
            f"127.0.0.1:{port}",
            env={"PREFORK_MAX_HEADER_COUNT": "60", "PREFORK_REDIS_URL": redis_url},
        )
        redis.setblocking(False)
        with pytest.raises(BlockingIOError):
            redis.accept()
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    values = config_lines(proc.stdout)
    assert values["workers"] == 3  # flag over file
    assert values["max_header_count"] == 60  # environment over file
    assert values["backlog"] == 64  # file over default
    assert values["redis_url"] == redis_url
    assert Config.build(values).port == port
    assert f"# would serve app:handle (native) with 3 worker(s) on http://127.0.0.1:{port}" in (
        proc.stdout
    )
    assert (tmp_path / "imported").read_text() == "yes"


def test_run_dash_dash_check_is_check(tmp_path: Path) -> None:
    (tmp_path / "app.py").write_text(APP)
    check = prefork(tmp_path, "check", "app:handle", "-w", "2")
    run_check = prefork(tmp_path, "run", "--check", "app:handle", "-w", "2")
    assert check.returncode == run_check.returncode == 0
    assert check.stdout == run_check.stdout


def test_check_warns_about_an_unknown_variable(tmp_path: Path) -> None:
    (tmp_path / "app.py").write_text(APP)
    proc = prefork(tmp_path, "check", "app:handle", env={"PREFORK_WORKRES": "4"})
    assert proc.returncode == 0
    assert (
        proc.stderr == "prefork: warning: PREFORK_WORKRES: unknown environment variable, ignored\n"
    )


BAD_CHECKS = [
    ("bad-config-value", {"prefork.toml": "workers = 0\n"}, ["-c", "prefork.toml"], {}, "workers"),
    ("bad-toml", {"prefork.toml": "workers = \n"}, ["-c", "prefork.toml"], {}, "invalid TOML"),
    ("no-config-file", {}, ["-c", "missing.toml"], {}, "missing.toml: not found"),
    (
        "missing-cert",
        {},
        ["--certfile", "nocert.pem", "--keyfile", "nokey.pem"],
        {},
        "nocert.pem",
    ),
    ("bad-bind", {"prefork.toml": 'binds = ["nowhere"]\n'}, ["-c", "prefork.toml"], {}, "nowhere"),
    ("bad-env", {}, [], {"PREFORK_WORKERS": "many"}, "PREFORK_WORKERS"),
    ("module-not-found", {}, ["--target", "nosuchmodule:handle"], {}, "'nosuchmodule' not found"),
    (
        "import-error",
        {"app.py": "x = 1\nraise RuntimeError('boom at import')\n"},
        [],
        {},
        "RuntimeError: boom at import (line 2)",
    ),
    ("no-attribute", {}, ["--target", "app:nothere"], {}, "has no attribute 'nothere'"),
]


@pytest.mark.parametrize(
    ("files", "args", "env", "culprit"), [c[1:] for c in BAD_CHECKS], ids=[c[0] for c in BAD_CHECKS]
)
@pytest.mark.parametrize("command", [["check"], ["run", "--check"]], ids=["check", "run-check"])
def test_check_fails_with_one_line_naming_the_culprit(
    tmp_path: Path,
    command: list[str],
    files: dict[str, str],
    args: list[str],
    env: dict[str, str],
    culprit: str,
) -> None:
    (tmp_path / "app.py").write_text(APP)
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    target = "app:handle"
    if args[:1] == ["--target"]:
        target, args = args[1], args[2:]
    proc = prefork(tmp_path, *command, target, *args, env=env)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("prefork: error: ")
    assert culprit in lines[0]


# --- PREFORK_* environment ---------------------------------------------------------


def test_environment_precedence_at_start_and_on_reload(
    start_server: StartServer, tmp_path: Path
) -> None:
    config = tmp_path / "prefork.toml"
    config.write_text('http = "auto"\nmax_header_count = 50\nkeepalive_idle_timeout = 5\n')
    env = {
        "PREFORK_HTTP": "httptools",  # loses to --http
        "PREFORK_MAX_HEADER_COUNT": "60",  # wins over the file
        "PREFORK_NOT_A_KEY": "1",
    }
    server = start_server(APP, "-c", str(config), "--http", "h11", env=env)
    expected = {
        "http": "h11",
        "max_header_count": 60,
        "keepalive_idle_timeout": 5.0,
        "request_line_limit": 8192,
    }
    assert answer(server.port)["cfg"] == expected
    server.wait_log(r"WARNING.*PREFORK_NOT_A_KEY: unknown environment variable")

    # The file changes; on HUP the environment still wins over it, the flag over both.
    config.write_text(
        'http = "httptools"\nmax_header_count = 70\nkeepalive_idle_timeout = 7\n'
        "request_line_limit = 4096\n"
    )
    os.kill(server.pid, signal.SIGHUP)
    server.wait_log(r"generation 2 ready", timeout=30)
    expected |= {"keepalive_idle_timeout": 7.0, "request_line_limit": 4096}
    wait_until(lambda: answer(server.port)["cfg"] == expected, timeout=20)


def test_run_with_a_bad_variable_exits_with_one_line_naming_it(tmp_path: Path) -> None:
    (tmp_path / "app.py").write_text(APP)
    proc = prefork(
        tmp_path, "run", "app:handle", "-b", "127.0.0.1:0", env={"PREFORK_PORT": "eighty"}
    )
    assert proc.returncode == 2
    assert proc.stderr.startswith("prefork: error: environment variable PREFORK_PORT='eighty':")
    assert len(proc.stderr.splitlines()) == 1
