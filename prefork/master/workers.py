"""The master's record of each worker, and the fork that starts one.

A ``WorkerRecord`` is what the master knows of a child, as in a process table:
its pid, its pipe, when it was last heard from, where it is in its life
(``WorkerState``), whether it replaces another or is being replaced. It lives
in the master only. The child's own runtime (its loop, its connections, its
drain) is ``prefork.worker.Worker``, built in the master and run by ``fork`` in
the child; nothing of the one is written by the other process.
"""

from __future__ import annotations

import contextlib
import enum
import gc
import os
import signal
import sys
import time

from prefork.config import Config
from prefork.worker import MASTER_SIGNALS, STOP_MARGIN_S, WORKER_CRASHED, Worker, boot_timeout


class WorkerState(enum.Enum):
    """A worker's life cycle, as the master tracks it (from the pipe and its own signals)."""

    BOOTING = "booting"
    SERVING = "serving"
    DRAINING = "draining"


class WorkerRecord:
    """One worker, as the master sees it."""

    def __init__(
        self, cfg: Config, number: int, generation: int, pid: int = 0, pipe_r: int = -1
    ) -> None:
        """A worker forked just now as ``pid``; ``pipe_r``: the master's end of its pipe."""
        self.cfg = cfg  # the config it was started with (its timeouts)
        self.number = number
        self.generation = generation
        self.state = WorkerState.BOOTING
        self.pid = pid
        self.pipe_r = pipe_r
        self.started = self.last_seen = time.monotonic()
        self.stopping_since = 0.0
        self.ever_ready = False
        self.expected_exit = False  # stopped on purpose: its death is not a failure
        self.killed_for: str | None = None  # why the master SIGKILLed it
        self.replaces: WorkerRecord | None = None  # stopped once this one is ready
        self.replaced_by: WorkerRecord | None = None
        self.recycle = False  # asked to be replaced (max_requests)
        self.recycle_retry_at = 0.0

    def label(self) -> str:
        return f"worker {self.number} (pid {self.pid}, gen {self.generation})"

    def overdue(self, now: float) -> str | None:
        """Why this worker must be killed now, if it must (the watchdog)."""
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
        """Past max_requests, serving, and no replacement booting yet."""
        return (
            self.recycle
            and self.replaced_by is None
            and self.state is WorkerState.SERVING
            and now >= self.recycle_retry_at
        )


class WorkerTable(dict[int, WorkerRecord]):
    """The master's workers by pid, and the questions it asks of all of them."""

    def serving(self, generation: int | None = None) -> int:
        """How many serve (of ``generation``, or of any)."""
        return sum(
            1
            for w in self.values()
            if w.state is WorkerState.SERVING and (generation is None or w.generation == generation)
        )

    def current(self, generation: int) -> list[WorkerRecord]:
        """The workers that fill ``generation``'s slots: neither draining nor being replaced."""
        return [
            w
            for w in self.values()
            if w.generation == generation
            and w.state is not WorkerState.DRAINING
            and w.replaced_by is None
        ]

    def pipes(self) -> list[int]:
        """The master's ends of the workers' pipes (a new child closes them)."""
        return [w.pipe_r for w in self.values() if w.pipe_r >= 0]


def fork(worker: Worker) -> int:
    """Fork a child that runs ``worker`` and exits with its code; the child's pid.

    Raises OSError (EAGAIN, ENOMEM) when the system refuses; the child never
    returns into the master's code.
    """
    flush_std_streams()  # or the child would write the master's buffered output again
    # What the master holds goes to the GC's permanent generation: a worker's
    # collections then never write to those objects' headers, so the pages it
    # shares with the master stay shared instead of being copied on write.
    gc.freeze()
    # Signals wait until the child has put its own dispositions in place
    # (Worker.run unblocks them); until then the master's handlers would run
    # in the child and the signal would be lost.
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, MASTER_SIGNALS)
    try:
        pid = os.fork()
    except OSError:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        raise
    if pid == 0:
        code = WORKER_CRASHED
        try:
            code = worker.run()
        finally:
            flush_std_streams()
            os._exit(code)
    signal.pthread_sigmask(signal.SIG_SETMASK, mask)
    return pid


def flush_std_streams() -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
