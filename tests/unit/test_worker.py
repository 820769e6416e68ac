"""prefork.worker: its small functions, its accept loop, and the master's watchdog verdict on it.

The accept loop runs against a fake event loop and a fake listener whose
``_accept()`` hands out made-up fd numbers; the class the worker wraps an
accepted fd in is replaced too, so no socket is made here (a real listening
socket's accept queue is measured in tests/e2e/test_accept_queue.py, and real
accepts happen in every e2e test). The watchdog verdict
(``master.workers.WorkerRecord.overdue``) is checked on records of imaginary workers.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import signal
import socket
import sys
from collections.abc import Callable
from typing import Any

import pytest

from prefork import worker as worker_module
from prefork.config import Config
from prefork.engine import accept as accept_module
from prefork.engine.accept import (
    ACCEPT_BACKOFF_S,
    ACCEPT_BATCH_MAX,
    ACCEPT_BATCH_MIN,
    PRESSURE_CHECK_S,
    Acceptor,
)
from prefork.master.workers import WorkerState
from prefork.worker import (
    BOOT_TIMEOUT_MIN_S,
    MSG_HEARTBEAT,
    MSG_READY,
    MSG_RECYCLE,
    WORKER_BOOT_ERROR,
    WORKER_CRASHED,
    WORKER_EXIT_OK,
    app_label,
    boot_timeout,
    describe_status,
    heartbeat_interval,
)
from tests.unit.conftest import record


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


def test_keep_heap_top_sets_glibc_trim_threshold() -> None:
    import platform

    if platform.libc_ver()[0] != "glibc":
        pytest.skip("mallopt is glibc's")
    assert worker_module.keep_heap_top() is True


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

    def time(self) -> float:
        return 0.0

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
        # An fd number, as accept() gives; the worker wraps it in FakeAccepted here.
        return 100 + self.accepts, ("127.0.0.1", 1234)


class FakeAccepted:
    """Stands in for the socket class the worker wraps an accepted fd in: no socket is made."""

    def __init__(self, family: int, type: int, proto: int, fileno: int) -> None:
        self.fd = fileno

    def close(self) -> None:
        pass


async def fake_serve(sock: Any, state: Any, peer: Any) -> None:
    sock.close()  # the test only counts connections


@pytest.fixture(autouse=True)
def no_real_connections(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(accept_module, "serve_connection", fake_serve)
    monkeypatch.setattr(accept_module, "_ACCEPTED", {socket.AF_INET: FakeAccepted})


class FakeShared:
    """The worker's view of its connections: how many wait for their client."""

    def __init__(self) -> None:
        self.waiting = 0
        self.reclaimed: list[int] = []

    def waiting_connections(self) -> int:
        return self.waiting

    def reclaim(self, wanted: int) -> int:
        self.reclaimed.append(wanted)
        return 0


def make_acceptor(
    listener: FakeListener, limit: int, workers: int = 1, open_limit: int | None = None
) -> tuple[FakeShared, FakeLoop]:
    """An accepting worker's Acceptor on a fake loop; returns its view of the connections."""
    cfg = Config.build(
        {
            "port": 0,
            "connection_limit": limit,
            "open_connection_limit": open_limit or max(limit, 1024),
            "workers": workers,
        }
    )
    loop = FakeLoop()
    shared = FakeShared()
    acceptor = Acceptor(cfg, [listener], loop, shared)  # type: ignore[list-item,arg-type]
    acceptor.start()
    return shared, loop


def readable(loop: FakeLoop) -> None:
    """The listen fd became readable: run the callback the worker registered for it."""
    callback, args = loop.readers[7]
    callback(*args)


def test_accept_stops_at_connection_limit_and_resumes_when_a_slot_frees() -> None:
    listener = FakeListener(pending=5)
    _shared, loop = make_acceptor(listener, limit=2)
    assert 7 in loop.readers
    readable(loop)
    assert listener.accepts == 2  # a slot is taken before each accept
    assert 7 not in loop.readers  # the rest wait in the listen queue for a sibling
    loop.tasks[0].finish()
    assert 7 in loop.readers
    readable(loop)
    assert listener.accepts == 3
    assert 7 not in loop.readers


