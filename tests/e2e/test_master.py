"""The master and its workers, observed from outside: real processes, psutil, sockets.

Every loop here is bounded in count and time; traffic goes to 127.0.0.1 only;
processes are signalled by pid (or, on teardown, by their process group).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from tests.conftest import free_port, wait_until
from tests.e2e.conftest import ServerProcess, StartServer

pytestmark = pytest.mark.e2e

APP = """
import asyncio
import os
import sys

VERSION = "version-one"


async def handle(method, query, args, headers, body, ctx):
    if query == "/slow":
        print(f"slow-begin {os.getpid()}", file=sys.stderr, flush=True)
        await asyncio.sleep(1.5)
        return f"slow {os.getpid()}", 200, {"content-type": "text/plain"}
    if query == "/spin":
        while True:
            pass
    if query == "/version":
        return VERSION, 200, None
    if query == "/redis":
        hits = await ctx.redis_module.incr("prefork-test-hits")
        return f"{os.getpid()} {hits}", 200, None
    if query == "/has-redis":
        return str(ctx.redis_module is not None), 200, None
    return f"{os.getpid()}", 200, {"content-type": "text/plain"}
"""

# Short timeouts keep the suite fast; "info" keeps the access lines out of the log.
BASE_CONFIG: dict[str, object] = {
    "graceful_timeout": 5,
    "worker_timeout": 10,
    "keepalive_idle_timeout": 5,
    "log_level": "info",
}

LOAD_PACING_S = 2.5  # between the signals of the load test: about 15 s of traffic in all

READY_RE = re.compile(r"worker \d+ \(pid (\d+), gen (\d+)\) ready")
STOPPING_RE = re.compile(r"stopping worker \d+ \(pid (\d+)")


# -- helpers -------------------------------------------------------------------


@pytest.fixture
def servers(start_server: StartServer) -> Iterator[StartServer]:
    """``start_server`` that also closes each server's stderr pipe after stopping it."""
    started: list[ServerProcess] = []

    def start_and_track(*args: object, **kwargs: object) -> ServerProcess:
        server = start_server(*args, **kwargs)
        started.append(server)
        return server

    yield start_and_track
    for server in started:
        server.stop()
        if server.proc.stderr is not None:
            server.proc.stderr.close()


def write_config(path: Path, **values: object) -> str:
    """Write a TOML config (BASE_CONFIG updated with ``values``); returns its path."""
    lines = [f"{key} = {json.dumps(value)}" for key, value in {**BASE_CONFIG, **values}.items()]
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def start(start_server: StartServer, tmp_path: Path, *args: str, **config: object) -> ServerProcess:
    """Start APP with a config file built from ``config``; wait until every worker is ready."""
    conf = write_config(tmp_path / "prefork.toml", **config)
    server = start_server(APP, "-c", conf, *args)
    workers = int(str(config.get("workers", 1)))
    wait_until(lambda: len(serving_pids(server)) == workers, timeout=10)
    return server


def worker_pids(server: ServerProcess) -> set[int]:
    """Live (not zombie) children of the master whose title says worker."""
    try:
        children = psutil.Process(server.pid).children()
    except psutil.NoSuchProcess:
        return set()
    pids = set()
    for proc in children:
        try:
            if proc.status() == psutil.STATUS_ZOMBIE:
                continue
            if " ".join(proc.cmdline()).startswith("prefork: worker"):
                pids.add(proc.pid)
        except psutil.Error:
            continue
    return pids


def serving_pids(server: ServerProcess) -> set[int]:
    """Live workers that reported ready and were not told to stop."""
    text = server.log()
    ready = {int(m.group(1)) for m in READY_RE.finditer(text)}
    stopping = {int(m.group(1)) for m in STOPPING_RE.finditer(text)}
    return (ready - stopping) & worker_pids(server)


