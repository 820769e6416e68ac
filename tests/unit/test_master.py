"""Master and worker logic that needs no process and no socket."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from prefork import log
from prefork import worker as worker_module
from prefork.config import Config
from prefork.master import (
    MASTER_BOOT_FAILED,
    RESPAWN_BACKOFF_MIN_S,
    Master,
    _Reload,
)
from prefork.worker import (
    ACCEPT_BACKOFF_S,
    BOOT_TIMEOUT_MIN_S,
    MSG_HEARTBEAT,
    MSG_READY,
    MSG_RECYCLE,
    WORKER_BOOT_ERROR,
    WORKER_CRASHED,
    WORKER_EXIT_OK,
    Worker,
    WorkerState,
    accept_queue_length,
    app_label,
    boot_timeout,
    describe_status,
    heartbeat_interval,
)


def handle(method: str, query: str, args: Any, headers: Any, body: bytes, ctx: Any) -> Any:
    return "ok", 200, None


# -- small functions -----------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (0, "exit code 0"),
        (3 << 8, "exit code 3"),
        (signal.SIGKILL, "signal SIGKILL"),
        (signal.SIGTERM, "signal SIGTERM"),
    ],
    ids=["exit-0", "exit-3", "sigkill", "sigterm"],
)
def test_describe_status(status: int, expected: str) -> None:
    assert describe_status(status) == expected


def test_timeouts() -> None:
    assert boot_timeout(2) == BOOT_TIMEOUT_MIN_S
    assert boot_timeout(120) == 120
    assert heartbeat_interval(30) == 1.0
    assert heartbeat_interval(2) == 0.5


def test_constants_are_distinct() -> None:
    assert len({MSG_READY, MSG_HEARTBEAT, MSG_RECYCLE}) == 3
    assert all(len(msg) == 1 for msg in (MSG_READY, MSG_HEARTBEAT, MSG_RECYCLE))
    assert len({WORKER_EXIT_OK, WORKER_CRASHED, WORKER_BOOT_ERROR}) == 3
    assert WORKER_BOOT_ERROR == 3


def test_app_label() -> None:
    assert app_label("app:handle") == "app:handle"
    assert app_label(handle) == f"{__name__}:handle"


# -- the master's decisions, before any fork -----------------------------------


@pytest.fixture
def master_log() -> Iterator[list[str]]:
    """Messages logged on prefork.master (which does not propagate once log.setup ran)."""
    messages: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            messages.append(record.getMessage())

    logger = logging.getLogger(log.MASTER)
    collector = Collect(level=logging.DEBUG)
    old_level = logger.level
    logger.addHandler(collector)
    logger.setLevel(logging.DEBUG)
    yield messages
    logger.removeHandler(collector)
    logger.setLevel(old_level)


def test_master_init_only_stores(tmp_path: Path) -> None:
    cfg = Config.build({"port": 0, "workers": 3})
    master = Master(cfg, "app:handle", pidfile=str(tmp_path / "pid"))
    assert master.listeners == []
    assert master.port == 0
    assert not (tmp_path / "pid").exists()


def test_ttin_and_ttou_never_below_one(master_log: list[str]) -> None:
    master = Master(Config.build({"port": 0, "workers": 2}), handle)
    master.handle_ttin()
    assert master._target == 3
    for _ in range(5):
        master.handle_ttou()
    assert master._target == 1
    assert "SIGTTOU: already at one worker" in master_log


def test_reload_rereads_the_file_and_keeps_the_overrides(tmp_path: Path) -> None:
    conf = tmp_path / "prefork.toml"
    conf.write_text("workers = 2\ngraceful_timeout = 3\nport = 9999\n")
    overrides = {"port": 0, "workers": 5}
    master = Master(
        Config.build({"port": 0}), "app:handle", config_file=str(conf), overrides=overrides
    )
    conf.write_text("workers = 2\ngraceful_timeout = 7\n")
    cfg = master._reread_config()
    assert cfg.graceful_timeout == 7  # from the file, re-read
    assert cfg.workers == 5  # the command line still wins
    assert cfg.port == 0


def test_reload_without_a_file_keeps_the_config() -> None:
    cfg = Config.build({"port": 0})
    assert Master(cfg, "app:handle")._reread_config() is cfg


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        ("workers = [", "invalid TOML"),
        ("workers = 0\n", "workers: must be >= 1"),
        ("no_such_key = 1\n", "no_such_key: unknown config key"),
        ('[ssl.default]\ncert = "/nonexistent/c.pem"\nkey = "/nonexistent/k.pem"\n', "c.pem"),
    ],
    ids=["toml", "value", "key", "tls-file"],
)
def test_broken_reload_keeps_the_generation(
    tmp_path: Path, master_log: list[str], content: str, reason: str
) -> None:
    conf = tmp_path / "prefork.toml"
    conf.write_text(content)
    master = Master(Config.build({"port": 0}), "app:handle", config_file=str(conf))
    master._generation = 1
    master.handle_hup()  # must not fork: it fails before
    assert master._reload is None
    assert master._generation == 1
    failed = [m for m in master_log if m.startswith("reload failed")]
    assert len(failed) == 1
    assert reason in failed[0]
    assert "generation 1 keeps serving" in failed[0]


# -- the worker's accept loop, with a fake loop --------------------------------


class FakeTask:
    def __init__(self) -> None:
        self.callbacks: list[Callable[[FakeTask], None]] = []

    def add_done_callback(self, cb: Callable[[FakeTask], None]) -> None:
        self.callbacks.append(cb)

    def cancelled(self) -> bool:
        return False

    def exception(self) -> BaseException | None:
        return None

    def finish(self) -> None:
        for cb in self.callbacks:
            cb(self)


class FakeLoop:
    def __init__(self) -> None:
        self.readers: dict[int, Any] = {}
        self.timers: list[tuple[float, Callable[[], None]]] = []
        self.tasks: list[FakeTask] = []

    def add_reader(self, fd: int, cb: Callable[..., None], *args: Any) -> None:
        self.readers[fd] = (cb, args)

    def remove_reader(self, fd: int) -> bool:
        return self.readers.pop(fd, None) is not None

    def call_later(self, delay: float, cb: Callable[[], None]) -> Any:
        self.timers.append((delay, cb))
        return object()

    def create_task(self, coro: Any) -> FakeTask:
        with contextlib.suppress(StopIteration):  # fake_serve: closes the socket at once
            coro.send(None)
        task = FakeTask()
        self.tasks.append(task)
        return task


class FakeListener:
    family = socket.AF_INET

    def __init__(self, pending: int, error: int | None = None, queued: int | None = None) -> None:
        self.pending = pending
        self.error = error
        self.queued = queued  # what TCP_INFO reports as the accept queue; None: unsupported
        self.accepts = 0
        self.attempts = 0

    def fileno(self) -> int:
        return 7

    def getsockopt(self, level: int, option: int, size: int) -> bytes:
        if self.queued is None:
            raise OSError(errno.ENOPROTOOPT, "not TCP")
        info = bytearray(size)
        info[0] = 10  # TCP_LISTEN
        info[24:28] = self.queued.to_bytes(4, sys.byteorder)
        return bytes(info)

    def _accept(self) -> tuple[int, tuple[str, int]]:
        self.attempts += 1
        if self.error is not None:
            raise OSError(self.error, os.strerror(self.error))
        if not self.pending:
            raise BlockingIOError
        self.pending -= 1
        self.accepts += 1
        # A real fd (one end of a socketpair), as accept() gives; the worker wraps it.
        ours, theirs = socket.socketpair()
        theirs.close()
        return ours.detach(), ("127.0.0.1", 1234)


async def fake_serve(sock: Any, state: Any, peer: Any) -> None:
    sock.close()  # the test only counts connections


@pytest.fixture(autouse=True)
def no_real_connections(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(worker_module, "serve_connection", fake_serve)


def make_worker(listener: FakeListener, limit: int) -> tuple[Worker, FakeLoop]:
    cfg = Config.build({"port": 0, "connection_limit": limit})
    worker = Worker(
        cfg=cfg,
        app="app:handle",
        listeners=[listener],  # type: ignore[list-item]
        ssl_context=None,
        number=1,
        generation=1,
        pipe_fd=-1,
        close_fds=[],
    )
    loop = FakeLoop()
    worker._loop = loop  # type: ignore[assignment]
    worker._phase = WorkerState.SERVING
    worker._state = object()  # type: ignore[assignment]
    worker._resume_accepting()
    return worker, loop


def readable(loop: FakeLoop) -> None:
    """The listen fd became readable: run the callback the worker registered for it."""
    callback, args = loop.readers[7]
    callback(*args)


def test_accept_stops_at_connection_limit_and_resumes_when_a_slot_frees() -> None:
    listener = FakeListener(pending=5)
    _worker, loop = make_worker(listener, limit=2)
    assert 7 in loop.readers
    readable(loop)
    assert listener.accepts == 2  # a slot is taken before each accept
    assert 7 not in loop.readers  # the rest wait in the listen queue for a sibling
    loop.tasks[0].finish()
    assert 7 in loop.readers
    readable(loop)
    assert listener.accepts == 3
    assert 7 not in loop.readers


def test_accept_emfile_backs_off_instead_of_spinning() -> None:
    listener = FakeListener(pending=1, error=errno.EMFILE)
    _worker, loop = make_worker(listener, limit=10)
    readable(loop)
    assert 7 not in loop.readers
    assert [delay for delay, _ in loop.timers] == [ACCEPT_BACKOFF_S]
    _, retry = loop.timers[0]
    listener.error = None
    retry()
    assert 7 in loop.readers
    readable(loop)
    assert listener.accepts == 1


def test_accept_takes_what_the_queue_holds_without_a_failing_accept() -> None:
    listener = FakeListener(pending=5, queued=2)
    _worker, loop = make_worker(listener, limit=10)
    readable(loop)
    assert (listener.accepts, listener.attempts) == (2, 2)  # no accept() to find EAGAIN
    assert 7 in loop.readers  # the other 3: on the next (level-triggered) wake-up


def test_accept_tries_once_when_the_queue_looks_empty() -> None:
    # A sibling took the connection, or the count is off: one accept(), never none
    # (a readable listen fd left alone would wake the loop again at once).
    listener = FakeListener(pending=1, queued=0)
    _worker, loop = make_worker(listener, limit=10)
    readable(loop)
    assert (listener.accepts, listener.attempts) == (1, 1)


def test_accept_without_a_queue_length_accepts_until_eagain() -> None:
    listener = FakeListener(pending=3)
    _worker, loop = make_worker(listener, limit=10)
    readable(loop)
    assert (listener.accepts, listener.attempts) == (3, 4)


def test_accept_queue_length_of_a_real_listening_socket() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        assert accept_queue_length(listener) == 0
        clients = [socket.create_connection(listener.getsockname()) for _ in range(3)]
        try:
            deadline = time.monotonic() + 5
            while accept_queue_length(listener) != 3 and time.monotonic() < deadline:
                time.sleep(0.01)  # the handshakes complete in the kernel
            assert accept_queue_length(listener) == 3
            accepted, _ = listener.accept()
            accepted.close()
            assert accept_queue_length(listener) == 2
            assert accept_queue_length(clients[0]) is None  # not a listening socket
        finally:
            for client in clients:
                client.close()


def test_accept_skips_an_aborted_connection() -> None:
    listener = FakeListener(pending=0, error=errno.ECONNABORTED)
    _worker, loop = make_worker(listener, limit=3)
    readable(loop)
    assert 7 in loop.readers
    assert loop.timers == []


# -- supervision decisions, on records of imaginary workers --------------------


def record(number: int, state: WorkerState = WorkerState.BOOTING, **cfg: Any) -> Worker:
    worker = Worker(Config.build({"port": 0, **cfg}), "app:handle", [], None, number, 1, -1, [])
    worker.pid = 10_000 + number  # never signalled: the tests replace Master._kill
    worker.state = state
    worker.ever_ready = state is not WorkerState.BOOTING
    return worker


@pytest.fixture
def master(monkeypatch: pytest.MonkeyPatch) -> Iterator[Master]:
    master = Master(Config.build({"port": 0, "workers": 2}), "app:handle")
    master._generation = master._last_generation = 1
    master.signals_sent = []  # type: ignore[attr-defined]

    def fake_kill(worker: Worker, signum: int) -> None:
        master.signals_sent.append((worker.number, signum))  # type: ignore[attr-defined]

    monkeypatch.setattr(master, "_kill", fake_kill)
    root = logging.getLogger(log.ROOT)
    level = root.level
    yield master
    root.setLevel(level)  # a reload sets the level of every prefork logger


EXIT_3 = 3 << 8


def test_boot_failure_before_anything_served_stops_the_master(
    master: Master, master_log: list[str]
) -> None:
    booting = record(2)
    master._workers[booting.pid] = booting
    master._on_exit(record(1), EXIT_3)
    assert master._exit_code == MASTER_BOOT_FAILED
    assert master._stopping is not None
    assert master.signals_sent == [(2, signal.SIGKILL)]  # type: ignore[attr-defined]
    message = "worker 1 (pid 10001, gen 1) failed to boot (exit code 3); stopping"
    assert message in master_log
    assert master.error == message  # for server.serve() to return as its error


def test_boot_failure_while_others_serve_retries_after_a_backoff(
    master: Master, master_log: list[str]
) -> None:
    serving = record(2, WorkerState.SERVING)
    master._workers[serving.pid] = serving
    master._ever_ready = True
    master._on_exit(record(1), EXIT_3)
    assert master._stopping is None
    assert master._respawn_at > 0
    assert master._respawn_delay == 2 * RESPAWN_BACKOFF_MIN_S
    assert any("retrying in 1s" in m for m in master_log)


def test_crash_of_a_serving_worker_is_replaced_not_fatal(
    master: Master, master_log: list[str]
) -> None:
    master._ever_ready = True
    master._on_exit(record(1, WorkerState.SERVING), signal.SIGSEGV)
    assert master._stopping is None
    assert master._respawn_at == 0
    assert "worker 1 (pid 10001, gen 1) died (signal SIGSEGV)" in master_log


def test_replacement_ready_stops_the_old_worker(master: Master) -> None:
    old, new = record(1, WorkerState.SERVING), record(1)
    new.pid += 100
    new.replaces, old.replaced_by = old, new
    master._workers.update({old.pid: old, new.pid: new})
    master._on_ready(new)
    assert new.state is WorkerState.SERVING
    assert old.state is WorkerState.DRAINING
    assert master.signals_sent == [(1, signal.SIGTERM)]  # type: ignore[attr-defined]


def test_failed_recycling_keeps_the_old_worker(master: Master) -> None:
    old, new = record(1, WorkerState.SERVING), record(1)
    old.recycle = True
    new.pid += 100
    new.replaces, old.replaced_by = old, new
    master._workers[old.pid] = old
    master._ever_ready = True
    master._on_exit(new, EXIT_3)
    assert master._stopping is None
    assert old.state is WorkerState.SERVING
    assert old.replaced_by is None
    assert not old.wants_replacement(time.monotonic())  # not before the back-off
    assert old.wants_replacement(old.recycle_retry_at)


def test_reload_whose_worker_fails_to_boot_is_abandoned(master: Master) -> None:
    serving = record(1, WorkerState.SERVING)
    master._workers[serving.pid] = serving
    master._ever_ready = True
    failed, booting = record(1), record(2)
    failed.generation = booting.generation = 2
    booting.pid += 100
    master._workers[booting.pid] = booting
    master._reload = _Reload(2, master.cfg, None, time.monotonic() + 30, {failed.pid, booting.pid})
    master._on_exit(failed, EXIT_3)
    assert master._reload is None
    assert master._generation == 1
    assert master.signals_sent == [(2, signal.SIGKILL)]  # type: ignore[attr-defined]
    assert serving.state is WorkerState.SERVING


@pytest.mark.parametrize(
    ("state", "field", "age", "verdict"),
    [
        (WorkerState.BOOTING, "started", 29.0, None),
        (WorkerState.BOOTING, "started", 31.0, "sent no READY within 30s"),
        (WorkerState.SERVING, "last_seen", 1.5, None),
        (WorkerState.SERVING, "last_seen", 2.5, "sent no heartbeat for 2.5s (timeout)"),
        (WorkerState.DRAINING, "stopping_since", 3.0, None),
        (WorkerState.DRAINING, "stopping_since", 9.0, "is still draining after 9s"),
    ],
    ids=["booting", "boot-timeout", "alive", "stuck", "draining", "drain-overdue"],
)
def test_watchdog_verdict(state: WorkerState, field: str, age: float, verdict: str | None) -> None:
    worker = record(1, state, worker_timeout=2, graceful_timeout=5)
    now = 1000.0
    worker.started = worker.last_seen = worker.stopping_since = now
    setattr(worker, field, now - age)
    result = worker.overdue(now)
    if verdict is None:
        assert result is None
    else:
        assert result is not None
        assert result.startswith(verdict)


def test_reload_not_ready_in_time_is_abandoned(master: Master, master_log: list[str]) -> None:
    booting = record(1)
    booting.generation = 2
    master._workers[booting.pid] = booting
    master._reload = _Reload(2, master.cfg, None, time.monotonic() - 1, {booting.pid})
    master._check_timeouts()
    assert master._reload is None
    assert master.signals_sent == [(1, signal.SIGKILL)]  # type: ignore[attr-defined]
    assert any("generation 2 not ready within 30s" in m for m in master_log)


def test_hup_during_a_reload_is_queued(master: Master, master_log: list[str]) -> None:
    master._reload = _Reload(2, master.cfg, None, time.monotonic() + 30, {12345})
    master.handle_hup()
    assert master._reload_again
    assert "SIGHUP: queued until generation 2 is ready" in master_log


def test_keep_heap_top_sets_glibc_trim_threshold() -> None:
    import platform

    if platform.libc_ver()[0] != "glibc":
        pytest.skip("mallopt is glibc's")
    assert worker_module.keep_heap_top() is True
