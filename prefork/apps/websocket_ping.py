"""One timer for the keep-alive pings of all of a loop's WebSockets (``apps.websocket``)."""

from __future__ import annotations

import asyncio
import math
from typing import Protocol


class Pingable(Protocol):
    def ping_due(self) -> None:
        """Its ping interval has passed: send a ping (or close on a missed pong)."""


class PingWheel:
    """The keep-alive ping deadlines of one event loop's WebSockets, on one timer.

    A ``TimerHandle`` per connection costs ~550 bytes on every idle
    WebSocket; here a connection costs a set entry. Deadlines are rounded up
    to a tick (an eighth of the interval, 50 ms to 1 s), so a ping leaves at
    most one tick late.
    """

    __slots__ = ("_buckets", "_timer", "_timer_at", "loop")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._buckets: dict[float, set[Pingable]] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = math.inf

    def add(self, ws: Pingable, interval: float) -> float:
        """Call ``ws.ping_due()`` in ``interval`` seconds; returns the key for ``discard``."""
        tick = min(1.0, max(0.05, interval / 8))
        at = math.ceil((self.loop.time() + interval) / tick) * tick
        bucket = self._buckets.get(at)
        if bucket is None:
            bucket = self._buckets[at] = set()
        bucket.add(ws)
        if at < self._timer_at:
            if self._timer is not None:
                self._timer.cancel()
            self._timer = self.loop.call_at(at, self._fire)
            self._timer_at = at
        return at

    def discard(self, ws: Pingable, at: float) -> None:
        bucket = self._buckets.get(at)
        if bucket is not None:
            bucket.discard(ws)
            if not bucket:
                del self._buckets[at]

    def _fire(self) -> None:
        self._timer, self._timer_at = None, math.inf
        # uvloop's timers have millisecond resolution and may fire that early.
        now = self.loop.time() + 0.001
        for at in sorted(at for at in self._buckets if at <= now):
            for ws in self._buckets.pop(at):
                ws.ping_due()
        if self._buckets:
            at = min(self._buckets)
            self._timer = self.loop.call_at(at, self._fire)
            self._timer_at = at


_wheel: PingWheel | None = None


def ping_wheel() -> PingWheel:
    """The running loop's wheel (a worker runs one loop; tests run one at a time)."""
    global _wheel
    loop = asyncio.get_running_loop()
    if _wheel is None or _wheel.loop is not loop:
        _wheel = PingWheel(loop)
    return _wheel
