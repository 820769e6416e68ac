"""How a connection ends: its deadlines, its closes, and the slow-client rules.

``Lifecycle`` is the base of ``connection.Connection`` (the one class app
interfaces and handlers see): what a connection does when time passes rather
than when bytes arrive. It keeps the connection's one deadline (``deadline``
and ``deadline_kind``, which the worker's sweeper in ``shared`` watches, calling
``on_deadline`` once it has passed), closes (``graceful_close``: half-close,
then linger; ``close_after_response``; ``abort``), and applies the slow-client
rules the sweeper asks for (docs/slow-clients.md): ``check_rate``, the minimum
transfer rate; ``close_if_quiet``, the server closes a connection waiting for
a request only once its client has been quiet; ``waiting_for_client``, what
``connection_limit`` does not count.

Reading requests and writing responses are ``Connection``'s; the members this
class uses from there are declared below, for the type checker only.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import Callable
from typing import Final

from prefork import log
from prefork.engine.shared import Deadline, Shared, below_min_rate
from prefork.engine.sockinfo import held_back, unread_bytes
from prefork.errors import ProtocolError
from prefork.http.protocol import RequestReader

logger = logging.getLogger(log.WORKER)

# How long a closing connection keeps reading (and discarding) after it half-closed,
# so that a client still sending does not get a reset instead of our response
# (RFC 9112 §9.6).
LINGER_S: Final = 2.0
# A connection waiting for a request is closed by the server (drain, reclaim at
# the open-connection cap) only once it has waited this long: a client that
# just got a response and is sending its next request right now would see the
# close under that request (docs/slow-clients.md, "Closing without losing a
# request").
QUIET_S: Final = 1.0


class Phase(enum.Enum):
    """Where a connection is in its life: whether a request is being answered, whether
    its coroutine is parked waiting for bytes, whether it closes.

    The first four follow each other for every request; CLOSING is entered from
    any of them (a response said "close", a deadline passed, the peer went) and
    never left. What is orthogonal to the phase stays a flag: where bytes that
    arrive go (``_reading``: the parser, or ``_pending`` while a request is
    answered), reading or writing paused, the peer's EOF (``_eof``) and the
    transport's loss (``_lost``: it can come in any phase, and a connection lost
    without a close is not ``closing``).
    """

    # The coroutine (``receive_request``) runs, looking for the next request.
    RECEIVING = "receiving"
    # Parked in ``receive_request`` until bytes arrive: an idle keep-alive
    # connection, or a request still arriving.
    WAITING = "waiting"
    # A request answered while the coroutine is parked: from ``data_received``
    # (``AppInterface.inline``), or handed over until the coroutine runs.
    INLINE = "inline"
    # The coroutine answers a request (the app interface's ``exchange``).
    HANDLING = "handling"
    # A close was asked for: half-closed and lingering, or closed.
    CLOSING = "closing"


# The hot paths compare with these (a global, not an attribute of the enum class).
# One Final name each (not an unpacking): a compiled build reads them as constants.
RECEIVING: Final = Phase.RECEIVING
WAITING: Final = Phase.WAITING
INLINE: Final = Phase.INLINE
HANDLING: Final = Phase.HANDLING
CLOSING: Final = Phase.CLOSING


class Lifecycle(asyncio.Protocol):
    """A connection's deadlines, closes and slow-client rules (``Connection``'s base)."""

    # Slots (no per-instance __dict__), the rest are Connection's.
    __slots__ = (
        "_error",
        "_on_drain",
        "_phase",
        "_rx_at",
        "_rx_bytes",
        "_tx_at",
        "_tx_mark",
        "count",
        "deadline",
        "deadline_kind",
    )

    # Connection's, used here.
    transport: asyncio.Transport | None
    shared: Shared
    reader: RequestReader
    client_ip: str
    _loop: asyncio.AbstractEventLoop
    _waiter: asyncio.Future[None] | None
    _pending: bytes
    _lost: bool
    _eof: bool

    # Connection's, called here: declared as methods it overrides (not under
    # TYPE_CHECKING: mypyc compiles no statements in a class body).
    def _resume_reading(self) -> None:
        raise NotImplementedError

    def reply_error_and_close(self, exc: ProtocolError) -> int:
        raise NotImplementedError

    def reject(self, exc: ProtocolError) -> None:
        raise NotImplementedError

    def __init__(self) -> None:
        self._phase = RECEIVING
        self._error: ProtocolError | None = None  # the request failed: answered with its status
        self.deadline = 0.0
        self.deadline_kind = Deadline.NONE
        # The rate rule (``too_slow``): since when a request has been arriving
        # in pieces and how many bytes came (0.0: no request arriving); since
        # when the client has held a response back and how many bytes it had
        # acknowledged then.
        self._rx_at = 0.0
        self._rx_bytes = 0
        self._tx_at = 0.0
        self._tx_mark = 0
        self._on_drain: Callable[[], None] | None = None
        self.count = 0  # requests begun on this connection (count_request)

    # -- the deadline -------------------------------------------------------

    def _set_deadline(self, kind: Deadline, seconds: float) -> None:
        self.deadline_kind = kind
        self.deadline = self._loop.time() + seconds

    def _clear_deadline(self) -> None:
        self.deadline_kind = Deadline.NONE
        self.deadline = 0.0
        self._rx_at = 0.0

    def _note_received(self, n: int) -> None:
        """``n`` bytes of a request that is not complete yet: what the rate rule counts."""
        if not self._rx_at:
            self._rx_at = self._loop.time()
            self._rx_bytes = 0
        self._rx_bytes += n

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _flush_batch(self) -> None:
        """Write the responses batched so far (``Shared.batch``, by ``write_response``).

        Every other write, close or abort on any connection calls this first,
        so bytes and closes happen in the order they were asked for.
        """
        batch = self.shared.batch
        if batch.pending:
            batch.flush()

    def on_deadline(self) -> None:
        """Called by the sweeper when ``deadline`` has passed."""
        kind = self.deadline_kind
        self._clear_deadline()
        if kind is Deadline.HEADER and not self.reader.head_started and not self.reader.in_body:
            # A connection that never started a request is closed without a response.
            logger.debug("closing a silent connection from %s", self.client_ip)
            self.shared.access.slow_closed("header")
            self.reader.feed_failed()
            self._close_transport()
            self._wake()
        elif kind is Deadline.HEADER or kind is Deadline.BODY:
            what = "head" if kind is Deadline.HEADER else "body"
            logger.debug("request %s timeout from %s", what, self.client_ip)
            self.shared.access.slow_closed(what if what == "body" else "header")
            self._fail_request(f"request {what} timeout")
        elif kind is Deadline.WRITE:
            transport = self.transport
            if (
                self._phase is CLOSING
                and transport is not None
                and not transport.get_write_buffer_size()
            ):
                self._set_deadline(Deadline.LINGER, LINGER_S)  # flushed meanwhile
            else:
                logger.debug("response write timeout to %s", self.client_ip)
                self.shared.access.slow_closed("write")
                self.abort()
        elif kind is Deadline.IDLE and unread_bytes(self.transport):
            # Idle for keepalive_idle_timeout, but a request came in just now
            # (this loop turn reads it): serve it rather than close under it.
            self._set_deadline(Deadline.IDLE, QUIET_S)
        else:  # IDLE, LINGER
            self._close_transport()

    def _fail_request(self, reason: str) -> None:
        """408 for the request being received (too slow); the connection closes."""
        self._clear_deadline()
        self._error = ProtocolError(408, reason)
        self.reader.feed_failed()
        if self._waiter is not None:
            self._wake()  # the coroutine answers it (and logs it as a request)
        else:
            self.reject(self._error)

    # -- slow clients: the rate rule, reclaiming, draining ------------------
    # (docs/slow-clients.md; the sweeper in ``shared`` calls these.)

    def too_slow(self, now: float, rate: float, grace: float) -> bool:
        """Has this connection's request or response fallen below ``rate`` (the rate rule)?

        Each byte buys ``1 / rate`` seconds on top of ``grace`` (mod_reqtimeout's
        MinRate), counted from the first byte of the request, or from when the
        client was first seen holding a response back.
        """
        kind = self.deadline_kind
        if kind is Deadline.HEADER or kind is Deadline.BODY:
            since = self._rx_at
            return bool(since) and below_min_rate(now - since, self._rx_bytes, rate, grace)
        if kind is Deadline.IDLE or kind is Deadline.WRITE:
            return self._holds_back_too_long(now, rate, grace)
        return False

    def _holds_back_too_long(self, now: float, rate: float, grace: float) -> bool:
        progress = None if self._lost else held_back(self.transport)
        if progress is None:
            return False
        held, acked = progress
        if not held:
            self._tx_at = 0.0
        elif not self._tx_at:
            self._tx_at = now
            self._tx_mark = acked
        else:
            return below_min_rate(now - self._tx_at, acked - self._tx_mark, rate, grace)
        return False

    def check_rate(self, now: float, rate: float, grace: float) -> None:
        """Cut this connection if it is ``too_slow``: 408 for a request, a reset for a
        response (as their timeouts do); one line at info with the client's address."""
        if not self.too_slow(now, rate, grace):
            return
        kind = self.deadline_kind
        if kind is Deadline.HEADER or kind is Deadline.BODY:
            what = "head" if kind is Deadline.HEADER else "body"
            logger.info(
                "%s: request %s too slow (%d bytes in %.1fs, min_transfer_rate %d B/s): 408",
                self.client_ip,
                what,
                self._rx_bytes,
                now - self._rx_at,
                rate,
            )
            self.shared.access.slow_closed(what if what == "body" else "header")
            self._fail_request(f"request {what} too slow")
        else:
            logger.info(
                "%s: response read too slowly (held back for %.1fs, below min_transfer_rate"
                " %d B/s): closing",
                self.client_ip,
                now - self._tx_at,
                rate,
            )
            self.shared.access.slow_closed("write")
            self.abort()

    @property
    def waiting_for_client(self) -> bool:
        """No request of this connection is being served: it waits for the client
        (idle, or a request still arriving). Such connections are cheap and do not
        count towards ``connection_limit``."""
        phase = self._phase
        return (phase is WAITING or phase is RECEIVING) and self.deadline_kind is not Deadline.WRITE

    def waiting_since(self) -> float | None:
        """When this connection started waiting for a request that has not begun to
        arrive (idle keep-alive, or fresh and silent); None if it is not such a one."""
        phase = self._phase
        if not (phase is WAITING or phase is RECEIVING) or self._rx_at:
            return None
        kind = self.deadline_kind
        if kind is Deadline.IDLE:
            return self.deadline - self.shared.keepalive_idle_timeout
        if kind is Deadline.HEADER and not self.count and not self.reader.head_started:
            return self.deadline - self.shared.request_header_timeout
        return None

    def close_if_quiet(self, now: float, quiet: float = QUIET_S) -> bool:
        """Close this connection if it has waited ``quiet`` seconds for a request that
        has not begun, and nothing unread is in the kernel; True if it was closed.

        A client that waited this long is not sending, so the close does not
        cross a request in flight (for one that is, the next response carries
        ``Connection: close`` instead).
        """
        since = self.waiting_since()
        if since is None or now - since < quiet or unread_bytes(self.transport):
            return False
        if self.count:
            self.graceful_close()
        else:  # never sent a byte: as the header deadline does, no response
            self.reader.feed_failed()
            self._close_transport()
            self._wake()
        return True

    def count_request(self) -> int:
        """One more request on this connection (``count``); the count before it.

        Counts up to Shared.counts's length are its shared int objects, not
        new ones per request (see Shared.counts)."""
        count = self.count
        nxt = count + 1
        counts = self.shared.counts
        self.count = counts[nxt] if nxt < len(counts) else nxt
        return count

    def begin_drain(self, now: float) -> None:
        """The worker is stopping: the next response says ``Connection: close``
        (``Shared.draining``); a connection waiting for a request closes once
        it has been quiet for ``QUIET_S`` (the sweeper asks again until then).
        A handler that took the connection over (a WebSocket) hears it through
        the ``on_drain`` callback it registered."""
        callback = self._on_drain
        if callback is not None:
            self._on_drain = None
            callback()
            return
        self.close_if_quiet(now)

    def on_drain(self, callback: Callable[[], None] | None) -> None:
        """Have ``callback`` called when the worker starts to stop (at once if it has).

        For a handler that took the connection over (a WebSocket), which the
        drain cannot simply close between two responses.
        """
        self._on_drain = callback
        if callback is not None and self.shared.draining:
            self._on_drain = None
            self._loop.call_soon(callback)

    # -- closing --------------------------------------------------------------

    def close_after_response(self, asked: bool) -> None:
        """Close once the response is out; ``asked``: the client asked to close.

        A client that asked to close sends nothing more, so with nothing
        unread (and the response already handed to the kernel) a plain close
        sends a FIN, not a reset, and skips the half-close, the linger and the
        wait for the client's FIN.
        """
        transport = self.transport
        if (
            asked
            and transport is not None
            and not transport.get_write_buffer_size()
            and not self.reader.buffered
            and not self.reader.requests
            and not self._pending
        ):
            self._close_transport()
            self._wake()
        else:
            self.graceful_close()

    def graceful_close(self) -> None:
        """Half-close, keep reading for a moment, then close (no reset for a late request)."""
        if self._phase is CLOSING or self.transport is None:
            return
        self._flush_batch()
        self._phase = CLOSING
        self._resume_reading()
        transport = self.transport
        if transport.can_write_eof() and not self._eof and not self._lost:
            try:
                transport.write_eof()  # sent once the buffered response is flushed
            except (OSError, RuntimeError):
                self._close_transport()
                return
            if transport.get_write_buffer_size() > 0:
                # The last response is still going out: the client must keep
                # reading it (re-armed on progress), then the linger starts.
                self._set_deadline(Deadline.WRITE, self.shared.response_write_timeout)
            else:
                self._set_deadline(Deadline.LINGER, LINGER_S)
        else:
            self._close_transport()
        self._wake()

    def _close_transport(self) -> None:
        self._flush_batch()
        self._phase = CLOSING
        self._clear_deadline()
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def abort(self) -> None:
        self._flush_batch()
        self._phase = CLOSING
        self._clear_deadline()
        if self.transport is not None:
            self.transport.abort()
