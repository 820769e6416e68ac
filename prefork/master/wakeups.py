"""What wakes the master: signals and its workers' pipes, on one poll selector.

Signal handlers only enqueue the signal number (no logging, no forking there);
``signal.set_wakeup_fd`` also writes a byte to a pipe the selector watches, so
a signal ends the master's wait at once and its loop then drains ``signals``.
Each worker's pipe is watched as well: a message (READY, HEARTBEAT, RECYCLE;
see worker.py) or EOF wakes the master the same way, and the master reads it.
Other fds (the metrics endpoint's, scrape.py) are watched with a callback,
which ``wait`` calls: they must never block.
"""

from __future__ import annotations

import collections
import contextlib
import os
import selectors
import signal
from collections.abc import Callable, Iterable
from typing import Any

from prefork.master.workers import WorkerRecord


class Wakeups:
    """The signal queue, its wakeup pipe and the workers' pipes, under one selector."""

    def __init__(self) -> None:
        self.signals: collections.deque[int] = collections.deque()
        self._selector = selectors.PollSelector()  # poll: no fd of its own to leak into workers
        self.wakeup_r = self.wakeup_w = -1
        self._old_handlers: dict[int, Any] = {}
        self._old_wakeup_fd = -1

    def install(self, signums: Iterable[int]) -> None:
        """Open the wakeup pipe and queue ``signums`` from now on."""
        self.wakeup_r, self.wakeup_w = os.pipe()
        os.set_blocking(self.wakeup_r, False)
        os.set_blocking(self.wakeup_w, False)
        self._selector.register(self.wakeup_r, selectors.EVENT_READ, None)
        for signum in signums:
            self._old_handlers[signum] = signal.signal(signum, self._on_signal)
        self._old_wakeup_fd = signal.set_wakeup_fd(self.wakeup_w)

    def _on_signal(self, signum: int, frame: object) -> None:
        self.signals.append(signum)  # only enqueue: no logging, no forking here

    def wait(self, timeout: float) -> list[WorkerRecord]:
        """Wait up to ``timeout`` s; returns the workers whose pipe is readable."""
        readable: list[WorkerRecord] = []
        for key, _events in self._selector.select(timeout):
            if key.data is None:
                with contextlib.suppress(BlockingIOError):
                    while os.read(self.wakeup_r, 4096):
                        pass
            elif isinstance(key.data, WorkerRecord):
                readable.append(key.data)
            else:
                key.data(_events)
        return readable

    def watch_fd(self, fd: int, events: int, callback: Callable[[int], None]) -> None:
        """Call ``callback(events)`` from ``wait`` when ``fd`` is ready."""
        self._selector.register(fd, events, callback)

    def modify_fd(self, fd: int, events: int, callback: Callable[[int], None]) -> None:
        self._selector.modify(fd, events, callback)

    def unwatch_fd(self, fd: int) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(fd)

    def watch(self, worker: WorkerRecord) -> None:
        self._selector.register(worker.pipe_r, selectors.EVENT_READ, worker)

    def unwatch(self, worker: WorkerRecord) -> None:
        if worker.pipe_r >= 0:
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(worker.pipe_r)

    def close_pipe(self, worker: WorkerRecord) -> None:
        if worker.pipe_r >= 0:
            self.unwatch(worker)
            os.close(worker.pipe_r)
            worker.pipe_r = -1

    def restore_signals(self) -> None:
        """The signal dispositions and wakeup fd from before ``install``."""
        if self._old_handlers:
            signal.set_wakeup_fd(self._old_wakeup_fd)
            for signum, handler in self._old_handlers.items():
                signal.signal(signum, handler)
            self._old_handlers.clear()

    def close(self) -> None:
        self._selector.close()
        for fd in (self.wakeup_r, self.wakeup_w):
            if fd >= 0:
                os.close(fd)
        self.wakeup_r = self.wakeup_w = -1