def get(port: int, path: str = "/", timeout: float = 10.0) -> tuple[int, dict[str, str], str]:
    """One GET on a fresh connection: (status, lower-cased headers, body)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"Connection": "close"})
        resp = conn.getresponse()
        headers = {k.lower(): v for k, v in resp.getheaders()}
        return resp.status, headers, resp.read().decode()
    finally:
        conn.close()


def title(pid: int) -> str:
    """The process title (setproctitle pads the command line with spaces)."""
    return " ".join(psutil.Process(pid).cmdline()).strip()


def exited(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


class Background:
    """A GET running in a thread; ``result`` is (status, headers, body) or the exception."""

    def __init__(self, port: int, path: str, timeout: float = 15.0) -> None:
        self.result: tuple[int, dict[str, str], str] | BaseException | None = None
        self.finished = 0.0  # time.monotonic() when the answer (or error) arrived
        self._thread = threading.Thread(target=self._run, args=(port, path, timeout), daemon=True)
        self._thread.start()

    def _run(self, port: int, path: str, timeout: float) -> None:
        try:
            self.result = get(port, path, timeout)
        except BaseException as exc:
            self.result = exc
        self.finished = time.monotonic()

    def join(self, timeout: float = 15.0) -> tuple[int, dict[str, str], str] | BaseException:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "request did not finish"
        assert self.result is not None
        return self.result


def slow_in_flight(server: ServerProcess, count: int = 1) -> None:
    wait_until(lambda: server.log().count("slow-begin") >= count, timeout=10)


# -- workers, titles, supervision ----------------------------------------------


def test_workers_are_children_with_titles(servers: StartServer, tmp_path: Path) -> None:
    server = start(servers, tmp_path, workers=3)
    pids = worker_pids(server)
    assert len(pids) == 3
    titles = sorted(title(pid) for pid in pids)
    assert titles == [f"prefork: worker {n} gen 1 [app:handle]" for n in (1, 2, 3)]
    assert title(server.pid) == "prefork: master [app:handle]"
    assert all(psutil.Process(pid).ppid() == server.pid for pid in pids)


def test_killed_worker_is_replaced(servers: StartServer, tmp_path: Path) -> None:
    server = start(servers, tmp_path, workers=2)
    before = serving_pids(server)
    victim = min(before)
    os.kill(victim, signal.SIGKILL)
    wait_until(lambda: len(serving_pids(server)) == 2 and victim not in worker_pids(server))
    assert serving_pids(server) & before == before - {victim}
    server.wait_log(rf"pid {victim}, gen 1\) died \(signal SIGKILL\)")
    assert get(server.port)[0] == 200


def test_ttin_and_ttou_change_the_worker_count(servers: StartServer, tmp_path: Path) -> None:
    server = start(servers, tmp_path, workers=2)
    os.kill(server.pid, signal.SIGTTIN)
    wait_until(lambda: len(serving_pids(server)) == 3)
    # One at a time: a signal sent again while still pending is delivered once.
    for expected in ("SIGTTOU: 2 worker", "SIGTTOU: 1 worker", "SIGTTOU: already at one worker"):
        os.kill(server.pid, signal.SIGTTOU)
        server.wait_log(expected)
    wait_until(lambda: len(worker_pids(server)) == 1)
    assert get(server.port)[0] == 200


# Loaded into the master through PYTHONPATH: the second fork's child sends itself
# SIGTERM before os.fork() even returns in it, i.e. before the worker's own
# signal dispositions are in place.
TERM_IN_FORK_WINDOW = """
import os
import signal

_forks = [0]


def _count():
    _forks[0] += 1


def _term_second_child():
    if _forks[0] == 2:
        os.kill(os.getpid(), signal.SIGTERM)


