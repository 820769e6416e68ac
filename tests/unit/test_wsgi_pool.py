"""The WSGI thread pool (``apps.wsgi_pool``) with real threads and a real event loop."""

from __future__ import annotations

import asyncio
import threading
import time

import uvloop

from prefork.apps.wsgi_pool import Pool

THREADS = 16


def _serve(submit_jobs: object, threads: int = THREADS) -> tuple[list[int], set[str], int]:
    """Run ``submit_jobs(pool, record)`` on a loop; what ran, on which threads, and still busy."""
    ran: list[int] = []
    names: set[str] = set()
    finished = threading.Event()

    def record(job: tuple[int, float, int]) -> None:
        number, sleep_s, total = job
        if sleep_s:
            time.sleep(sleep_s)
        names.add(threading.current_thread().name)
        ran.append(number)
        if len(ran) == total:
            finished.set()

    async def main() -> int:
        pool: Pool[tuple[int, float, int]] = Pool(threads, record, "test-pool")
        pool.start(asyncio.get_running_loop())
        await submit_jobs(pool)  # type: ignore[operator]
        while not finished.is_set():  # bounded by the test's own timeout below
            await asyncio.sleep(0.001)
        pool.stop()
        return await asyncio.to_thread(pool.join, time.monotonic() + 5.0)

    busy = uvloop.run(asyncio.wait_for(main(), 30))
    return ran, names, busy


def test_short_calls_handed_over_while_one_runs_keep_to_few_threads() -> None:
    # Requests trickle in: the loop hands a call over every 0.1 ms while the
    # last one still runs (0.2 ms each). A pool whose threads all wait on one
    # SimpleQueue wakes a thread for each of those hand-offs, and the calls
    # spread over all 16 threads (measured: 16 of 16, every run); this one
    # wakes no thread while one is awake and calls keep finishing.
    total = 400

    async def submit(pool: Pool[tuple[int, float, int]]) -> None:
        for n in range(total):
            pool.submit((n, 0.0002, total))
            await asyncio.sleep(0.0001)

    ran, names, busy = _serve(submit)
    assert sorted(ran) == list(range(total))
    assert len(names) <= THREADS // 4, names  # (1 or 2 here; room for a busy machine)
    assert busy == 0


def test_blocked_calls_get_more_threads() -> None:
    # Eight calls that wait 300 ms (a database call): no call finishes for a
    # while, so the pool wakes a thread per millisecond until all eight run.
    total = 8
    started = time.monotonic()

    async def submit(pool: Pool[tuple[int, float, int]]) -> None:
        for n in range(total):
            pool.submit((n, 0.3, total))

    ran, names, busy = _serve(submit)
    elapsed = time.monotonic() - started
    assert sorted(ran) == list(range(total))
    assert len(names) == total  # all at once: eight threads
    assert elapsed < 0.3 * total / 2, elapsed  # one after another would take 2.4 s
    assert busy == 0


def test_stop_runs_what_is_queued_then_ends_the_threads() -> None:
    total = 50
    ran: list[int] = []

    async def main() -> int:
        pool: Pool[int] = Pool(2, ran.append, "test-pool")
        pool.start(asyncio.get_running_loop())
        for n in range(total):
            pool.submit(n)
        pool.stop()
        return await asyncio.to_thread(pool.join, time.monotonic() + 5.0)

    busy = uvloop.run(asyncio.wait_for(main(), 30))
    assert busy == 0
    assert sorted(ran) == list(range(total))