def test_connections_waiting_for_their_client_do_not_count_towards_connection_limit() -> None:
    listener = FakeListener(pending=10, queued=10)
    shared, loop = make_acceptor(listener, limit=2, open_limit=4)
    readable(loop)
    assert listener.accepts == 2
    assert 7 not in loop.readers  # both may be serving a request: at the cap
    (delay, check), *_ = loop.timers
    assert delay == PRESSURE_CHECK_S
    shared.waiting = 2  # both answered and now idle: their slots are free again
    loop.timers.clear()
    check()
    assert 7 in loop.readers
    readable(loop)
    assert listener.accepts == 4  # open_connection_limit: idle ones count here
    assert 7 not in loop.readers
    shared.waiting = 4
    ((_, check),) = loop.timers
    check()
    assert shared.reclaimed == [10]  # clients are queued: close waiting connections for them
    assert 7 not in loop.readers


class ListHandler(logging.Handler):
    """Keeps the records (prefork's log setup may stop propagation to caplog's handler)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_accept_out_of_resources_is_logged_once_per_episode() -> None:
    listener = FakeListener(pending=1, error=errno.EMFILE)
    _shared, loop = make_acceptor(listener, limit=10)
    handler = ListHandler()
    logger = logging.getLogger("prefork.worker")
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.INFO)  # whatever an earlier test set the prefork logger to
    try:
        readable(loop)
        for _ in range(5):
            _, retry = loop.timers.pop()
            retry()
            readable(loop)
        listener.error = None
        _, retry = loop.timers.pop()
        retry()
        readable(loop)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    assert listener.accepts == 1
    errors = [r.getMessage() for r in handler.records if r.levelno == logging.ERROR]
    assert len(errors) == 1, errors
    assert "accept() out of resources" in errors[0]
    ends = [r.getMessage() for r in handler.records if "works again" in r.getMessage()]
    assert len(ends) == 1, ends
    assert "(6 failed attempt(s))" in ends[0]


def test_accept_emfile_backs_off_instead_of_spinning() -> None:
    listener = FakeListener(pending=1, error=errno.EMFILE)
    _shared, loop = make_acceptor(listener, limit=10)
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
    _shared, loop = make_acceptor(listener, limit=10)
    readable(loop)
    assert (listener.accepts, listener.attempts) == (2, 2)  # no accept() to find EAGAIN
    assert 7 in loop.readers  # the other 3: on the next (level-triggered) wake-up


def test_accept_tries_once_when_the_queue_looks_empty() -> None:
    # A sibling took the connection, or the count is off: one accept(), never none
    # (a readable listen fd left alone would wake the loop again at once).
    listener = FakeListener(pending=1, queued=0)
    _shared, loop = make_acceptor(listener, limit=10)
    readable(loop)
    assert (listener.accepts, listener.attempts) == (1, 1)


def test_accept_without_a_queue_length_accepts_until_eagain() -> None:
    listener = FakeListener(pending=3)
    _shared, loop = make_acceptor(listener, limit=10)
    readable(loop)
    assert (listener.accepts, listener.attempts) == (3, 4)


def test_accept_skips_an_aborted_connection() -> None:
    listener = FakeListener(pending=0, error=errno.ECONNABORTED)
    _shared, loop = make_acceptor(listener, limit=3)
    readable(loop)
    assert 7 in loop.readers
    assert loop.timers == []


# -- the watchdog's verdict, on records of imaginary workers -------------------


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


@pytest.mark.parametrize(
    ("queued", "workers", "expected"),
    [
        (10, 2, 10),  # what is queued
        (20, 2, ACCEPT_BATCH_MIN),  # a share below the minimum: the minimum
        (100, 2, 50),  # a long queue: this worker's share
        (100, 1, 100),  # alone: all of it
        (1000, 1, ACCEPT_BATCH_MAX),  # a reconnect storm: at most the maximum a turn
    ],
)
def test_accept_takes_its_share_of_a_long_queue(queued: int, workers: int, expected: int) -> None:
    listener = FakeListener(pending=queued, queued=queued)
    _shared, loop = make_acceptor(listener, limit=2048, workers=workers)
    readable(loop)
    assert (listener.accepts, listener.attempts) == (expected, expected)


def test_accept_takes_the_minimum_when_the_queue_length_is_unknown() -> None:
    listener = FakeListener(pending=100, queued=None)
    _shared, loop = make_acceptor(listener, limit=2048, workers=1)
    readable(loop)
    assert listener.accepts == ACCEPT_BATCH_MIN
