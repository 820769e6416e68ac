"""Unit-test helpers shared by test_master.py and test_worker.py: record(), a worker record."""

from __future__ import annotations

from typing import Any

from prefork.config import Config
from prefork.worker import Worker, WorkerState


def record(number: int, state: WorkerState = WorkerState.BOOTING, **cfg: Any) -> Worker:
    """The master's record of an imaginary worker: a Worker never run, with a made-up pid."""
    worker = Worker(Config.build({"port": 0, **cfg}), "app:handle", [], None, number, 1, -1, [])
    worker.pid = 10_000 + number  # never signalled: test_master.py replaces Master._kill
    worker.state = state
    worker.ever_ready = state is not WorkerState.BOOTING
    return worker
