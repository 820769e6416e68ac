"""The worker process: post-fork set-up, the uvloop loop, accepting under a cap, draining.

A :class:`Worker` is built by the master before the fork and only stores
values; :meth:`Worker.run` runs in the child and returns its exit code. The
master's own record of the child is ``master.workers.WorkerRecord``.

In the child, in order: reset the inherited signal dispositions and the
master's wakeup fd, close the master's and the siblings' private fds, set the
process title, create a fresh uvloop loop (nothing event-loop-bound crosses
the fork), import the app (a ``"MODULE:ATTR"`` string is imported here, never
in the master, so a reload picks up new code), make the Redis client, start
accepting, and only then report READY to the master.

Accepting, under the two caps (``connection_limit``, ``open_connection_limit``),
is ``engine.accept.Acceptor``'s.

The pipe to the master carries one byte per message (see ``MSG_*``): READY
once, a HEARTBEAT from the event loop every ``heartbeat_interval()`` seconds (a
blocked loop stops them and the master kills the worker after
``worker_timeout``), and RECYCLE once ``max_requests`` (plus jitter) responses
were sent. With ``metrics_bind`` set, each heartbeat is followed by a snapshot
of the worker's counters (prefork.metrics), and a draining worker sends a last
one before it exits. The same timer notices an orphaned worker (the master died: its
parent pid changed) and stops it gracefully, so no orphan keeps the port.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import enum
import gc
import logging
import os
import random
import resource
import signal
import socket
import ssl
from collections.abc import Sequence
from typing import Any

import setproctitle
import uvloop

from prefork import log
from prefork._types import Handler
from prefork.apps import build_app
from prefork.config import Config
from prefork.engine.accept import Acceptor
from prefork.engine.app import AppInterface
from prefork.engine.shared import Shared
from prefork.errors import PreforkError

logger = logging.getLogger(log.WORKER)

# Exit codes of a worker process.
WORKER_EXIT_OK = 0
WORKER_CRASHED = 1  # an unexpected exception escaped Worker.run()
WORKER_BOOT_ERROR = 3  # the app could not be imported: the master must not respawn blindly

# Messages on the worker -> master pipe: one byte each.
MSG_READY = b"R"  # booted: app imported, Redis client made, accepting
MSG_HEARTBEAT = b"H"  # the event loop is alive
MSG_RECYCLE = b"M"  # max_requests reached: replace me, then stop me

# File descriptors a worker needs beyond its connections (listeners, pipe, logs,
# the app's own files) and for connections lingering after their close.
SPARE_FDS = 64
HEARTBEAT_MAX_INTERVAL_S = 1.0  # also the period of the orphan check
BOOT_TIMEOUT_MIN_S = 30.0  # a new worker gets max(this, worker_timeout) to report ready
STOP_MARGIN_S = 2.0  # beyond graceful_timeout before the master kills a draining worker
# Every signal the master handles; a worker resets them first thing after the fork.
MASTER_SIGNALS = (
    signal.SIGHUP,
    signal.SIGTERM,
    signal.SIGINT,
    signal.SIGQUIT,
    signal.SIGTTIN,
    signal.SIGTTOU,
    signal.SIGUSR1,
    signal.SIGCHLD,
)
# Ignored in a worker: HUP, TTIN, TTOU are for the master (a signal to the whole process
# group must not stop or kill the workers); USR1 until its handler is installed.
_IGNORED_SIGNALS = (signal.SIGHUP, signal.SIGTTIN, signal.SIGTTOU, signal.SIGUSR1)


class Stop(enum.Enum):
    """How a process was told to stop."""

    GRACEFUL = "graceful"
    IMMEDIATE = "immediate"


def heartbeat_interval(worker_timeout: float) -> float:
    """Seconds between heartbeats: several per ``worker_timeout``, at most one second."""
    return min(HEARTBEAT_MAX_INTERVAL_S, worker_timeout / 4.0)


def boot_timeout(worker_timeout: float) -> float:
    """Seconds a new worker has to report ready."""
    return max(BOOT_TIMEOUT_MIN_S, worker_timeout)


def describe_status(status: int) -> str:
    """A ``waitpid`` status in words: ``"exit code 3"``, ``"signal SIGKILL"``."""
    if os.WIFSIGNALED(status):
        signum = os.WTERMSIG(status)
        try:
            return f"signal {signal.Signals(signum).name}"
        except ValueError:
            return f"signal {signum}"
    if os.WIFEXITED(status):
        return f"exit code {os.WEXITSTATUS(status)}"
    return f"status {status}"


def app_label(app: Handler | str) -> str:
    """The app as shown in process titles: ``"app:handle"``."""
    if isinstance(app, str):
        return app
    module = getattr(app, "__module__", None) or "?"
    name = getattr(app, "__qualname__", None) or type(app).__name__
    return f"{module}:{name}"


# glibc's malloc gives the top of the heap back to the kernel once more than
# 128 KiB is free there. A compressed response allocates and frees ~270 KiB of
# zlib state, so every one of them paid a brk() shrink and then ~65 page faults
# (with zeroing) to grow it back: 1.3 brk calls per response under S8 (strace).
# Keeping up to this much free at the top costs nothing until it is used.
HEAP_TRIM_THRESHOLD_BYTES = 32 * 1024 * 1024
# Setting the trim threshold also freezes the mmap threshold, which glibc
# otherwise raises as big blocks are freed. Left at 128 KiB, every buffer
# above it (uvloop's 256 KiB TLS read buffer, for one) is an mmap() and a
# munmap() with page faults in between: S5 (TLS keep-alive) fell from 48k to
# 22k req/s. Blocks below this size come from the heap, as glibc's raised
# threshold would have done.
MMAP_THRESHOLD_BYTES = 4 * 1024 * 1024
_M_TRIM_THRESHOLD = -1  # mallopt() parameters, <malloc.h>
_M_MMAP_THRESHOLD = -3


def keep_heap_top() -> bool:
    """Set glibc's trim and mmap thresholds; False where there is no mallopt (not glibc)."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    trim = mallopt(_M_TRIM_THRESHOLD, HEAP_TRIM_THRESHOLD_BYTES)
    mmap = mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)
    return bool(trim and mmap)


