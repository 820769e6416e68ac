"""The master process: binds, forks and supervises workers.

Plain synchronous code, no asyncio: the master binds the listen sockets once,
pre-parses the TLS contexts once, then forks the workers and supervises them
from one ``selectors`` loop over a signal wakeup pipe and the workers' pipes
(timeout one second). It never imports a ``"MODULE:ATTR"`` app and never opens
a Redis connection: both happen in the workers, after the fork.

Signals (to the master):

    HUP          reload: re-read the config file, re-parse TLS, fork a new
                 generation, wait until each new worker reports READY, then
                 stop the old generation gracefully. If the new config or TLS
                 files are invalid, or a new worker fails to boot or is not
                 ready within max(30, worker_timeout) s, the old generation
                 keeps serving. The listen sockets are kept: a changed ip,
                 port, binds or backlog is logged as needing a restart.
    TERM, INT    graceful stop: workers stop accepting, finish in-flight
                 requests (up to graceful_timeout), exit 0. INT is graceful
                 here, unlike gunicorn and nginx where it is a quick stop, so
                 that Ctrl-C never cuts a request.
    QUIT         immediate stop.
    TTIN, TTOU   one worker more, one fewer (never fewer than one).
    USR1         reopen log files, and forward USR1 to every worker.
    CHLD         reap exited workers and replace them.

Signal handlers only enqueue; the loop does the work. Every replacement
(crash, TTIN, watchdog kill, ``max_requests`` recycling) passes the same
readiness gate: it counts as serving only after its READY message, and a
recycled worker is stopped only once its replacement is ready. A worker that
dies before it ever reported ready, when no worker is serving, stops the
master with ``MASTER_BOOT_FAILED`` instead of respawning in a loop.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import enum
import logging
import os
import selectors
import signal
import socket
import ssl
import sys
import time
from collections.abc import Mapping
from typing import Any

import setproctitle

from . import log
from ._types import Handler
from .config import Config, load_toml, merged
from .errors import BindError, PreforkError
from .tls import load_tls
from .worker import (
    MSG_READY,
    MSG_RECYCLE,
    WORKER_CRASHED,
    Worker,
    WorkerState,
    app_label,
)

logger = logging.getLogger(log.MASTER)

MASTER_EXIT_OK = 0
MASTER_BOOT_FAILED = 3  # workers cannot boot (the app fails to import)

LOOP_TIMEOUT_S = 1.0  # the supervision loop wakes at least this often
BOOT_TIMEOUT_MIN_S = 30.0  # a new worker gets max(this, worker_timeout) to report ready
STOP_MARGIN_S = 2.0  # beyond graceful_timeout before a draining worker is killed
QUIT_TIMEOUT_S = 2.0  # after SIGQUIT, workers still alive are killed
RESPAWN_BACKOFF_MIN_S = 1.0  # after a failed boot while others serve; doubles ...
RESPAWN_BACKOFF_MAX_S = 30.0  # ... up to this

_MASTER_SIGNALS = (
    signal.SIGHUP,
    signal.SIGTERM,
    signal.SIGINT,
    signal.SIGQUIT,
    signal.SIGTTIN,
    signal.SIGTTOU,
    signal.SIGUSR1,
    signal.SIGCHLD,
)


class _Stop(enum.Enum):
    GRACEFUL = "graceful"
    IMMEDIATE = "immediate"


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


def parse_address(text: str) -> tuple[str, int]:
    """``"HOST:PORT"`` (``"[::1]:80"`` for IPv6) -> ``(host, port)``."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise BindError(f"bind {text!r}: expected HOST:PORT")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    return host or "0.0.0.0", int(port)


def bind_spec(cfg: Config) -> tuple[tuple[tuple[str, int], ...], int]:
    """What the listen sockets were made from: the requested addresses and the backlog."""
    addrs = [(cfg.ip, cfg.port), *(parse_address(b) for b in cfg.binds)]
    return tuple(addrs), cfg.backlog


def _format_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


