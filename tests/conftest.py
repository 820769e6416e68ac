"""Shared test helpers: wait_until, free ports; the hypothesis profile."""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable, Iterator

import pytest
from hypothesis import HealthCheck, settings

# Property tests check answers, not speed: no per-example deadline, which a busy
# machine (CI, a parallel suite) would miss and report as a failure.
settings.register_profile("prefork", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("prefork")


def wait_until(
    predicate: Callable[[], object], timeout: float = 10.0, interval: float = 0.02
) -> object:
    """Poll ``predicate`` until it returns a truthy value; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s: {predicate!r}")
        time.sleep(interval)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(autouse=True)
def _prefork_logs_reach_caplog() -> Iterator[None]:
    """``prefork.log.setup()`` (called by ``prefork.new`` in some tests) stops
    prefork's loggers from propagating, which would hide their records from
    ``caplog`` in every later test: restore propagation after each test."""
    yield
    logging.getLogger("prefork").propagate = True
