"""Unit-test helpers shared by several files.

record(): a worker record (test_master.py, test_worker.py); snapshot(): a request's
fields as a dict (test_protocol.py, test_parsers.py).
"""

from __future__ import annotations

from typing import Any

from prefork.config import Config
from prefork.master.workers import WorkerRecord, WorkerState


def record(number: int, state: WorkerState = WorkerState.BOOTING, **cfg: Any) -> WorkerRecord:
    """The master's record of an imaginary worker, with a made-up pid."""
    worker = WorkerRecord(Config.build({"port": 0, **cfg}), number, 1)
    worker.pid = 10_000 + number  # never signalled: test_master.py replaces Master._kill
    worker.state = state
    worker.ever_ready = state is not WorkerState.BOOTING
    return worker


def snapshot(r: Any) -> dict[str, Any]:
    """A request's fields as a dict, to compare requests from two readers or backends."""
    return {
        "method": r.method,
        "target": r.target,
        "path": r.path,
        "query": r.query,
        "version": r.version,
        "headers": r.headers,
        "body": r.body,
        "keep_alive": r.keep_alive,
    }
