"""Accepting connections for one worker, under its two caps.

The listen sockets are shared by every worker. A worker takes a
slot *before* it accepts, and at a cap it removes the listen fds from its loop,
so excess connections wait in the kernel's listen queue for any worker with a
free slot: nothing is refused. Two caps (docs/slow-clients.md):
``connection_limit`` counts what costs, the connections with a request in
progress (idle keep-alive ones and clients still sending are cheap), and
``open_connection_limit`` counts every open connection. While at a cap, the
worker looks every ``PRESSURE_CHECK_S`` whether a slot freed and, at the open
cap with clients queued, closes connections that wait for a request
(``Shared.reclaim``). Out-of-resource accept errors (EMFILE, ENFILE, ENOBUFS,
ENOMEM) pause accepting for ``ACCEPT_BACKOFF_S`` instead of spinning on a
readable fd, logged once per episode.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import socket
import sys
from collections.abc import Sequence

from prefork import log
from prefork.config import Config
from prefork.engine.serve import serve_connection
from prefork.engine.shared import Shared

logger = logging.getLogger(log.WORKER)

ACCEPT_BACKOFF_S = 0.1  # pause after EMFILE/ENFILE/ENOBUFS/ENOMEM from accept()
# While at a cap: how often the worker looks for a free slot (a request finished
# without its connection closing frees a connection_limit slot, and nothing
# wakes the accept loop for that) and for queued clients to reclaim slots for.
PRESSURE_CHECK_S = 0.05
# How long a count of the connections at work is reused (Acceptor._free_slots).
COSTLY_RECOUNT_S = 0.01
# At most this many connections reclaimed per check (nginx frees 32 at a time).
RECLAIM_MAX = 32
# Accepts per wake-up of a listen fd, bounded by the free slots. Usually
# ACCEPT_BATCH_MIN, so the siblings (woken by the same connections) get some.
# When the queue holds more, as in a reconnect storm (1,000 keep-alive clients
# reaching requests_per_connection together), a worker takes its share,
# ceil(queued / workers), up to ACCEPT_BATCH_MAX: at 16 a wake-up, 1,000
# connections waited ~60 loop turns, ~100 ms at that load, before their first
# read; 256 accepts cost ~4 ms, about one such turn.
ACCEPT_BATCH_MIN = 16
ACCEPT_BATCH_MAX = 256
_RESOURCE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


class _AcceptedV4(socket.socket):
    """An accepted IPv4 socket whose family and type are constants.

    ``socket.socket.accept`` and uvloop's ``connect_accepted_socket`` read
    ``family`` and ``type`` through properties that turn ints into enums each
    time (three conversions per connection); here they are class attributes.
    """

    __slots__ = ()
    family = socket.AF_INET
    type = socket.SOCK_STREAM


class _AcceptedV6(socket.socket):
    """An accepted IPv6 socket; see :class:`_AcceptedV4`."""

    __slots__ = ()
    family = socket.AF_INET6
    type = socket.SOCK_STREAM


_ACCEPTED = {socket.AF_INET: _AcceptedV4, socket.AF_INET6: _AcceptedV6}
_TCP_INFO = getattr(socket, "TCP_INFO", None)  # Linux
_TCP_LISTEN = 10  # tcpi_state of a listening socket (TCP_LISTEN in the kernel)


def accept_queue_length(listener: socket.socket) -> int | None:
    """How many connections wait in a listening TCP socket's accept queue; None if unknown.

    On Linux, ``TCP_INFO`` of a listening socket reports the queue length as
    ``tcpi_unacked`` (bytes 24..28). Asking costs about 0.6 us here; an
    ``accept()`` on an empty queue costs 4.6 us (the kernel allocates the new
    socket and file before it looks at the queue), so the accept loop asks
    instead of accepting until EAGAIN.
    """
    if _TCP_INFO is None:
        return None
    try:
        info = listener.getsockopt(socket.IPPROTO_TCP, _TCP_INFO, 32)
    except OSError:
        return None
    if len(info) < 28 or info[0] != _TCP_LISTEN:
        return None
    return int.from_bytes(info[24:28], sys.byteorder)


class Acceptor:
    """Accepts on the worker's listen sockets and starts a connection task for each."""

    def __init__(
        self,
        cfg: Config,
        listeners: Sequence[socket.socket],
        loop: asyncio.AbstractEventLoop,
        shared: Shared,
    ) -> None:
        self.cfg = cfg
        self.listeners = tuple(listeners)
        self._loop = loop
        self._state = shared
        # Every accepted connection has a task (also one whose TLS handshake runs).
        self.active = 0
        self.tasks: set[asyncio.Task[None]] = set()
        self._accepting = False
        self._stopped = False
        self._backoff: asyncio.TimerHandle | None = None
        self._pressure: asyncio.TimerHandle | None = None
        # Connections at work (beyond connection_limit only; see _free_slots).
        self._costly = 0
        self._costly_until = 0.0
        # The current out-of-resources episode of accept(): failures and its start.
        self._starved = 0
        self._starved_since = 0.0
        # Per listener fd: does TCP_INFO give its queue length (asked once, at first arming)?
        self._queue_known: dict[int, bool] = {}

    def start(self) -> None:
        self._resume_accepting()

    def stop(self) -> None:
        """Accept no more (the worker drains)."""
        self._stopped = True
        self._pause_accepting()
        for timer in (self._backoff, self._pressure):
            if timer is not None:
                timer.cancel()
        self._backoff = self._pressure = None

    def _free_slots(self, recount: bool = False) -> int:
        """Connections this worker may accept now, under both caps."""
        cfg = self.cfg
        active = self.active
        free = cfg.open_connection_limit - active
        room = cfg.connection_limit - active  # as if every connection cost
        if room > 0:
            return min(free, room)
        # Beyond connection_limit only: count those at work. The count walks
        # every connection, so it is reused for COSTLY_RECOUNT_S (under an
        # accept storm, one walk per wake-up was the worker's biggest cost);
        # what was accepted since counts as at work until the next count.
        now = self._loop.time()
        if recount or now >= self._costly_until:
            self._costly = active - self._state.waiting_connections()
            self._costly_until = now + COSTLY_RECOUNT_S
        return min(free, cfg.connection_limit - self._costly)

    def _resume_accepting(self) -> None:
        if self._accepting or self._stopped:
            return
        if self._backoff is not None:
            return
        if self._free_slots() <= 0:
            self._watch_pressure()
            return
        for sock in self.listeners:
            fd = sock.fileno()
            wrap = _ACCEPTED.get(sock.family, socket.socket)
            known = self._queue_known.get(fd)
            if known is None:
                known = self._queue_known[fd] = accept_queue_length(sock) is not None
            self._loop.add_reader(fd, self._on_readable, sock, wrap, int(sock.family), known)
        self._accepting = True

    def _pause_accepting(self) -> None:
        if not self._accepting:
            return
        for sock in self.listeners:
            self._loop.remove_reader(sock.fileno())
        self._accepting = False

    def _on_readable(
        self, listener: socket.socket, wrap: type[socket.socket], family: int, known: bool
    ) -> None:
        free = self._free_slots()
        if free <= 0:
            self._pause_accepting()
            self._watch_pressure()
            return
        if known:
            # Accept what is queued, not until EAGAIN. 0 means a sibling took it
            # (or the count is off): one accept() then, so a readable listener
            # is never left alone (level-triggered: it would spin).
            queued = accept_queue_length(listener) or 1
            share = min(max(-(-queued // self.cfg.workers), ACCEPT_BATCH_MIN), ACCEPT_BATCH_MAX)
            batch = min(free, queued, share)
        else:
            batch = min(free, ACCEPT_BATCH_MIN)
        for _ in range(batch):
            try:
                # The fd and the peer address; socket.accept() would also build the
                # socket through enum conversions (a measurable share of S3).
                fd, addr = listener._accept()  # type: ignore[attr-defined]
            except (BlockingIOError, InterruptedError):
                break  # a sibling took it, or the queue is empty
            except OSError as exc:
                if exc.errno in _RESOURCE_ERRNOS:
                    self._note_starved(exc.errno or 0)
                    self._pause_accepting()
                    self._backoff = self._loop.call_later(ACCEPT_BACKOFF_S, self._end_backoff)
                    return
                # ECONNABORTED and friends: that one connection is gone; try the next.
                logger.debug("accept() failed: %s", exc)
                continue
            if self._starved:
                self._end_starved()
            # No setblocking(): uvloop makes the fd non-blocking when it opens the transport.
            conn = wrap(family, socket.SOCK_STREAM, 0, fd)
            self.active += 1
            self._costly += 1
            task = self._loop.create_task(serve_connection(conn, self._state, addr))
            self.tasks.add(task)
            task.add_done_callback(self._on_connection_done)
        if self.active >= self.cfg.connection_limit and self._free_slots() <= 0:
            self._pause_accepting()
            self._watch_pressure()

    def _watch_pressure(self) -> None:
        """At a cap: look again in PRESSURE_CHECK_S (once armed, one timer at a time)."""
        if self._pressure is None and self._loop is not None:
            self._pressure = self._loop.call_later(PRESSURE_CHECK_S, self._check_pressure)

    def _check_pressure(self) -> None:
        """Resume accepting if a slot freed; at the open cap, reclaim slots for queued clients."""
        self._pressure = None
        if self._stopped or self._accepting:
            return
        if self._free_slots(recount=True) > 0:
            self._resume_accepting()
            return
        if self.active >= self.cfg.open_connection_limit:
            queued = sum(accept_queue_length(sock) or 0 for sock in self.listeners)
            if queued:
                self._state.reclaim(min(queued, RECLAIM_MAX))
        self._watch_pressure()

    def _note_starved(self, err: int) -> None:
        """One accept() failed for lack of resources: logged once per episode."""
        if not self._starved:
            self._starved_since = self._loop.time()
            logger.error(
                "accept() out of resources (%s): retrying every %.1fs until it clears",
                os.strerror(err),
                ACCEPT_BACKOFF_S,
            )
        self._starved += 1

    def _end_starved(self) -> None:
        logger.warning(
            "accept() works again after %.1fs out of resources (%d failed attempt(s))",
            self._loop.time() - self._starved_since,
            self._starved,
        )
        self._starved = 0

    def _end_backoff(self) -> None:
        self._backoff = None
        self._resume_accepting()

    def _on_connection_done(self, task: asyncio.Task[None]) -> None:
        self.tasks.discard(task)
        self.active -= 1
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            logger.error("connection task failed", exc_info=exc)
        self._resume_accepting()
