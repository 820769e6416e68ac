"""Responses written together: one ``WriteBatch`` per worker, owned by the engine.

A peer on the same host (a proxy in front, a sidecar, a load generator) is
woken once for a batch of responses rather than once per response; waking it
costs the writer's CPU more than the write (measured: +6 % req/s in S1). Only
the connection decides what joins the batch (``Connection.write_response``),
and every other write, close or abort on any connection flushes the batch
first, so bytes and closes happen in the order they were asked for.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Final

from prefork import log

logger = logging.getLogger(log.WORKER)

# Writes go out at the end of the loop turn, or once this many wait.
WRITE_BATCH: Final = 16
# An app that answers within this many seconds of the request may have its
# response batched (Connection.write_response): after a slow one, the batch
# would hold its neighbours' responses back.
QUICK_HANDLER_S: Final = 0.0002


class WriteBatch:
    """Writes deferred to the end of the loop turn, in order."""

    __slots__ = ("_loop", "_scheduled", "pending")

    def __init__(self) -> None:
        # transport, data, transport, data, ... (one flat list: no tuple per write)
        self.pending: list[Any] = []
        self._scheduled = False
        self._loop: asyncio.AbstractEventLoop | None = None

    def add(self, transport: Any, data: bytes) -> None:
        """Write ``data`` on ``transport`` at the end of this loop turn (or with the batch)."""
        out = self.pending
        out.append(transport)
        out.append(data)
        if len(out) >= 2 * WRITE_BATCH:
            self.flush()
        elif not self._scheduled:
            self._scheduled = True
            loop = self._loop
            if loop is None:
                loop = self._loop = asyncio.get_running_loop()
            loop.call_soon(self._scheduled_flush)

    def _scheduled_flush(self) -> None:
        self._scheduled = False
        self.flush()

    def flush(self) -> None:
        """Write what waits, in order; a transport closed meanwhile is skipped."""
        out = self.pending
        if not out:
            return
        self.pending = []
        pairs = iter(out)
        for transport, data in zip(pairs, pairs, strict=True):
            if not transport.is_closing():
                try:
                    transport.write(data)
                except (OSError, RuntimeError) as exc:  # its connection_lost follows
                    logger.debug("a batched response could not be written: %s", exc)
