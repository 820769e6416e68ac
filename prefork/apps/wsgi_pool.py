"""The WSGI interface's thread pool: as few threads awake as keep the calls moving.

A pool whose threads all wait on one queue (``queue.SimpleQueue``) wakes
another thread for a call handed over while one runs: with a CPU-bound app
on one core, the calls then pass the GIL from thread to thread, which costs
more than it gives (measured in docs/wsgi.md: 16 threads cost 4-7 % more CPU
per Flask request than 1 or 2). Here a call handed over wakes a thread only
when none is awake, and a thread that finishes a call takes the next one
without sleeping. While calls wait, the event loop looks every
``PROGRESS_CHECK_S`` whether any call finished since it last looked; when
none did, the awake threads are stuck (a database call, a sleep, a long
computation) and it wakes one more. An app that waits on I/O so gets all of
its threads within a few milliseconds, and one that computes keeps one
thread busy instead of many.

The pool only runs what it is given (``run(job)``); the loop's side
(``submit``, the progress check) and the threads' side meet under one lock.
"""

from __future__ import annotations

import asyncio
import collections
import threading
import time
from collections.abc import Callable
from typing import Generic, TypeVar

J = TypeVar("J")

# How often the loop looks for progress while calls wait (seconds): the delay
# before an extra thread is woken for calls stuck behind blocked ones.
PROGRESS_CHECK_S = 0.001


class Pool(Generic[J]):
    """``size`` threads running ``run(job)`` for the jobs the loop submits, in order."""

    def __init__(self, size: int, run: Callable[[J], None], name: str) -> None:
        self.size = size
        self._run = run
        self._name = name
        self._jobs: collections.deque[J] = collections.deque()
        self._lock = threading.Lock()
        # One held lock per sleeping thread, released to wake it; the last
        # to fall asleep wakes first (its stack and the app's data are warm).
        self._sleepers: list[threading.Lock] = []
        self._awake = 0  # threads not sleeping: in a call, or about to take one
        self._finished = 0  # calls finished so far: the progress the loop looks for
        self._seen = 0  # ``_finished`` when the loop last looked
        self._stopping = False
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._threads: list[threading.Thread] = []

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._awake = self.size  # each falls asleep as it finds nothing to do
        for n in range(self.size):
            thread = threading.Thread(target=self._work, name=f"{self._name}-{n}", daemon=True)
            thread.start()
            self._threads.append(thread)

    # -- the loop's side ------------------------------------------------------

    def submit(self, job: J) -> None:
        """Queue ``job``; wake a thread if none is awake (else the progress check may)."""
        with self._lock:
            self._jobs.append(job)
            if self._awake == 0 and self._sleepers:
                self._wake_one()
                return
        if self._timer is None and self._loop is not None:
            self._seen = self._finished
            self._timer = self._loop.call_later(PROGRESS_CHECK_S, self._check)

    def _check(self) -> None:
        """While calls wait: wake one more thread if no call finished since the last look."""
        self._timer = None
        with self._lock:
            if not self._jobs or not self._sleepers:
                return  # nothing waits, or every thread is awake already: nothing to wake
            if self._finished == self._seen:
                self._wake_one()
        self._seen = self._finished
        assert self._loop is not None
        self._timer = self._loop.call_later(PROGRESS_CHECK_S, self._check)

    def _wake_one(self) -> None:
        """(Under ``_lock``.) Wake the thread that fell asleep last."""
        self._awake += 1
        self._sleepers.pop().release()

    def stop(self) -> None:
        """Let every thread finish the queued jobs and end (``join`` waits for them)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        with self._lock:
            self._stopping = True
            while self._sleepers:
                self._wake_one()

    def join(self, deadline: float) -> int:
        """Wait for the threads until ``deadline`` (``time.monotonic``); how many still run."""
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        busy = sum(thread.is_alive() for thread in self._threads)
        self._threads = []
        return busy

    # -- a pool thread ----------------------------------------------------------

    def _work(self) -> None:
        me = threading.Lock()
        me.acquire()
        jobs = self._jobs
        lock = self._lock
        run = self._run
        done = 0
        while True:
            with lock:
                self._finished += done
                if jobs:
                    job = jobs.popleft()
                    done = 1
                elif self._stopping:
                    self._awake -= 1
                    return
                else:
                    self._awake -= 1
                    self._sleepers.append(me)
                    done = 0
                    job = None
            if job is None:
                me.acquire()  # released by _wake_one, which counted this thread awake
                continue
            run(job)