os.register_at_fork(before=_count, after_in_child=_term_second_child)
"""


def test_signal_right_after_the_fork_reaches_the_worker(
    servers: StartServer, tmp_path: Path
) -> None:
    # Until the worker has reset the master's handlers, a signal for it must
    # wait (blocked), not run the master's handler in the child and be lost.
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(TERM_IN_FORK_WINDOW)
    conf = write_config(tmp_path / "prefork.toml", workers=1)
    server = servers(APP, "-c", conf, env={"PYTHONPATH": str(hook)})
    wait_until(lambda: len(serving_pids(server)) == 1, timeout=10)
    os.kill(server.pid, signal.SIGTTIN)  # the second fork
    server.wait_log(r"worker 2 \(pid \d+, gen 1\) failed to boot \(signal SIGTERM\)")
    wait_until(lambda: len(serving_pids(server)) == 2, timeout=20)  # retried, without the hook
    assert get(server.port)[0] == 200


def test_every_bind_is_listened_on(servers: StartServer, tmp_path: Path) -> None:
    server = start(servers, tmp_path, "-b", "127.0.0.1:0", workers=2)
    ports = [
        int(m.group(1))
        for m in re.finditer(r"listening on http://127\.0\.0\.1:(\d+)", server.log())
    ]
    assert len(set(ports)) == 2
    workers = serving_pids(server)
    for port in ports:
        status, _, body = get(port)
        assert status == 200
        assert int(body) in workers


def _pipe_inodes(pid: int) -> set[str]:
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            if target.startswith("pipe:"):
                inodes.add(target)
    return inodes


def test_workers_hold_only_their_own_pipe(servers: StartServer, tmp_path: Path) -> None:
    server = start(servers, tmp_path, workers=3)
    stderr = os.readlink(f"/proc/{server.pid}/fd/2")
    master = _pipe_inodes(server.pid) - {stderr}
    own = []
    for pid in serving_pids(server):
        shared = _pipe_inodes(pid) & master  # the master's wakeup pipe, other workers' pipes?
        assert len(shared) == 1, shared  # just its own pipe to the master
        own.extend(shared)
    assert len(set(own)) == 3
    # Reloads leak no descriptor in the master.
    fds_before = len(os.listdir(f"/proc/{server.pid}/fd"))
    for generation in (2, 3):
        old = serving_pids(server)
        os.kill(server.pid, signal.SIGHUP)
        server.wait_log(rf"generation {generation} ready")
        wait_until(lambda old=old: not (worker_pids(server) & old))  # type: ignore[misc]
    # (the master closes a worker's pipe when it reaps it, a moment after the exit)
    wait_until(lambda: len(os.listdir(f"/proc/{server.pid}/fd")) == fds_before, timeout=5)


# -- accepting under connection_limit ------------------------------------------


def test_connection_limit_queues_the_excess(servers: StartServer, tmp_path: Path) -> None:
    server = start(servers, tmp_path, workers=2, connection_limit=1)
    t0 = time.monotonic()
    requests = [Background(server.port, "/slow") for _ in range(3)]
    finished = []
    for req in requests:
        result = req.join()
        assert not isinstance(result, BaseException), result
        assert result[0] == 200
        finished.append(req.finished - t0)  # when it arrived, not when it was joined
    served_by = {int(req.result[2].split()[1]) for req in requests}  # type: ignore[index]
    assert len(served_by) == 2  # one slot each
    # Two at once (~1.5 s), the third waited in the listen queue for a free slot (~3 s).
    ends = sorted(finished)
    assert ends[1] < 2.7, ends
    assert ends[2] >= 2.7, ends


# -- reload --------------------------------------------------------------------


def _load_client(
    port: int, keep_alive: bool, stop: threading.Event, stats: dict[str, int], errors: list[str]
) -> None:
    conn: http.client.HTTPConnection | None = None
    reused = False
    deadline = time.monotonic() + 60
    while not stop.is_set() and time.monotonic() < deadline:
        if conn is None:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            reused = False
        headers = {} if keep_alive else {"Connection": "close"}
        try:
            conn.request("GET", "/", headers=headers)
            resp = conn.getresponse()
            resp.read()
        except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError) as exc:
            conn.close()
            conn = None
            if reused:
                # RFC 9112 §9.3.1: the server may close an idle persistent connection
                # (a draining worker does); a client retries on a new connection.
                stats["stale_keepalive_retries"] += 1
                continue
            errors.append(f"fresh connection: {exc!r}")
            continue
        except OSError as exc:
            errors.append(repr(exc))
            conn.close()
            conn = None
            continue
        stats["requests"] += 1
        if resp.status != 200:
            errors.append(f"status {resp.status}")
        if not keep_alive or resp.will_close:
            conn.close()
            conn = None
        else:
            reused = True
    if conn is not None:
        conn.close()


def test_reloads_and_scaling_under_load_lose_nothing(servers: StartServer, tmp_path: Path) -> None:
    server = start(servers, tmp_path, workers=2)
    initial = serving_pids(server)
    stop = threading.Event()
    stats = {"requests": 0, "stale_keepalive_retries": 0}
    errors: list[str] = []
    clients = [
        threading.Thread(
            target=_load_client, args=(server.port, keep, stop, stats, errors), daemon=True
        )
        for keep in (True, True, False, False)
    ]
    for client in clients:
        client.start()
    try:
        for n in range(5):
            time.sleep(LOAD_PACING_S)  # pacing only: let traffic flow between reloads
            os.kill(server.pid, signal.SIGHUP)
            server.wait_log(rf"generation {n + 2} ready", timeout=15)
            if n == 1:
                os.kill(server.pid, signal.SIGTTIN)
                wait_until(lambda: len(serving_pids(server)) == 3, timeout=10)
            if n == 3:
                os.kill(server.pid, signal.SIGTTOU)
                wait_until(lambda: len(worker_pids(server)) == 2, timeout=10)
        time.sleep(LOAD_PACING_S)
    finally:
        stop.set()
        for client in clients:
            client.join(15)
    print(f"load: {stats}")
    assert not errors, errors[:5]
    assert stats["requests"] > 500, stats
    wait_until(lambda: len(worker_pids(server)) == 2, timeout=10)
    assert not (worker_pids(server) & initial)
    assert "generation 6 ready" in server.log()


def test_connection_accepted_just_before_a_reload_is_answered(
    servers: StartServer, tmp_path: Path
) -> None:
    """Its client has sent nothing yet when its worker starts draining: still answered."""
    server = start(servers, tmp_path, workers=1)
    (old,) = serving_pids(server)
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        local = sock.getsockname()
        wait_until(  # the old worker has accepted it
            lambda: any(
                c.raddr and tuple(c.raddr) == local
                for c in psutil.Process(old).net_connections(kind="tcp")
            )
        )
        os.kill(server.pid, signal.SIGHUP)
        server.wait_log(rf"worker 1 \(pid {old}\) stopping: 1 open connection")
        sock.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        data = b""
        with contextlib.suppress(OSError):
            while chunk := sock.recv(65536):
                data += chunk
    assert data.startswith(b"HTTP/1.1 200 "), data
    assert b"connection: close" in data.lower()


def test_reload_lets_an_in_flight_request_finish(servers: StartServer, tmp_path: Path) -> None:
    server = start(servers, tmp_path, workers=1)
    before = serving_pids(server)
    slow = Background(server.port, "/slow")
    slow_in_flight(server)
    os.kill(server.pid, signal.SIGHUP)
    result = slow.join()
    assert not isinstance(result, BaseException), result
    assert result[0] == 200
    wait_until(lambda: len(worker_pids(server)) == 1 and not (worker_pids(server) & before))
    assert get(server.port)[0] == 200


def test_reload_answers_a_tls_client_whose_handshake_was_pending(
    servers: StartServer, tmp_path: Path
) -> None:
    # The old worker accepted the connection, but the client's handshake is still
    # to come when the reload stops that worker: the drain must wait for it
    # (up to graceful_timeout), not cut it about a second later.
    import ssl

    import trustme

    ca = trustme.CA()
    leaf = ca.issue_cert("localhost")
    cert, key = tmp_path / "server.crt", tmp_path / "server.key"
    cert.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    key.write_bytes(leaf.private_key_pem.bytes())
    conf = tmp_path / "prefork.toml"
    write_config(conf, workers=1)
    with conf.open("a") as fh:
        fh.write(f'[ssl.default]\ncert = "{cert}"\nkey = "{key}"\n')
    server = servers(APP, "-c", str(conf))
    wait_until(lambda: len(serving_pids(server)) == 1, timeout=10)
    (old,) = serving_pids(server)
    client = ssl.create_default_context()
    ca.configure_trust(client)
    raw = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    try:
        time.sleep(0.3)  # the old worker accepts it and waits for the ClientHello
        os.kill(server.pid, signal.SIGHUP)
        server.wait_log(rf"worker 1 \(pid {old}\) stopping: \d+ open connection")
        with client.wrap_socket(raw, server_hostname="localhost") as tls:
            tls.sendall(b"GET /slow HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            chunks = []
            for _ in range(100):
                try:
                    chunk = tls.recv(65536)
                except (ssl.SSLError, OSError):
                    break
                if not chunk:
                    break
                chunks.append(chunk)
    finally:
        raw.close()
    answer = b"".join(chunks)
    assert answer.startswith(b"HTTP/1.1 200 "), answer
    assert answer.endswith(f"slow {old}".encode()), answer


@pytest.mark.parametrize(
    ("broken", "reason"),
    [
        ("workers = [", r"reload failed: config file .*prefork\.toml: invalid TOML"),
        (
            '[ssl.default]\ncert = "missing-cert.pem"\nkey = "missing-key.pem"\n',
            r"reload failed: .*missing-(cert|key)\.pem",
        ),
    ],
    ids=["invalid-toml", "missing-tls-file"],
)
def test_reload_with_a_broken_config_keeps_the_old_generation(
    servers: StartServer, tmp_path: Path, broken: str, reason: str
) -> None:
    server = start(servers, tmp_path, workers=2)
    before = serving_pids(server)
    conf = tmp_path / "prefork.toml"
    conf.write_text(conf.read_text() + broken + "\n")
    os.kill(server.pid, signal.SIGHUP)
    server.wait_log(reason)
    server.wait_log("generation 1 keeps serving")
    assert worker_pids(server) == before
    status, _, body = get(server.port)
    assert status == 200
    assert int(body) in before


def test_reload_with_a_changed_listen_setting_keeps_the_sockets(
    servers: StartServer, tmp_path: Path
) -> None:
    server = start(servers, tmp_path, workers=1)
    write_config(tmp_path / "prefork.toml", workers=1, backlog=17)
    os.kill(server.pid, signal.SIGHUP)
    server.wait_log(r"ip, port, binds or backlog changed: that needs a restart")
    server.wait_log("generation 2 ready")
    assert server.log().count("listening on") == 1
    assert get(server.port)[0] == 200


def test_reload_picks_up_new_app_code(servers: StartServer, tmp_path: Path) -> None:
    conf = write_config(tmp_path / "prefork.toml", workers=2)
    server = servers(APP, "-c", conf, env={"PYTHONDONTWRITEBYTECODE": "1"})
    wait_until(lambda: len(serving_pids(server)) == 2)
    assert get(server.port, "/version")[2] == "version-one"
    app = tmp_path / "app.py"
    app.write_text(app.read_text().replace('"version-one"', '"the second version"'))
    os.kill(server.pid, signal.SIGHUP)
    server.wait_log("generation 2 ready")
    wait_until(lambda: get(server.port, "/version")[2] == "the second version", timeout=10)


def test_reload_with_broken_app_code_keeps_the_old_generation(
    servers: StartServer, tmp_path: Path
) -> None:
    conf = write_config(tmp_path / "prefork.toml", workers=2)
    server = servers(APP, "-c", conf, env={"PYTHONDONTWRITEBYTECODE": "1"})
    wait_until(lambda: len(serving_pids(server)) == 2)
    before = serving_pids(server)
    app = tmp_path / "app.py"
    app.write_text(app.read_text() + "\nraise RuntimeError('half-edited app')\n")
    os.kill(server.pid, signal.SIGHUP)
    server.wait_log(r"reload failed: worker \d+ \(pid \d+, gen 2\) failed to boot")
    assert serving_pids(server) == before
    assert get(server.port, "/version")[2] == "version-one"
    assert server.proc.poll() is None
    assert "Traceback" not in server.log()


# -- stopping ------------------------------------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["TERM", "INT"])
def test_graceful_stop_finishes_the_in_flight_request(
    servers: StartServer, tmp_path: Path, sig: signal.Signals
) -> None:
    server = start(servers, tmp_path, workers=2)
    slow = Background(server.port, "/slow")
    slow_in_flight(server)
    os.kill(server.pid, sig)
    result = slow.join()
    assert not isinstance(result, BaseException), result
    status, headers, _ = result
    assert status == 200
    assert headers.get("connection", "").lower() == "close"
    assert server.proc.wait(timeout=10) == 0


def test_graceful_stop_refuses_new_connections_at_once(
    servers: StartServer, tmp_path: Path
) -> None:
    # Like nginx: a stopping server closes its listen sockets, so a new client is
    # refused at once instead of waiting in the listen queue for the in-flight
    # requests to finish (up to graceful_timeout) and then being reset.
    server = start(servers, tmp_path, workers=2)
    slow = Background(server.port, "/slow")
    slow_in_flight(server)
    os.kill(server.pid, signal.SIGTERM)
    server.wait_log(r"graceful stop")
    wait_until(lambda: len(re.findall(r"\) stopping: \d+ open connection", server.log())) == 2)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", server.port), timeout=1).close()
    result = slow.join()
    assert not isinstance(result, BaseException), result
    assert result[0] == 200
    assert server.proc.wait(timeout=10) == 0


def assert_stops_at_once(server: ServerProcess, stop: Callable[[], None]) -> None:
    """``stop()`` ends a 2-worker server with a slow request in flight without waiting for it."""
    workers = worker_pids(server)
    slow = Background(server.port, "/slow")
    slow_in_flight(server)
    t0 = time.monotonic()
    stop()
    assert server.proc.wait(timeout=5) == 0
    assert time.monotonic() - t0 < 1.4  # before the slow request could have finished
    assert isinstance(slow.join(), BaseException)  # cut, not answered
    wait_until(lambda: all(exited(pid) for pid in workers), timeout=5)


def test_quit_stops_at_once(servers: StartServer, tmp_path: Path) -> None:
    server = start(servers, tmp_path, workers=2)
    assert_stops_at_once(server, lambda: os.kill(server.pid, signal.SIGQUIT))


def test_second_ctrl_c_during_a_graceful_stop_stops_at_once(
    servers: StartServer, tmp_path: Path
) -> None:
    # As with uvicorn: the first INT drains, a second one does not wait for it.
    server = start(servers, tmp_path, workers=2)

    def twice() -> None:
        os.kill(server.pid, signal.SIGINT)
        server.wait_log("SIGINT: graceful stop")
        os.kill(server.pid, signal.SIGINT)

    assert_stops_at_once(server, twice)
    server.wait_log("SIGINT again: immediate stop")


def test_second_term_during_a_graceful_stop_changes_nothing(
    servers: StartServer, tmp_path: Path
) -> None:
    server = start(servers, tmp_path, workers=1)
    slow = Background(server.port, "/slow")
    slow_in_flight(server)
    os.kill(server.pid, signal.SIGTERM)
    server.wait_log("SIGTERM: graceful stop")
    os.kill(server.pid, signal.SIGTERM)
    result = slow.join()
    assert not isinstance(result, BaseException), result
    assert result[0] == 200
    assert server.proc.wait(timeout=10) == 0


def test_app_that_fails_to_import_stops_the_master(servers: StartServer, tmp_path: Path) -> None:
    conf = write_config(tmp_path / "prefork.toml", workers=2)
    server = servers("import os\nraise RuntimeError('the app is broken')\n", "-c", conf, wait=False)
    t0 = time.monotonic()
    code = server.proc.wait(timeout=10)
    assert code != 0
    assert time.monotonic() - t0 < 5
    server.stop()
    text = server.log()
    assert "Traceback" not in text
    assert re.search(r"cannot boot: .*RuntimeError: the app is broken", text), text
    assert "failed to boot" in text
    assert len(re.findall(r"worker \d+ \(pid \d+, gen \d+\) spawned", text)) <= 2  # no respawns


def test_stuck_worker_is_killed_and_replaced(servers: StartServer, tmp_path: Path) -> None:
    server = start(servers, tmp_path, workers=1, worker_timeout=2)
    (stuck,) = serving_pids(server)
    spin = Background(server.port, "/spin", timeout=10)
    server.wait_log(rf"pid {stuck}, gen 1\) sent no heartbeat for [\d.]+s \(timeout\)", timeout=8)
    wait_until(lambda: exited(stuck) and len(serving_pids(server)) == 1, timeout=8)
    assert isinstance(spin.join(), BaseException)
    server.wait_log(rf"pid {stuck}, gen 1\) died \(signal SIGKILL, sent no heartbeat")
    status, _, body = get(server.port)
    assert status == 200
    assert int(body) != stuck


def test_workers_exit_when_the_master_is_killed(servers: StartServer, tmp_path: Path) -> None:
    server = start(servers, tmp_path, workers=2)
    workers = worker_pids(server)
    os.kill(server.pid, signal.SIGKILL)
    server.proc.wait(timeout=5)
    wait_until(lambda: all(exited(pid) for pid in workers), timeout=6)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", server.port), timeout=1).close()


def test_max_requests_recycles_workers_without_failures(
    servers: StartServer, tmp_path: Path
) -> None:
    server = start(servers, tmp_path, workers=2, max_requests=20, max_requests_jitter=5)
    initial = serving_pids(server)
    sent = 0
    deadline = time.monotonic() + 15
    # A worker asks for its replacement on its next heartbeat tick (<= 1 s), so keep
    # the traffic going until both are replaced.
    while (serving_pids(server) & initial) and sent < 3000 and time.monotonic() < deadline:
        status, _, _ = get(server.port)
        assert status == 200
        sent += 1
        time.sleep(0.005)
    assert not (serving_pids(server) & initial), f"no recycling after {sent} requests"
    server.wait_log("reached max_requests; replacing it")
    assert get(server.port)[0] == 200


def test_usr1_reaches_every_worker(servers: StartServer, tmp_path: Path) -> None:
    server = start(servers, tmp_path, workers=2)
    workers = serving_pids(server)
    os.kill(server.pid, signal.SIGUSR1)
    for pid in workers:
        server.wait_log(rf"\[{pid}\] \[INFO\] prefork\.worker: .*reopening logs")
    assert worker_pids(server) == workers
    assert get(server.port)[0] == 200


def test_pid_file_holds_the_master_pid(servers: StartServer, tmp_path: Path) -> None:
    pidfile = tmp_path / "prefork.pid"
    server = start(servers, tmp_path, "--pid", str(pidfile), workers=1)
    assert pidfile.read_text().strip() == str(server.pid)
    assert server.stop() == 0
    assert not pidfile.exists()


def test_pid_file_removed_by_someone_else_still_exits_0(
    servers: StartServer, tmp_path: Path
) -> None:
    pidfile = tmp_path / "prefork.pid"
    server = start(servers, tmp_path, "--pid", str(pidfile), workers=1)
    pidfile.unlink()
    assert server.stop() == 0
    assert not pidfile.exists()


# -- Redis ---------------------------------------------------------------------


@pytest.fixture
def redis_url(tmp_path: Path) -> Iterator[str]:
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed (Debian package redis-server)")
    port = free_port()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until(lambda: _accepts(port), timeout=10)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def test_redis_client_per_worker(servers: StartServer, tmp_path: Path, redis_url: str) -> None:
    server = start(servers, tmp_path, workers=2, redis_url=redis_url)
    pids: set[int] = set()
    counts: list[int] = []
    # Bursts of 8 at once: one at a time, one worker may win every accept.
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        for _ in range(10):  # bounded: until both workers answered
            for status, _, body in pool.map(lambda _: get(server.port, "/redis"), range(8)):
                assert status == 200
                pid, hits = body.split()
                pids.add(int(pid))
                counts.append(int(hits))
            if len(pids) == 2:
                break
    assert len(pids) == 2  # both workers talked to Redis
    assert sorted(counts) == list(range(1, len(counts) + 1))  # one shared counter


def test_without_redis_url_redis_module_is_none(servers: StartServer, tmp_path: Path) -> None:
    server = start(servers, tmp_path, workers=1)
    assert get(server.port, "/has-redis")[2] == "False"