def fit_open_files(connections: int) -> None:
    """Raise this process's soft open-files limit to fit ``connections`` (as far as the
    hard limit allows), so that open_connection_limit is not cut short by EMFILE."""
    wanted = 2 * connections + SPARE_FDS  # a closed connection lingers a moment
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft != resource.RLIM_INFINITY and soft < wanted:
            new = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
            if new > soft:
                resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
            if new < wanted:
                logger.warning(
                    "open files limited to %d (hard limit): fewer than open_connection_limit"
                    " = %d needs; raise the limit (ulimit -n) or lower the key",
                    new,
                    connections,
                )
    except (OSError, ValueError) as exc:
        logger.warning("cannot raise the open files limit: %s", exc)


def _make_redis(url: str) -> Any:
    """One ``redis.asyncio`` client for this worker (it connects lazily, on first use)."""
    try:
        import redis.asyncio
    except ImportError:
        raise PreforkError(
            "redis_url is set but the redis package is missing: pip install 'prefork[redis]'"
        ) from None
    try:
        return redis.asyncio.Redis.from_url(url)
    except ValueError as exc:
        raise PreforkError(f"redis_url: {exc}") from None


class Worker:
    """One worker process's runtime; built in the master, run in the child.

    The master's record of the child (pid, pipe, state) is
    ``master.workers.WorkerRecord``: the two are written in one process each.
    """

    def __init__(
        self,
        cfg: Config,
        app: Handler | str,
        listeners: Sequence[socket.socket],
        ssl_context: ssl.SSLContext | None,
        number: int,
        generation: int,
        pipe_fd: int,
        close_fds: Sequence[int],
    ) -> None:
        self.cfg = cfg
        self.app = app
        self.listeners = tuple(listeners)
        self.ssl_context = ssl_context
        self.number = number
        self.generation = generation
        self.pipe_fd = pipe_fd
        self.close_fds = tuple(close_fds)
        self.master_pid = os.getpid()
        # Set in the child only (the master keeps its own record: master.workers).
        self._draining = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._shared: Shared | None = None
        self._redis: Any = None
        self._stop: asyncio.Future[Stop] | None = None
        self._acceptor: Acceptor | None = None
        self._recycle_at = 0
        self._recycle_sent = False

    # -- in the child -------------------------------------------------------

    def run(self) -> int:
        """The child's whole life; returns its exit code (the master calls ``os._exit``)."""
        try:
            self._after_fork()
            loop = uvloop.new_event_loop()
            asyncio.set_event_loop(loop)
            self._loop = loop
            try:
                return loop.run_until_complete(self._main())
            finally:
                loop.close()
        except Exception:
            logger.exception("worker %d crashed", self.number)
            return WORKER_CRASHED

    def _after_fork(self) -> None:
        for signum in MASTER_SIGNALS:
            signal.signal(signum, signal.SIG_DFL)
        for signum in _IGNORED_SIGNALS:
            signal.signal(signum, signal.SIG_IGN)
        with contextlib.suppress(ValueError):
            signal.set_wakeup_fd(-1)
        # Blocked by the master across the fork; what arrived meanwhile is
        # delivered now, to the worker's dispositions.
        signal.pthread_sigmask(signal.SIG_UNBLOCK, MASTER_SIGNALS)
        for fd in self.close_fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        os.set_blocking(self.pipe_fd, False)
        setproctitle.setproctitle(
            f"prefork: worker {self.number} gen {self.generation} [{app_label(self.app)}]"
        )
        log.setup(self.cfg.log_level)
        keep_heap_top()
        fit_open_files(self.cfg.open_connection_limit)
        limit = self.cfg.max_requests
        if limit:
            # random reseeds in every forked child, so workers draw different jitters.
            limit += random.randint(0, self.cfg.max_requests_jitter)
        self._recycle_at = limit

    async def _main(self) -> int:
        loop = asyncio.get_running_loop()
        app = self._boot()
        if app is None:
            return WORKER_BOOT_ERROR
        state = Shared(self.cfg, app, ssl_context=self.ssl_context, redis_module=self._redis)
        state.start()
        self._shared = state
        # Before READY, so that a reload waits for it (ASGI lifespan startup).
        try:
            await app.startup()
        except Exception as exc:
            message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            logger.error(
                "worker %d (pid %d) cannot boot: app startup failed: %s",
                self.number,
                os.getpid(),
                message,
            )
            return WORKER_BOOT_ERROR
        # The app's modules and the worker's set-up live as long as the worker:
        # out of the GC's way, so a full collection walks only what requests made.
        gc.freeze()
        self._stop = loop.create_future()
        loop.add_signal_handler(signal.SIGTERM, self._request_stop, Stop.GRACEFUL)
        loop.add_signal_handler(signal.SIGINT, self._request_stop, Stop.GRACEFUL)
        loop.add_signal_handler(signal.SIGQUIT, self._request_stop, Stop.IMMEDIATE)
        loop.add_signal_handler(signal.SIGUSR1, self._reopen_logs)
        for sock in self.listeners:
            sock.setblocking(False)
        acceptor = self._acceptor = Acceptor(self.cfg, self.listeners, loop, state)
        acceptor.start()
        self._send(MSG_READY)
        logger.info("worker %d (pid %d, gen %d) ready", self.number, os.getpid(), self.generation)
        self._tick()
        how = await self._stop
        if how is Stop.IMMEDIATE:
            return WORKER_EXIT_OK
        await self._drain(state)
        try:
            await app.shutdown()
        except Exception:
            logger.exception("worker %d (pid %d): app shutdown failed", self.number, os.getpid())
        self._send(self._metrics_snapshot())  # the final counts, for the master's totals
        return WORKER_EXIT_OK

    def _boot(self) -> AppInterface[Any] | None:
        """Import the app and make the Redis client; None (logged in one line) if either fails."""
        try:
            app = build_app(self.app, self.cfg)
            if self.cfg.redis_url is not None:
                self._redis = _make_redis(self.cfg.redis_url)
        except Exception as exc:  # the app's own import may raise anything
            message = str(exc).splitlines()[0] if str(exc) else ""
            if not isinstance(exc, PreforkError):  # escaped load_app: name the app
                message = f"app {self.app!r}: {type(exc).__name__}: {message}"
            logger.error("worker %d (pid %d) cannot boot: %s", self.number, os.getpid(), message)
            return None
        return app

    async def _drain(self, state: Shared) -> None:
        """Graceful stop: no new connections, in-flight ones finish, then close Redis."""
        self._draining = True
        acceptor = self._acceptor
        if acceptor is not None:
            acceptor.stop()
        tasks = acceptor.tasks if acceptor is not None else set()
        # This process accepts no more: its copies of the listen sockets go, so once
        # the master (stopping) and every worker closed theirs, clients are refused.
        for sock in self.listeners:
            sock.close()
        logger.info(
            "worker %d (pid %d) stopping: %d open connection(s)",
            self.number,
            os.getpid(),
            len(tasks),
        )
        state.begin_drain()
        # Every accepted connection has a task, also one whose TLS handshake is still
        # running and so is not among state's connections yet: wait for the tasks
        # first, then let wait_closed abort what is left at graceful_timeout.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.cfg.graceful_timeout
        if tasks:
            await asyncio.wait(set(tasks), timeout=self.cfg.graceful_timeout)
        await state.wait_closed(max(0.0, deadline - loop.time()))
        if tasks:
            # wait_closed aborted the stragglers; give their tasks one turn to finish.
            await asyncio.wait(set(tasks), timeout=1.0)
        if self._redis is not None:
            with contextlib.suppress(Exception):
                await self._redis.aclose()

    def _request_stop(self, how: Stop) -> None:
        if self._stop is not None and not self._stop.done():
            self._stop.set_result(how)
        elif how is Stop.IMMEDIATE:
            # QUIT during a graceful drain: leave at once.
            os._exit(WORKER_EXIT_OK)

    def _reopen_logs(self) -> None:
        log.reopen()
        logger.info("worker %d (pid %d): reopening logs", self.number, os.getpid())

    def _send(self, msg: bytes) -> None:
        # Non-blocking: a full pipe means the master is behind; a lost heartbeat is harmless.
        with contextlib.suppress(BlockingIOError, BrokenPipeError, OSError):
            os.write(self.pipe_fd, msg)

    def _metrics_snapshot(self) -> bytes:
        """This worker's counters for the master; empty when metrics are off."""
        state = self._shared
        acceptor = self._acceptor
        if state is None or acceptor is None or state.access.metrics is None:
            return b""
        return state.access.metrics.snapshot(acceptor.active, state.idle_connections())

    def _tick(self) -> None:
        """Heartbeat, orphan check and max_requests check, driven by the event loop."""
        assert self._loop is not None
        self._send(MSG_HEARTBEAT + self._metrics_snapshot())
        if os.getppid() != self.master_pid and not self._draining:
            logger.warning("worker %d (pid %d): master is gone; stopping", self.number, os.getpid())
            self._request_stop(Stop.GRACEFUL)
        served = self._shared.requests_served if self._shared is not None else 0
        if self._recycle_at and not self._recycle_sent and served >= self._recycle_at:
            self._recycle_sent = True
            logger.info(
                "worker %d (pid %d) served %d requests (max_requests); asking for a replacement",
                self.number,
                os.getpid(),
                served,
            )
            self._send(MSG_RECYCLE)
        self._loop.call_later(heartbeat_interval(self.cfg.worker_timeout), self._tick)