@dataclasses.dataclass(eq=False)
class _Child:
    """The master's record of one worker process."""

    pid: int
    number: int
    generation: int
    fd: int
    cfg: Config
    started: float
    last_seen: float
    state: WorkerState = WorkerState.BOOTING
    ever_ready: bool = False
    stopping_since: float = 0.0
    expected_exit: bool = False  # stopped on purpose: its death is not a failure
    killed_for: str | None = None  # why the master SIGKILLed it
    replaces: _Child | None = None  # stop this one once I am ready
    replaced_by: _Child | None = None
    recycle: bool = False  # asked to be replaced (max_requests)
    recycle_retry_at: float = 0.0

    def label(self) -> str:
        return f"worker {self.number} (pid {self.pid}, gen {self.generation})"


@dataclasses.dataclass(eq=False)
class _Reload:
    """A generation that is booting and will replace the current one once all are ready."""

    generation: int
    cfg: Config
    tls: ssl.SSLContext | None
    target: int
    deadline: float
    pending: set[int]  # pids not ready yet
    children: list[_Child]


class Master:
    """Binds once, forks ``workers`` workers, supervises them until told to stop."""

    def __init__(
        self,
        cfg: Config,
        app: Handler | str,
        *,
        config_file: str | None = None,
        overrides: Mapping[str, Any] | None = None,
        pidfile: str | None = None,
    ) -> None:
        self.cfg = cfg
        self.app = app
        self.config_file = config_file
        self.overrides = dict(overrides or {})
        self.pidfile = pidfile
        self.listeners: list[socket.socket] = []
        self.port = 0  # the first socket's real port (cfg.port may be 0)
        self._bind_spec = bind_spec(cfg)
        self._tls: ssl.SSLContext | None = None
        self._generation = 0  # the serving generation
        self._last_generation = 0
        self._target = cfg.workers
        self._children: dict[int, _Child] = {}
        self._signals: collections.deque[int] = collections.deque()
        self._selector: selectors.BaseSelector | None = None
        self._wakeup_r = -1
        self._wakeup_w = -1
        self._old_handlers: dict[int, Any] = {}
        self._old_wakeup_fd = -1
        self._reload: _Reload | None = None
        self._reload_again = False
        self._stopping: _Stop | None = None
        self._stop_deadline = 0.0
        self._exit_code = MASTER_EXIT_OK
        self._ever_ready = False
        self._respawn_at = 0.0
        self._respawn_delay = RESPAWN_BACKOFF_MIN_S
        self._pid_written = False

    # -- life ---------------------------------------------------------------

    def run(self) -> int:
        """Bind, fork, supervise; returns the exit code. Raises BindError or TLSError."""
        log.setup(self.cfg.log_level)
        self._tls = load_tls(self.cfg.ssl)
        self._bind()
        try:
            setproctitle.setproctitle(f"prefork: master [{app_label(self.app)}]")
            self._write_pidfile()
            self._selector = selectors.PollSelector()
            self._install_signals()
            self._generation = self._last_generation = 1
            logger.info(
                "master (pid %d) starting generation 1 with %d worker(s)",
                os.getpid(),
                self._target,
            )
            for number in range(1, self._target + 1):
                self._spawn(number, 1, self.cfg, self._tls)
            self._loop()
            logger.info("master (pid %d) exiting with code %d", os.getpid(), self._exit_code)
            return self._exit_code
        finally:
            self._cleanup()

    def _bind(self) -> None:
        addrs, backlog = self._bind_spec
        seen: set[tuple[str, int]] = set()
        try:
            for host, port in addrs:
                if port and (host, port) in seen:
                    continue
                seen.add((host, port))
                self.listeners.append(self._listen(host, port, backlog))
        except BindError:
            for sock in self.listeners:
                sock.close()
            self.listeners.clear()
            raise
        scheme = "https" if self._tls is not None else "http"
        for sock in self.listeners:
            host, port = sock.getsockname()[:2]
            logger.info("listening on %s://%s:%d", scheme, _format_host(host), port)
        self.port = self.listeners[0].getsockname()[1]

    @staticmethod
    def _listen(host: str, port: int, backlog: int) -> socket.socket:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        try:
            sock = socket.socket(family, socket.SOCK_STREAM)
        except OSError as exc:
            raise BindError(f"cannot bind {_format_host(host)}:{port}: {exc}") from None
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind((host, port))
            sock.listen(backlog)
        except (OSError, OverflowError) as exc:
            sock.close()
            reason = getattr(exc, "strerror", None) or str(exc)
            raise BindError(f"cannot bind {_format_host(host)}:{port}: {reason}") from None
        return sock

    def _write_pidfile(self) -> None:
        if self.pidfile is None:
            return
        try:
            with open(self.pidfile, "w") as fh:
                fh.write(f"{os.getpid()}\n")
        except OSError as exc:
            raise BindError(f"pid file {self.pidfile}: {exc.strerror}") from None
        self._pid_written = True

    def _install_signals(self) -> None:
        assert self._selector is not None
        self._wakeup_r, self._wakeup_w = os.pipe()
        os.set_blocking(self._wakeup_r, False)
        os.set_blocking(self._wakeup_w, False)
        self._selector.register(self._wakeup_r, selectors.EVENT_READ, None)
        for signum in _MASTER_SIGNALS:
            self._old_handlers[signum] = signal.signal(signum, self._on_signal)
        self._old_wakeup_fd = signal.set_wakeup_fd(self._wakeup_w)

    def _on_signal(self, signum: int, frame: object) -> None:
        # Only enqueue: no logging, no forking in a signal handler.
        self._signals.append(signum)

    def _cleanup(self) -> None:
        if self._old_handlers:
            signal.set_wakeup_fd(self._old_wakeup_fd)
            for signum, handler in self._old_handlers.items():
                signal.signal(signum, handler)
            self._old_handlers.clear()
        for child in self._children.values():
            self._close_pipe(child)
        for fd in (self._wakeup_r, self._wakeup_w):
            if fd >= 0:
                os.close(fd)
        self._wakeup_r = self._wakeup_w = -1
        if self._selector is not None:
            self._selector.close()
            self._selector = None
        for sock in self.listeners:
            sock.close()
        self.listeners.clear()
        if self._pid_written and self.pidfile is not None:
            with contextlib.suppress(OSError):
                with open(self.pidfile) as fh:
                    mine = fh.read().strip() == str(os.getpid())
                if mine:
                    os.unlink(self.pidfile)
            self._pid_written = False

    # -- the loop -----------------------------------------------------------

    def _loop(self) -> None:
        assert self._selector is not None
        while True:
            now = time.monotonic()
            timeout = LOOP_TIMEOUT_S
            if self._respawn_at > now:
                timeout = min(timeout, self._respawn_at - now)
            for key, _events in self._selector.select(timeout):
                if key.data is None:
                    self._drain_wakeup()
                else:
                    self._read_pipe(key.data)
            self._handle_signals()
            self._reap()
            if self._stopping is not None:
                if not self._children:
                    return
                self._enforce_stop_deadline()
                continue
            self._check_timeouts()
            self._check_reload()
            self._manage_workers()

    def _drain_wakeup(self) -> None:
        with contextlib.suppress(BlockingIOError):
            while os.read(self._wakeup_r, 4096):
                pass

    def _read_pipe(self, child: _Child) -> None:
        try:
            data = os.read(child.fd, 4096)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:  # EOF: the worker is exiting; reaping closes the fd
            self._unregister(child)
            return
        child.last_seen = time.monotonic()
        if MSG_READY in data:
            self._on_ready(child)
        if MSG_RECYCLE in data and not child.recycle:
            child.recycle = True
        # MSG_HEARTBEAT needs nothing more than the last_seen update above.

    def _handle_signals(self) -> None:
        while self._signals:
            signum = self._signals.popleft()
            if signum == signal.SIGCHLD:
                continue  # the loop reaps after every wakeup
            if signum in (signal.SIGTERM, signal.SIGINT):
                self.handle_term(signum)
            elif signum == signal.SIGQUIT:
                self.handle_quit()
            elif signum == signal.SIGUSR1:
                self.handle_usr1()
            elif self._stopping is not None:
                logger.info("stopping: ignoring %s", signal.Signals(signum).name)
            elif signum == signal.SIGHUP:
                self.handle_hup()
            elif signum == signal.SIGTTIN:
                self.handle_ttin()
            elif signum == signal.SIGTTOU:
                self.handle_ttou()

    # -- signal handlers (run from the loop) --------------------------------

    def handle_term(self, signum: int) -> None:
        if self._stopping is not None:
            return
        logger.info("%s: graceful stop", signal.Signals(signum).name)
        self._begin_stop(_Stop.GRACEFUL)

    def handle_quit(self) -> None:
        if self._stopping is _Stop.IMMEDIATE:
            return
        logger.info("SIGQUIT: immediate stop")
        self._begin_stop(_Stop.IMMEDIATE)

    def handle_usr1(self) -> None:
        log.reopen()
        logger.info("SIGUSR1: reopening logs and forwarding to the workers")
        for child in list(self._children.values()):
            # A booting worker still has USR1 ignored; ready ones reopen their logs.
            if child.state is not WorkerState.BOOTING:
                self._kill(child, signal.SIGUSR1)

    def handle_ttin(self) -> None:
        self._target += 1
        logger.info("SIGTTIN: %d worker(s)", self._target)

    def handle_ttou(self) -> None:
        if self._target <= 1:
            logger.info("SIGTTOU: already at one worker")
            return
        self._target -= 1
        logger.info("SIGTTOU: %d worker(s)", self._target)

    def handle_hup(self) -> None:
        if self._reload is not None:
            self._reload_again = True
            logger.info(
                "SIGHUP: generation %d is still booting; reload queued", self._reload.generation
            )
            return
        logger.info("SIGHUP: reloading")
        try:
            cfg = self._reread_config()
            tls = load_tls(cfg.ssl)
        except PreforkError as exc:
            logger.error("reload failed: %s; generation %d keeps serving", exc, self._generation)
            return
        try:
            spec = bind_spec(cfg)
        except BindError as exc:
            logger.error("reload failed: %s; generation %d keeps serving", exc, self._generation)
            return
        if spec != self._bind_spec:
            logger.warning(
                "reload: ip, port, binds or backlog changed; a restart is needed to apply "
                "that, the current listen sockets are kept"
            )
        target = cfg.workers if cfg.workers != self.cfg.workers else self._target
        log.set_level(cfg.log_level)
        self._last_generation += 1
        generation = self._last_generation
        logger.info("generation %d starting with %d worker(s)", generation, target)
        reload = _Reload(
            generation=generation,
            cfg=cfg,
            tls=tls,
            target=target,
            deadline=time.monotonic() + boot_timeout(cfg.worker_timeout),
            pending=set(),
            children=[],
        )
        self._reload = reload
        for number in range(1, target + 1):
            child = self._spawn(number, generation, cfg, tls)
            reload.pending.add(child.pid)
            reload.children.append(child)

    def _reread_config(self) -> Config:
        if self.config_file is None:
            return self.cfg
        return Config.build(merged(load_toml(self.config_file), self.overrides))

    # -- workers ------------------------------------------------------------

    def _spawn(
        self,
        number: int,
        generation: int,
        cfg: Config,
        tls: ssl.SSLContext | None,
        *,
        replaces: _Child | None = None,
    ) -> _Child:
        assert self._selector is not None
        read_fd, write_fd = os.pipe()
        # The child keeps only its own pipe's write end: no sibling's pipe, no wakeup pipe.
        close_fds = [read_fd, self._wakeup_r, self._wakeup_w]
        close_fds += [c.fd for c in self._children.values() if c.fd >= 0]
        worker = Worker(
            cfg=cfg,
            app=self.app,
            listeners=self.listeners,
            ssl_context=tls,
            number=number,
            generation=generation,
            pipe_fd=write_fd,
            close_fds=close_fds,
        )
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        pid = os.fork()
        if pid == 0:  # the child never returns into the master's code
            code = WORKER_CRASHED
            try:
                code = worker.run()
            finally:
                for stream in (sys.stdout, sys.stderr):
                    with contextlib.suppress(Exception):
                        stream.flush()
                os._exit(code)
        os.close(write_fd)
        os.set_blocking(read_fd, False)
        now = time.monotonic()
        child = _Child(
            pid=pid,
            number=number,
            generation=generation,
            fd=read_fd,
            cfg=cfg,
            started=now,
            last_seen=now,
            replaces=replaces,
        )
        if replaces is not None:
            replaces.replaced_by = child
        self._children[pid] = child
        self._selector.register(read_fd, selectors.EVENT_READ, child)
        logger.info("%s spawned", child.label())
        return child

    def _on_ready(self, child: _Child) -> None:
        if child.state is not WorkerState.BOOTING:
            return
        child.state = WorkerState.SERVING
        child.ever_ready = True
        self._ever_ready = True
        self._respawn_delay = RESPAWN_BACKOFF_MIN_S
        logger.debug("%s ready", child.label())
        if self._stopping is not None:
            self._stop_worker(child, "the master is stopping")
            return
        old = child.replaces
        child.replaces = None
        if old is not None:
            old.replaced_by = None
            if old.pid in self._children:
                self._stop_worker(old, f"replaced by pid {child.pid}")
        reload = self._reload
        if reload is not None and child.pid in reload.pending:
            reload.pending.discard(child.pid)
            if not reload.pending:
                self._commit_reload(reload)

    def _commit_reload(self, reload: _Reload) -> None:
        old_generation = self._generation
        self._reload = None
        self.cfg = reload.cfg
        self._tls = reload.tls
        self._target = reload.target
        self._generation = reload.generation
        logger.info(
            "generation %d ready; stopping generation %d", reload.generation, old_generation
        )
        for child in list(self._children.values()):
            if child.generation < reload.generation:
                self._stop_worker(child, f"generation {reload.generation} is serving")
        if self._reload_again:
            self._reload_again = False
            self.handle_hup()

    def _abort_reload(self, reason: str) -> None:
        reload = self._reload
        assert reload is not None
        self._reload = None
        log.set_level(self.cfg.log_level)
        logger.error("reload failed: %s; generation %d keeps serving", reason, self._generation)
        for child in reload.children:
            if child.pid in self._children:
                child.expected_exit = True
                if child.state is WorkerState.BOOTING:
                    self._force_kill(child, "reload aborted")
                else:
                    self._stop_worker(child, "reload aborted")
        if self._reload_again:
            self._reload_again = False
            self.handle_hup()

    def _stop_worker(self, child: _Child, why: str) -> None:
        """Graceful stop of one worker (SIGTERM), counted out of the serving set."""
        child.expected_exit = True
        if child.state is WorkerState.DRAINING:
            return
        logger.info("stopping %s: %s", child.label(), why)
        child.state = WorkerState.DRAINING
        child.stopping_since = time.monotonic()
        self._kill(child, signal.SIGTERM)

    def _force_kill(self, child: _Child, why: str) -> None:
        if child.killed_for is None:
            child.killed_for = why
            self._kill(child, signal.SIGKILL)

    def _kill(self, child: _Child, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child.pid, signum)

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            child = self._children.pop(pid, None)
            if child is None:
                # Not one of ours (e.g. re-parented to us as PID 1): reaped, nothing more.
                logger.debug("reaped pid %d (not a worker): %s", pid, describe_status(status))
                continue
            self._close_pipe(child)
            self._on_exit(child, status)

    def _on_exit(self, child: _Child, status: int) -> None:
        cause = describe_status(status)
        if child.killed_for is not None:
            cause = f"{cause}, {child.killed_for}"
        clean = os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
        if child.expected_exit and clean:
            logger.info("%s exited (%s)", child.label(), cause)
        else:
            logger.warning("%s died (%s)", child.label(), cause)
        if self._stopping is not None:
            return
        if child.replaced_by is not None:  # the old one died before its replacement was ready
            child.replaced_by.replaces = None
        old = child.replaces
        if old is not None:
            old.replaced_by = None
        if child.ever_ready or child.expected_exit:
            return  # a crash of a serving worker: _manage_workers replaces it
        reload = self._reload
        if reload is not None and child.pid in reload.pending:
            self._abort_reload(f"{child.label()} failed to boot ({cause})")
            return
        if old is not None:
            # A max_requests replacement could not boot: the old worker keeps serving.
            old.recycle_retry_at = time.monotonic() + self._respawn_delay
            logger.error(
                "%s failed to boot (%s); %s keeps serving, retrying in %.0fs",
                child.label(),
                cause,
                old.label(),
                self._respawn_delay,
            )
            self._bump_backoff()
            return
        serving = any(c.state is WorkerState.SERVING for c in self._children.values())
        if not self._ever_ready or not serving:
            self._halt(f"{child.label()} failed to boot ({cause}); stopping")
            return
        logger.error(
            "%s failed to boot (%s); retrying in %.0fs", child.label(), cause, self._respawn_delay
        )
        self._respawn_at = time.monotonic() + self._respawn_delay
        self._bump_backoff()

    def _bump_backoff(self) -> None:
        self._respawn_delay = min(self._respawn_delay * 2, RESPAWN_BACKOFF_MAX_S)

    def _unregister(self, child: _Child) -> None:
        if self._selector is not None and child.fd >= 0:
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(child.fd)

    def _close_pipe(self, child: _Child) -> None:
        if child.fd >= 0:
            self._unregister(child)
            os.close(child.fd)
            child.fd = -1

    def _check_timeouts(self) -> None:
        now = time.monotonic()
        for child in list(self._children.values()):
            if child.killed_for is not None:
                continue
            if child.state is WorkerState.BOOTING:
                limit = boot_timeout(child.cfg.worker_timeout)
                if now - child.started > limit:
                    logger.error("%s did not boot within %.0fs; killing it", child.label(), limit)
                    self._force_kill(child, f"no READY within {limit:.0f}s")
                continue
            silent = now - child.last_seen
            if silent > child.cfg.worker_timeout:
                logger.error(
                    "%s sent no heartbeat for %.1fs (worker_timeout); killing it",
                    child.label(),
                    silent,
                )
                self._force_kill(child, f"timeout: no heartbeat for {silent:.1f}s")
            elif (
                child.state is WorkerState.DRAINING
                and now - child.stopping_since > child.cfg.graceful_timeout + STOP_MARGIN_S
            ):
                logger.warning("%s is past graceful_timeout; killing it", child.label())
                self._force_kill(child, "graceful_timeout exceeded")

    def _check_reload(self) -> None:
        reload = self._reload
        if reload is not None and time.monotonic() > reload.deadline:
            self._abort_reload(
                f"generation {reload.generation} not ready within "
                f"{boot_timeout(reload.cfg.worker_timeout):.0f}s"
            )

    def _manage_workers(self) -> None:
        now = time.monotonic()
        # max_requests: fork the replacement first; the old one stops when it is ready.
        for child in list(self._children.values()):
            if (
                child.recycle
                and child.replaced_by is None
                and child.state is WorkerState.SERVING
                and child.generation == self._generation
                and now >= child.recycle_retry_at
            ):
                logger.info("%s reached max_requests; replacing it", child.label())
                self._spawn(child.number, child.generation, self.cfg, self._tls, replaces=child)
        current = [
            c
            for c in self._children.values()
            if c.generation == self._generation
            and c.state is not WorkerState.DRAINING
            and c.replaced_by is None
        ]
        missing = self._target - len(current)
        if missing > 0 and now >= self._respawn_at:
            used = {c.number for c in current}
            number = 0
            for _ in range(missing):
                number += 1
                while number in used:
                    number += 1
                self._spawn(number, self._generation, self.cfg, self._tls)
        elif missing < 0:
            extras = sorted(current, key=lambda c: c.number, reverse=True)[:-missing]
            for child in extras:
                self._stop_worker(child, "fewer workers wanted")

    # -- stopping -----------------------------------------------------------

    def _begin_stop(self, how: _Stop) -> None:
        self._stopping = how
        self._reload = None
        self._reload_again = False
        now = time.monotonic()
        if how is _Stop.GRACEFUL:
            grace = max((c.cfg.graceful_timeout for c in self._children.values()), default=0.0)
            self._stop_deadline = now + grace + STOP_MARGIN_S
        else:
            self._stop_deadline = now + QUIT_TIMEOUT_S
        for child in list(self._children.values()):
            child.expected_exit = True
            if how is _Stop.GRACEFUL:
                self._stop_worker(child, "the master is stopping")
            elif child.state is WorkerState.BOOTING:
                # Its QUIT handler is not installed yet (the default would dump core).
                self._force_kill(child, "immediate stop")
            else:
                child.state = WorkerState.DRAINING
                self._kill(child, signal.SIGQUIT)

    def _halt(self, message: str) -> None:
        logger.error(message)
        self._exit_code = MASTER_BOOT_FAILED
        self._stopping = _Stop.IMMEDIATE
        self._reload = None
        self._stop_deadline = time.monotonic() + STOP_MARGIN_S
        for child in list(self._children.values()):
            child.expected_exit = True
            if child.state is WorkerState.BOOTING:
                self._force_kill(child, "the master is stopping")
            else:
                self._stop_worker(child, "the master is stopping")

    def _enforce_stop_deadline(self) -> None:
        if time.monotonic() < self._stop_deadline:
            return
        for child in list(self._children.values()):
            if child.killed_for is None:
                logger.warning("%s did not stop in time; killing it", child.label())
            self._force_kill(child, "stop deadline passed")
