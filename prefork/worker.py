"""The worker process: post-fork set-up, the uvloop loop, accepting under a cap, draining.

A :class:`Worker` is built by the master before the fork and only stores
values; :meth:`Worker.run` runs in the child and returns its exit code.

In the child, in order: reset the inherited signal dispositions and the
master's wakeup fd, close the master's and the siblings' private fds, set the
process title, create a fresh uvloop loop (nothing event-loop-bound crosses
the fork), import the app (a ``"MODULE:ATTR"`` string is imported here, never
in the master, so a reload picks up new code), make the Redis client, start
accepting, and only then report READY to the master.

Accepting: the listen sockets are shared by every worker. A worker takes a
slot *before* it accepts, and at ``connection_limit`` it removes the listen fds
from its loop, so excess connections wait in the kernel's listen queue for any
worker with a free slot: nothing is refused. Out-of-resource accept errors
(EMFILE, ENFILE, ENOBUFS, ENOMEM) pause accepting for ``ACCEPT_BACKOFF_S``
instead of spinning on a readable fd.

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
import errno
import gc
import logging
import os
import random
import signal
import socket
import ssl
import sys
from collections.abc import Sequence
from typing import Any

import setproctitle
import uvloop

from prefork import log
from prefork._types import Handler
from prefork.apps import build_app
from prefork.config import Config
from prefork.engine.app import AppInterface
from prefork.engine.serve import serve_connection
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

ACCEPT_BACKOFF_S = 0.1  # pause after EMFILE/ENFILE/ENOBUFS/ENOMEM from accept()
# Accepts per wake-up of a listen fd, bounded by the free slots. Usually
# ACCEPT_BATCH_MIN, so the siblings (woken by the same connections) get some.
# When the queue holds more, as in a reconnect storm (1,000 keep-alive clients
# reaching requests_per_connection together), a worker takes its share,
# ceil(queued / workers), up to ACCEPT_BATCH_MAX: at 16 a wake-up, 1,000
# connections waited ~60 loop turns, ~100 ms at that load, before their first
# read; 256 accepts cost ~4 ms, about one such turn.
ACCEPT_BATCH_MIN = 16
ACCEPT_BATCH_MAX = 256
HEARTBEAT_MAX_INTERVAL_S = 1.0  # also the period of the orphan check
BOOT_TIMEOUT_MIN_S = 30.0  # a new worker gets max(this, worker_timeout) to report ready
STOP_MARGIN_S = 2.0  # beyond graceful_timeout before the master kills a draining worker
_RESOURCE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
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


class _AcceptedV4(socket.socket):
    """An accepted IPv4 socket whose family and type are constants.

    ``socket.socket.accept`` and uvloop's ``connect_accepted_socket`` read
    ``family`` and ``type`` through properties that turn ints into enums each
    time (three conversions per connection); here they are class attributes.
    """

    __slots__ = ()
    family = socket.AF_INET
    type = socket.SOCK_STREAM


class _AcceptedV6(socket.socket):
    """An accepted IPv6 socket; see :class:`_AcceptedV4`."""

    __slots__ = ()
    family = socket.AF_INET6
    type = socket.SOCK_STREAM


_ACCEPTED = {socket.AF_INET: _AcceptedV4, socket.AF_INET6: _AcceptedV6}
_TCP_INFO = getattr(socket, "TCP_INFO", None)  # Linux
_TCP_LISTEN = 10  # tcpi_state of a listening socket (TCP_LISTEN in the kernel)


def accept_queue_length(listener: socket.socket) -> int | None:
    """How many connections wait in a listening TCP socket's accept queue; None if unknown.

    On Linux, ``TCP_INFO`` of a listening socket reports the queue length as
    ``tcpi_unacked`` (bytes 24..28). Asking costs about 0.6 us here; an
    ``accept()`` on an empty queue costs 4.6 us (the kernel allocates the new
    socket and file before it looks at the queue), so the accept loop asks
    instead of accepting until EAGAIN.
    """
    if _TCP_INFO is None:
        return None
    try:
        info = listener.getsockopt(socket.IPPROTO_TCP, _TCP_INFO, 32)
    except OSError:
        return None
    if len(info) < 28 or info[0] != _TCP_LISTEN:
        return None
    return int.from_bytes(info[24:28], sys.byteorder)


class WorkerState(enum.Enum):
    """A worker's life cycle, as the master tracks it."""

    BOOTING = "booting"
    SERVING = "serving"
    DRAINING = "draining"


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
    """One worker process; built in the master, run in the child."""

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
        self.state = WorkerState.BOOTING
        # The master's record of this worker (used in the master only, as in a process table).
        self.pid = 0
        self.pipe_r = -1  # the master's end of the pipe
        self.started = self.last_seen = self.stopping_since = 0.0
        self.ever_ready = False
        self.expected_exit = False  # stopped on purpose: its death is not a failure
        self.killed_for: str | None = None  # why the master SIGKILLed it
        self.replaces: Worker | None = None  # stopped once this one is ready
        self.replaced_by: Worker | None = None
        self.recycle = False  # asked to be replaced (max_requests)
        self.recycle_retry_at = 0.0
        # Set in the child only.
        self._loop: asyncio.AbstractEventLoop | None = None
        self._state: Shared | None = None
        self._redis: Any = None
        self._stop: asyncio.Future[Stop] | None = None
        self._active = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._accepting = False
        self._backoff: asyncio.TimerHandle | None = None
        # Per listener fd: does TCP_INFO give its queue length (asked once, at first arming)?
        self._queue_known: dict[int, bool] = {}
        self._recycle_at = 0
        self._recycle_sent = False

    def label(self) -> str:
        return f"worker {self.number} (pid {self.pid}, gen {self.generation})"

    def overdue(self, now: float) -> str | None:
        """In the master: why this worker must be killed now, if it must."""
        if self.state is WorkerState.BOOTING:
            limit = boot_timeout(self.cfg.worker_timeout)
            return f"sent no READY within {limit:.0f}s" if now - self.started > limit else None
        silent = now - self.last_seen
        if silent > self.cfg.worker_timeout:  # its event loop is blocked
            return f"sent no heartbeat for {silent:.1f}s (timeout)"
        draining = now - self.stopping_since if self.state is WorkerState.DRAINING else 0.0
        if draining > self.cfg.graceful_timeout + STOP_MARGIN_S:
            return f"is still draining after {draining:.0f}s (graceful_timeout)"
        return None

    def wants_replacement(self, now: float) -> bool:
        """In the master: past max_requests, serving, and no replacement booting yet."""
        return (
            self.recycle
            and self.replaced_by is None
            and self.state is WorkerState.SERVING
            and now >= self.recycle_retry_at
        )

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
        self._state = state
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
        self._resume_accepting()
        self.state = WorkerState.SERVING
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
        self.state = WorkerState.DRAINING
        self._pause_accepting()
        if self._backoff is not None:
            self._backoff.cancel()
        # This process accepts no more: its copies of the listen sockets go, so once
        # the master (stopping) and every worker closed theirs, clients are refused.
        for sock in self.listeners:
            sock.close()
        logger.info(
            "worker %d (pid %d) stopping: %d open connection(s)",
            self.number,
            os.getpid(),
            self._active,
        )
        state.begin_drain()
        # Every accepted connection has a task, also one whose TLS handshake is still
        # running and so is not among state's connections yet: wait for the tasks
        # first, then let wait_closed abort what is left at graceful_timeout.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.cfg.graceful_timeout
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=self.cfg.graceful_timeout)
        await state.wait_closed(max(0.0, deadline - loop.time()))
        if self._tasks:
            # wait_closed aborted the stragglers; give their tasks one turn to finish.
            await asyncio.wait(set(self._tasks), timeout=1.0)
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
        state = self._state
        if state is None or state.access.metrics is None:
            return b""
        return state.access.metrics.snapshot(self._active, state.idle_connections())

    def _tick(self) -> None:
        """Heartbeat, orphan check and max_requests check, driven by the event loop."""
        assert self._loop is not None
        self._send(MSG_HEARTBEAT + self._metrics_snapshot())
        if os.getppid() != self.master_pid and self.state is not WorkerState.DRAINING:
            logger.warning("worker %d (pid %d): master is gone; stopping", self.number, os.getpid())
            self._request_stop(Stop.GRACEFUL)
        served = self._state.requests_served if self._state is not None else 0
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

    # -- accepting ----------------------------------------------------------

    def _resume_accepting(self) -> None:
        assert self._loop is not None
        if self._accepting or self.state is WorkerState.DRAINING:
            return
        if self._active >= self.cfg.connection_limit or self._backoff is not None:
            return
        for sock in self.listeners:
            fd = sock.fileno()
            wrap = _ACCEPTED.get(sock.family, socket.socket)
            known = self._queue_known.get(fd)
            if known is None:
                known = self._queue_known[fd] = accept_queue_length(sock) is not None
            self._loop.add_reader(fd, self._on_readable, sock, wrap, int(sock.family), known)
        self._accepting = True

    def _pause_accepting(self) -> None:
        assert self._loop is not None
        if not self._accepting:
            return
        for sock in self.listeners:
            self._loop.remove_reader(sock.fileno())
        self._accepting = False

    def _on_readable(
        self, listener: socket.socket, wrap: type[socket.socket], family: int, known: bool
    ) -> None:
        assert self._loop is not None
        assert self._state is not None
        free = self.cfg.connection_limit - self._active
        if known:
            # Accept what is queued, not until EAGAIN. 0 means a sibling took it
            # (or the count is off): one accept() then, so a readable listener
            # is never left alone (level-triggered: it would spin).
            queued = accept_queue_length(listener) or 1
            share = min(max(-(-queued // self.cfg.workers), ACCEPT_BATCH_MIN), ACCEPT_BATCH_MAX)
            batch = min(free, queued, share)
        else:
            batch = min(free, ACCEPT_BATCH_MIN)
        for _ in range(batch):
            try:
                # The fd and the peer address; socket.accept() would also build the
                # socket through enum conversions (a measurable share of S3).
                fd, addr = listener._accept()  # type: ignore[attr-defined]
            except (BlockingIOError, InterruptedError):
                break  # a sibling took it, or the queue is empty
            except OSError as exc:
                if exc.errno in _RESOURCE_ERRNOS:
                    logger.error(
                        "accept() out of resources (%s); retrying in %.1fs",
                        os.strerror(exc.errno or 0),
                        ACCEPT_BACKOFF_S,
                    )
                    self._pause_accepting()
                    self._backoff = self._loop.call_later(ACCEPT_BACKOFF_S, self._end_backoff)
                    return
                # ECONNABORTED and friends: that one connection is gone; try the next.
                logger.debug("accept() failed: %s", exc)
                continue
            # No setblocking(): uvloop makes the fd non-blocking when it opens the transport.
            conn = wrap(family, socket.SOCK_STREAM, 0, fd)
            self._active += 1
            task = self._loop.create_task(serve_connection(conn, self._state, addr))
            self._tasks.add(task)
            task.add_done_callback(self._on_connection_done)
        if self._active >= self.cfg.connection_limit:
            self._pause_accepting()

    def _end_backoff(self) -> None:
        self._backoff = None
        self._resume_accepting()

    def _on_connection_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._active -= 1
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            logger.error("connection task failed", exc_info=exc)
        self._resume_accepting()
