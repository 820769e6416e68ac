"""The master process: binds, forks and supervises workers.

Plain synchronous code, no asyncio. It binds the listen sockets (listeners.py),
or serves on the ones systemd passed it (socket activation, systemd.py), and
pre-parses TLS once, forks the workers, and supervises them from one loop
(one-second timeout) that waits on the signal queue's wakeup pipe and the
workers' pipes (wakeups.py; one byte per message: READY, HEARTBEAT, RECYCLE;
see worker.py). Its record of each worker is workers.py's; a reload in the
making, reload.py's. It never imports a ``"MODULE:ATTR"`` app and never opens
Redis: the workers do, after the fork.

Signals (handlers only enqueue; the loop does the work):

    HUP         reload: re-read the config file and re-parse TLS (invalid: log,
                keep serving); fork a new generation; once every new worker
                reported READY, stop the old one gracefully. A new worker that
                fails to boot, or a generation not ready within
                max(30, worker_timeout) s, is killed and the old one keeps
                serving. The listen sockets are kept: a changed ip, port,
                binds or backlog is logged as needing a restart.
    TERM, INT   graceful stop, exit 0. INT is graceful here, unlike gunicorn
                and nginx (quick stop there), so that Ctrl-C never cuts a request.
    QUIT        immediate stop.
    TTIN, TTOU  one worker more, one fewer (never fewer than one).
    USR1        reopen log files, and forward USR1 to every worker.
    CHLD        reap; replace dead workers.

Under systemd (``NOTIFY_SOCKET``), the master reports ``READY=1`` once the
first generation serves, ``RELOADING=1`` on HUP and ``READY=1`` again when the
reload is committed or abandoned, ``STOPPING=1`` on stop, and a ``STATUS=``
line naming the generation and the worker count with each.

Every replacement (crash, TTIN, watchdog kill, ``max_requests``) passes the
same gate: it counts as serving after its READY only, and a recycled worker is
stopped once its replacement is ready. A worker that dies before it ever
reported ready while none serves stops the master (``MASTER_BOOT_FAILED``)
instead of a respawn loop.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import signal
import socket
import ssl
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import setproctitle

from prefork import log
from prefork._types import Handler
from prefork.config import Config
from prefork.errors import PreforkError
from prefork.master import systemd
from prefork.master.listeners import bind_spec, open_listeners, port_of
from prefork.master.metrics import MasterMetrics, MasterView, ServerCollector, master_view
from prefork.master.pidfile import PidFile
from prefork.master.reload import Reload, reread_config
from prefork.master.wakeups import Wakeups
from prefork.master.workers import WorkerRecord, WorkerState, WorkerTable, fork
from prefork.tls import load_tls

# Imported before any fork, on purpose: this brings uvloop, engine.* and http.* into
# the master, so each worker starts with them loaded, their pages shared
# copy-on-write (workers.fork freezes the GC first), not imported at each spawn.
# The app interface chosen (apps.native...), the parser backend and the app are
# imported in the worker, after the fork (build_app).
from prefork.worker import (
    MASTER_SIGNALS,
    MSG_READY,
    MSG_RECYCLE,
    STOP_MARGIN_S,
    Stop,
    Worker,
    app_label,
    boot_timeout,
    describe_status,
)

if TYPE_CHECKING:
    from prefork.master.scrape import MetricsEndpoint

logger = logging.getLogger(log.MASTER)

MASTER_EXIT_OK = 0
MASTER_BOOT_FAILED = 3  # workers cannot boot (the app fails to import)

LOOP_TIMEOUT_S = 1.0  # the supervision loop wakes at least this often
QUIT_TIMEOUT_S = 2.0  # after SIGQUIT, workers still alive are killed
RESPAWN_BACKOFF_MIN_S = 1.0  # after a failed boot while others serve; doubles ...
RESPAWN_BACKOFF_MAX_S = 30.0  # ... up to this


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
        self.error: str | None = None  # why run() returned MASTER_BOOT_FAILED
        self._bind_spec = bind_spec(cfg)
        self._tls: ssl.SSLContext | None = None
        self._generation = 0  # the serving generation
        self._last_generation = 0
        self._target = cfg.workers
        self._workers = WorkerTable()
        self._wakeups = Wakeups()  # the signal queue and the pipes the loop waits on
        self._reload: Reload | None = None
        self._reload_again = False
        self._stopping: Stop | None = None
        self._stop_deadline = 0.0
        self._exit_code = MASTER_EXIT_OK
        self._ever_ready = False
        self._respawn_at = 0.0
        self._respawn_delay = RESPAWN_BACKOFF_MIN_S
        self._pidfile = PidFile(pidfile)
        self._metrics = MasterMetrics()  # fed by the workers' heartbeats
        self._metrics_endpoint: MetricsEndpoint | None = None  # when metrics_bind is set
        self._notify = systemd.Notifier(None)  # run() reads NOTIFY_SOCKET
        self._activated = False  # serving on sockets systemd passed (LISTEN_FDS)
        self._ready_sent = False  # READY=1 told for the first generation

    # -- life ---------------------------------------------------------------

    def run(self) -> int:
        """Bind, fork, supervise; returns the exit code. Raises BindError or TLSError."""
        log.setup(self.cfg.log_level)
        self._tls = load_tls(self.cfg.ssl)
        self._notify = systemd.Notifier.from_environ()
        self._bind()
        try:
            self._start_metrics()
            setproctitle.setproctitle(f"prefork: master [{app_label(self.app)}]")
            self._pidfile.write()
            self._wakeups.install(MASTER_SIGNALS)
            self._generation = self._last_generation = 1
            logger.info("master (pid %d): generation 1, %d worker(s)", os.getpid(), self._target)
            for number in range(1, self._target + 1):
                self._spawn(number, 1, self.cfg, self._tls)
            self._loop()
            logger.info("master (pid %d) exiting with code %d", os.getpid(), self._exit_code)
            return self._exit_code
        finally:
            self._cleanup()

    def _bind(self) -> None:
        # Sockets from systemd are never re-bound, not on HUP either.
        scheme = "https" if self._tls is not None else "http"
        self.listeners, self._activated = open_listeners(self._bind_spec, scheme)
        self.port = port_of(self.listeners[0])

    def _cleanup(self) -> None:
        if self._metrics_endpoint is not None:
            self._metrics_endpoint.close()
            self._metrics_endpoint = None
        self._wakeups.restore_signals()
        for worker in self._workers.values():
            self._wakeups.close_pipe(worker)
        self._wakeups.close()
        for sock in self.listeners:
            sock.close()
        self.listeners.clear()
        self._pidfile.remove()

    # -- the loop -----------------------------------------------------------

    def _loop(self) -> None:
        while True:
            timeout = LOOP_TIMEOUT_S
            if self._respawn_at > time.monotonic():
                timeout = min(timeout, self._respawn_at - time.monotonic())
            for worker in self._wakeups.wait(timeout):
                self._read_pipe(worker)
            self._handle_signals()
            self._reap()
            if self._stopping is not None:
                if not self._workers:
                    return
                self._enforce_stop_deadline()
                continue
            self._check_timeouts()
            self._manage_workers()

    def _read_pipe(self, worker: WorkerRecord) -> None:
        try:
            data = os.read(worker.pipe_r, 4096)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:  # EOF: the worker is exiting; reaping closes the fd
            self._wakeups.unwatch(worker)
            return
        worker.last_seen = time.monotonic()  # every message, MSG_HEARTBEAT included
        data = self._metrics.feed(worker.pid, data)
        if MSG_READY in data:
            self._on_ready(worker)
        if MSG_RECYCLE in data:
            worker.recycle = True

    def _handle_signals(self) -> None:
        while self._wakeups.signals:
            signum = self._wakeups.signals.popleft()
            if signum == signal.SIGCHLD:
                continue  # the loop reaps after every wakeup
            if signum in (signal.SIGTERM, signal.SIGINT):
                self.handle_term(signum)
            elif signum == signal.SIGQUIT:
                self.handle_quit()
            elif signum == signal.SIGUSR1:
                self.handle_usr1()
            elif self._stopping is not None:
                logger.info("stopping: %s ignored", signal.Signals(signum).name)
            elif signum == signal.SIGHUP:
                self.handle_hup()
            elif signum == signal.SIGTTIN:
                self.handle_ttin()
            elif signum == signal.SIGTTOU:
                self.handle_ttou()

    # -- signal handlers (run from the loop) --------------------------------

    def handle_term(self, signum: int) -> None:
        if self._stopping is None:
            logger.info("%s: graceful stop", signal.Signals(signum).name)
            self._begin_stop(Stop.GRACEFUL)
        elif signum == signal.SIGINT and self._stopping is Stop.GRACEFUL:
            # A second Ctrl-C does not wait for the drain (as with uvicorn);
            # TERM again (a supervisor repeating itself) changes nothing.
            logger.info("SIGINT again: immediate stop")
            self._begin_stop(Stop.IMMEDIATE)

    def handle_quit(self) -> None:
        if self._stopping is not Stop.IMMEDIATE:
            logger.info("SIGQUIT: immediate stop")
            self._begin_stop(Stop.IMMEDIATE)

    def handle_usr1(self) -> None:
        log.reopen()
        logger.info("SIGUSR1: reopening logs and forwarding to the workers")
        for worker in list(self._workers.values()):
            if worker.state is not WorkerState.BOOTING:  # booting ones ignore USR1 until ready
                self._kill(worker, signal.SIGUSR1)

    def handle_ttin(self) -> None:
        self._target += 1
        logger.info("SIGTTIN: %d worker(s)", self._target)
        self._notify.status(self._status())

    def handle_ttou(self) -> None:
        if self._target <= 1:
            logger.info("SIGTTOU: already at one worker")
            return
        self._target -= 1
        logger.info("SIGTTOU: %d worker(s)", self._target)
        self._notify.status(self._status())
        self._notify_first_ready()

    def handle_hup(self) -> None:
        if self._reload is not None:
            self._reload_again = True
            logger.info("SIGHUP: queued until generation %d is ready", self._reload.generation)
            return
        logger.info("SIGHUP: reloading")
        if self._ready_sent:  # before the first READY=1, systemd is still starting us
            self._notify.reloading(f"reloading; {self._status()}")
        try:  # transactional: nothing changes unless the new config and TLS files are good
            cfg = self._reread_config()
            tls = load_tls(cfg.ssl)
            spec = bind_spec(cfg)
        except PreforkError as exc:
            logger.error("reload failed: %s; generation %d keeps serving", exc, self._generation)
            self._notify_reload_done(f"reload failed: {exc}")
            self._metrics.reloaded(False)
            return
        if cfg.metrics_bind != self.cfg.metrics_bind:
            logger.warning("reload: metrics_bind changed: that needs a restart")
        if spec != self._bind_spec and not self._activated:
            logger.warning("reload: ip, port, binds or backlog changed: that needs a restart")
        target = cfg.workers if cfg.workers != self.cfg.workers else self._target
        log.set_level(cfg.log_level)
        self._last_generation += 1
        generation = self._last_generation
        logger.info("generation %d starting with %d worker(s)", generation, target)
        deadline = time.monotonic() + boot_timeout(cfg.worker_timeout)
        reload = Reload(generation, cfg, tls, deadline, pending=set())
        self._reload = reload
        for number in range(1, target + 1):
            worker = self._spawn(number, generation, cfg, tls)
            if worker is None:
                self._abort_reload(f"generation {generation} could not be forked")
                return
            reload.pending.add(worker.pid)

    def _reread_config(self) -> Config:
        return reread_config(self.cfg, self.config_file, self.overrides)

    def _notify_reload_done(self, outcome: str) -> None:
        """READY=1 after RELOADING=1, whether the reload took or not: systemd waits for it."""
        if self._ready_sent:
            self._notify.ready(f"{outcome}; {self._status()}")
        else:
            self._notify_first_ready()

    # -- workers ------------------------------------------------------------

    def _spawn(
        self,
        number: int,
        generation: int,
        cfg: Config,
        tls: ssl.SSLContext | None,
        replaces: WorkerRecord | None = None,
    ) -> WorkerRecord | None:
        """Fork one worker; None (logged, retried after a back-off) if the system refuses."""
        try:
            read_fd, write_fd = os.pipe()
        except OSError as exc:
            self._spawn_failed(exc)
            return None
        # The child keeps its own pipe's write end only: no sibling's pipe, no wakeup pipe.
        close_fds = [read_fd, self._wakeups.wakeup_r, self._wakeups.wakeup_w]
        close_fds += self._workers.pipes()
        if self._metrics_endpoint is not None:
            close_fds += self._metrics_endpoint.fds()
        child = Worker(cfg, self.app, self.listeners, tls, number, generation, write_fd, close_fds)
        try:
            pid = fork(child)
        except OSError as exc:  # EAGAIN, ENOMEM
            os.close(read_fd)
            os.close(write_fd)
            self._spawn_failed(exc)
            return None
        os.close(write_fd)
        os.set_blocking(read_fd, False)
        worker = WorkerRecord(cfg, number, generation, pid, read_fd)
        if replaces is not None:
            worker.replaces, replaces.replaced_by = replaces, worker
        self._workers[pid] = worker
        self._wakeups.watch(worker)
        logger.info("%s spawned", worker.label())
        return worker

    def _spawn_failed(self, exc: OSError) -> None:
        logger.error("cannot fork a worker: %s; retrying in %.0fs", exc, self._respawn_delay)
        self._respawn_at = time.monotonic() + self._respawn_delay
        self._bump_backoff()

    def _on_ready(self, worker: WorkerRecord) -> None:
        if worker.state is not WorkerState.BOOTING:
            return
        worker.state = WorkerState.SERVING
        worker.ever_ready = self._ever_ready = True
        self._respawn_delay = RESPAWN_BACKOFF_MIN_S
        if self._stopping is not None:
            self._stop_worker(worker, "the master is stopping")
            return
        old, worker.replaces = worker.replaces, None
        if old is not None:
            old.replaced_by = None
            if old.pid in self._workers:
                self._stop_worker(old, f"replaced by pid {worker.pid}")
        reload = self._reload
        if reload is not None and worker.pid in reload.pending:
            reload.pending.discard(worker.pid)
            if not reload.pending:
                self._commit_reload(reload)
        self._notify_first_ready()

    # -- systemd notification -------------------------------------------------

    def _status(self) -> str:
        return f"generation {self._generation} serving, {self._target} worker(s)"

    def _notify_first_ready(self) -> None:
        """READY=1 once every worker of the first generation serves (reloads tell their own)."""
        if self._ready_sent or self._reload is not None or self._stopping is not None:
            return
        if self._workers.serving(self._generation) >= self._target:
            self._ready_sent = True
            self._notify.ready(self._status())

    def _commit_reload(self, reload: Reload) -> None:
        old_generation, self._generation = self._generation, reload.generation
        self._reload = None
        if reload.cfg.workers != self.cfg.workers:  # else keep any TTIN/TTOU since the start
            self._target = reload.cfg.workers
        self.cfg, self._tls = reload.cfg, reload.tls
        logger.info(
            "generation %d ready; stopping generation %d", reload.generation, old_generation
        )
        for worker in list(self._workers.values()):
            if worker.generation < reload.generation:
                self._stop_worker(worker, f"generation {reload.generation} is serving")
        self._notify_reload_done("reloaded")
        self._metrics.reloaded(True)
        self._reload_queued()

    def _abort_reload(self, reason: str) -> None:
        reload = self._reload
        assert reload is not None
        self._reload = None
        log.set_level(self.cfg.log_level)
        logger.error("reload failed: %s; generation %d keeps serving", reason, self._generation)
        for worker in list(self._workers.values()):
            if worker.generation == reload.generation:
                if worker.state is WorkerState.BOOTING:
                    worker.expected_exit = True
                    self._force_kill(worker, "reload aborted")
                else:
                    self._stop_worker(worker, "reload aborted")
        self._notify_reload_done(f"reload failed: {reason}")
        self._metrics.reloaded(False)
        self._reload_queued()

    def _reload_queued(self) -> None:
        if self._reload_again:
            self._reload_again = False
            self.handle_hup()

    def _stop_worker(self, worker: WorkerRecord, why: str) -> None:
        """Graceful stop of one worker (SIGTERM); it no longer counts as serving."""
        worker.expected_exit = True
        if worker.state is not WorkerState.DRAINING:
            logger.info("stopping %s: %s", worker.label(), why)
            worker.state = WorkerState.DRAINING
            worker.stopping_since = time.monotonic()
            self._kill(worker, signal.SIGTERM)

    def _force_kill(self, worker: WorkerRecord, why: str) -> None:
        if worker.killed_for is None:
            worker.killed_for = why
            self._kill(worker, signal.SIGKILL)

    def _kill(self, worker: WorkerRecord, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(worker.pid, signum)

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            worker = self._workers.pop(pid, None)
            if worker is None:  # e.g. re-parented to us as PID 1: reaped, nothing more
                logger.debug("reaped pid %d (not a worker): %s", pid, describe_status(status))
                continue
            self._metrics.reaped(worker, None if self._stopping else self._generation)
            self._wakeups.close_pipe(worker)
            self._on_exit(worker, status)

    def _on_exit(self, worker: WorkerRecord, status: int) -> None:
        cause = describe_status(status)
        if worker.killed_for is not None:
            cause = f"{cause}, {worker.killed_for}"
        if worker.replaced_by is not None:  # died before its replacement was ready
            worker.replaced_by.replaces = None
        old = worker.replaces
        if old is not None:
            old.replaced_by = None
        boot_failure = not (worker.ever_ready or worker.expected_exit or self._stopping)
        if not boot_failure:
            clean = os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
            level = logging.INFO if worker.expected_exit and clean else logging.WARNING
            logger.log(level, "%s %s (%s)", worker.label(), "exited" if clean else "died", cause)
            return  # a serving worker that crashed is replaced by _manage_workers
        failed = f"{worker.label()} failed to boot ({cause})"
        if self._reload is not None and worker.pid in self._reload.pending:
            self._abort_reload(failed)
        elif old is not None:  # a max_requests replacement: the old worker keeps serving
            old.recycle_retry_at = time.monotonic() + self._respawn_delay
            logger.error("%s; %s keeps serving for now", failed, old.label())
            self._bump_backoff()
        elif not self._ever_ready or not self._workers.serving():
            self._halt(f"{failed}; stopping")
        else:
            logger.error("%s; retrying in %.0fs", failed, self._respawn_delay)
            self._respawn_at = time.monotonic() + self._respawn_delay
            self._bump_backoff()

    def _bump_backoff(self) -> None:
        self._respawn_delay = min(self._respawn_delay * 2, RESPAWN_BACKOFF_MAX_S)

    def _check_timeouts(self) -> None:
        now = time.monotonic()
        reload = self._reload
        if reload is not None and now > reload.deadline:
            limit = boot_timeout(reload.cfg.worker_timeout)
            self._abort_reload(f"generation {reload.generation} not ready within {limit:.0f}s")
        for worker in list(self._workers.values()):
            reason = worker.overdue(now) if worker.killed_for is None else None
            if reason is not None:
                logger.error("%s %s; killing it", worker.label(), reason)
                self._force_kill(worker, reason)

    def _manage_workers(self) -> None:
        now = time.monotonic()
        for worker in list(self._workers.values()):
            if worker.generation == self._generation and worker.wants_replacement(now):
                # max_requests: fork the replacement first; the old one stops when it is ready.
                logger.info("%s reached max_requests; replacing it", worker.label())
                if (
                    self._spawn(worker.number, worker.generation, self.cfg, self._tls, worker)
                    is None
                ):
                    worker.recycle_retry_at = self._respawn_at
        current = self._workers.current(self._generation)
        missing = self._target - len(current)
        if missing > 0 and now >= self._respawn_at:
            used = {w.number for w in current}
            free = (n for n in range(1, self._target + len(used) + 1) if n not in used)
            for number in itertools.islice(free, missing):
                if self._spawn(number, self._generation, self.cfg, self._tls) is None:
                    break
        elif missing < 0:
            for worker in sorted(current, key=lambda w: w.number)[missing:]:
                self._stop_worker(worker, "fewer workers wanted")
                if worker.replaces is not None:
                    # A max_requests replacement still booting: the worker it was to
                    # replace holds the same slot; left serving, it would ask again.
                    self._stop_worker(worker.replaces, "fewer workers wanted")

    # -- metrics ------------------------------------------------------------

    def _start_metrics(self) -> None:
        """Serve /metrics on metrics_bind from this loop (scrape.py); raises BindError."""
        if self.cfg.metrics_bind is None:
            return
        from prefork.master.scrape import MetricsEndpoint  # prometheus_client: only when used

        def view() -> MasterView:
            return master_view(self._generation, self._workers.values(), self.listeners)

        collector = ServerCollector(self._metrics, view)
        self._metrics_endpoint = MetricsEndpoint(self.cfg.metrics_bind, collector, self._wakeups)
        logger.info("metrics on %s", self._metrics_endpoint.url)

    # -- stopping -----------------------------------------------------------

    def _begin_stop(self, how: Stop) -> None:
        if self._stopping is None:
            self._notify.stopping(f"stopping ({how.value}); {self._status()}")
        self._stopping = how
        self._reload = None
        self._reload_again = False
        if how is Stop.GRACEFUL:
            grace = max((w.cfg.graceful_timeout for w in self._workers.values()), default=0.0)
            self._stop_deadline = time.monotonic() + grace + STOP_MARGIN_S
        else:
            self._stop_deadline = time.monotonic() + QUIT_TIMEOUT_S
        for worker in list(self._workers.values()):
            worker.expected_exit = True
            if worker.state is WorkerState.BOOTING:
                # No handlers yet: TERM would do, but QUIT's default action dumps core.
                self._force_kill(worker, "the master is stopping")
            elif how is Stop.GRACEFUL:
                self._stop_worker(worker, "the master is stopping")
            else:
                worker.state = WorkerState.DRAINING
                self._kill(worker, signal.SIGQUIT)
        # No worker is forked from now on. Closing the master's copies of the listen
        # sockets (the draining workers close theirs) makes new clients refused at
        # once instead of queued until the last worker exits, then reset.
        for sock in self.listeners:
            sock.close()

    def _halt(self, message: str) -> None:
        """Workers cannot boot: stop everything and exit with MASTER_BOOT_FAILED."""
        logger.error(message)
        self.error = message
        self._exit_code = MASTER_BOOT_FAILED
        self._begin_stop(Stop.GRACEFUL)

    def _enforce_stop_deadline(self) -> None:
        if time.monotonic() >= self._stop_deadline:
            for worker in list(self._workers.values()):
                if worker.killed_for is None:
                    logger.warning("%s did not stop in time; killing it", worker.label())
                self._force_kill(worker, "stop deadline passed")
