"""What one worker's connections share: ``Shared``, deadlines and their sweeper.

``Shared`` is built once per worker, in the child's loop, and handed to every
``Connection`` (as ``conn.shared``): the config and the app interface, the
request limits, the caches (heads, header fields, compressed bodies), the one
head parser, the write batch, the access log, the set of open connections, and
the drain at shutdown (``begin_drain``, then ``wait_closed``).

Deadlines are absolute: a connection stores when it expires (``deadline``) and
why (a ``Deadline`` kind). One sweeper per worker (started by
``Shared.start``) checks them every ``sweep_interval`` seconds and calls
``Connection.on_deadline``: no timer per request. It also refreshes ``DATE``,
applies the minimum transfer rate (``Connection.check_rate``) and, while the
worker drains, closes the connections that have gone quiet
(``Connection.close_if_quiet``). ``reclaim`` frees slots held by connections
that give the worker no work, when the worker is at ``open_connection_limit``
and clients wait in the listen queue (docs/slow-clients.md).
"""

from __future__ import annotations

import asyncio
import enum
import logging
import ssl
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final, Protocol

from prefork import log
from prefork.config import Config
from prefork.engine.batch import WriteBatch
from prefork.http import compression
from prefork.http.forwarded import Trust
from prefork.http.head_cache import HeadCache
from prefork.http.parsers import make_parser, resolve
from prefork.http.protocol import RequestReader
from prefork.http.request import Limits, Request
from prefork.http.response import DATE, FieldsCache, NegotiatedCache
from prefork.metrics import WorkerMetrics

if TYPE_CHECKING:
    from prefork.engine.app import AppInterface

logger = logging.getLogger(log.WORKER)

# Request counts up to this are shared int objects (Shared.counts).
COUNTS_SHARED: Final = 4096
# Connections going idle within this many seconds share one deadline float.
DEADLINE_GRAIN: Final = 0.01
# The sweep period with the rate rule on: a trickle is closed at most this late.
RATE_SWEEP_S: Final = 0.5
# Connections cut by the rate rule per loop turn (Shared._cut).
CUTS_PER_TURN: Final = 8
# While draining: how soon after going quiet a waiting connection is closed.
DRAIN_SWEEP_S: Final = 0.1


def below_min_rate(elapsed: float, transferred: int, rate: float, grace: float) -> bool:
    """The rate rule (``min_transfer_rate``): has a transfer that began ``elapsed``
    seconds ago and moved ``transferred`` bytes fallen behind ``rate`` bytes/s?

    ``grace`` seconds are free and each byte buys ``1 / rate`` seconds more, as
    Apache's mod_reqtimeout MinRate does, so a transfer that is early, or
    ahead, is never cut; one that stalls is cut once its credit runs out.
    """
    return elapsed > grace + transferred / rate


class Deadline(enum.Enum):
    NONE = 0
    IDLE = 1
    HEADER = 2
    BODY = 3
    WRITE = 4
    LINGER = 5


class Served(Protocol):
    """What the sweeper and the drain use of a connection (``engine.connection``)."""

    deadline: float
    client_ip: str
    deadline_kind: Deadline

    def on_deadline(self) -> None: ...

    def begin_drain(self, now: float) -> None: ...

    def abort(self) -> None: ...

    # The slow-client rules (docs/slow-clients.md).
    def too_slow(self, now: float, rate: float, grace: float) -> bool: ...

    def check_rate(self, now: float, rate: float, grace: float) -> None: ...

    @property
    def waiting_for_client(self) -> bool: ...

    def waiting_since(self) -> float | None: ...

    def close_if_quiet(self, now: float) -> bool: ...


class Shared:
    """Everything one worker's connections share: config, app, limits, the sweeper."""

    def __init__(
        self,
        cfg: Config,
        app: AppInterface[Any],
        *,
        ssl_context: ssl.SSLContext | None = None,
        redis_module: Any = None,
    ) -> None:
        self.cfg = cfg
        self.app = app
        # Bound once per worker: read through the app's Protocol type, each
        # data_received would look the method up and bind it (~600 instructions).
        self.respond_inline: Callable[[Any, Request], bool] = app.respond_inline
        self.ssl_context = ssl_context
        self.scheme = "https" if ssl_context is not None else "http"
        # Peers whose X-Forwarded-*/Forwarded fields are believed (http.forwarded).
        self.trust = Trust(cfg.forwarded_allow_ips)
        self.redis_module = redis_module
        self.limits = Limits.from_config(cfg)
        self.parser_name = resolve(cfg.http)
        self.policy = compression.Policy(cfg.compression)
        self.body_cache = compression.BodyCache(cfg.compression["cache_bytes"])
        # One big body compressed at a time (engine.slices.compress_in_slices).
        self.compress_turn = asyncio.Lock()
        self.head_cache = HeadCache()
        # One head parser per worker, not per connection: a head is parsed
        # whole and synchronously, so connections never interleave in it, and
        # an llhttp parser costs ~700 bytes on every idle connection.
        self.head_parser = make_parser(self.parser_name, app.fields_as_list)
        # The reader of every connection that carries no more HTTP requests
        # (Connection.end_http: a WebSocket): stopped, never fed, so sharing
        # it is safe, and an open WebSocket keeps no reader of its own.
        self.spent_reader = RequestReader(self.head_parser, self.limits)
        self.spent_reader.feed_failed()
        # Response header texts (http.response.fields, http.response.negotiate).
        self.fields_cache: FieldsCache = {}
        self.negotiated_cache: NegotiatedCache = {}
        # The access line and the metrics of every finished request (one call: record).
        self.access = log.AccessLog(
            cfg.log_headers, cfg.access_log_format, WorkerMetrics() if cfg.metrics_bind else None
        )
        # (Its flag, read here per request: an attribute of this compiled class
        # costs a load, one of the interpreted AccessLog a lookup by name.)
        self.access_active = self.access.active
        self.requests_per_connection = cfg.requests_per_connection
        self.keepalive_idle_timeout = cfg.keepalive_idle_timeout
        self.request_header_timeout = cfg.request_header_timeout
        self.request_body_timeout = cfg.request_body_timeout
        self.response_write_timeout = cfg.response_write_timeout
        self.min_transfer_rate = cfg.min_transfer_rate
        self.min_rate_grace = cfg.min_rate_grace
        # With many connections, what a request touches of its own is read from
        # memory, not from the CPU's cache; a connection's per-request values
        # are therefore shared objects where they can be. Request counts come
        # from this table, so that counting a request frees no int object of
        # the connection's own (ints above 256 are not cached by Python) ...
        self.counts = tuple(range(min(cfg.requests_per_connection, COUNTS_SHARED) + 1))
        # ... and a connection that goes idle takes this deadline, one float
        # for every connection going idle within DEADLINE_GRAIN seconds.
        self.idle_deadline = 0.0
        self.idle_deadline_until = 0.0
        self.batch = WriteBatch()
        self.connections: set[Served] = set()
        self.requests_served = 0
        self.draining = False
        self.loop: asyncio.AbstractEventLoop | None = None  # set by start()
        self._sweeper: asyncio.TimerHandle | None = None
        self._all_closed: asyncio.Event | None = None
        timeouts = (
            cfg.keepalive_idle_timeout,
            cfg.request_header_timeout,
            cfg.request_body_timeout,
            cfg.response_write_timeout,
        )
        # Deadlines are checked this often: fine enough for the shortest timeout
        # (and for the rate rule, which needs no timer per read either).
        longest = RATE_SWEEP_S if cfg.min_transfer_rate else 1.0
        self.sweep_interval = max(0.05, min(longest, min(timeouts) / 8))

    def record(self, client: str, req: Request, status: int, sent: int, started: float) -> None:
        """A request answered: counted, and its access line and metrics written."""
        self.requests_served += 1
        if self.access_active:  # (lines or metrics on: else no call per request)
            self.access.record(client, req, status, sent, started)

    def refresh_idle_deadline(self, now: float) -> None:
        """A new shared keep-alive deadline: never early, at most DEADLINE_GRAIN late."""
        self.idle_deadline_until = now + DEADLINE_GRAIN
        self.idle_deadline = now + DEADLINE_GRAIN + self.keepalive_idle_timeout

    @property
    def open_connections(self) -> int:
        return len(self.connections)

    def idle_connections(self) -> int:
        """Keep-alive connections waiting for their next request (for the metrics, ~1/s)."""
        return sum(1 for conn in self.connections if conn.deadline_kind is Deadline.IDLE)

    def start(self) -> None:
        """Start the deadline sweeper; call once inside the running loop."""
        self.loop = asyncio.get_running_loop()
        self._all_closed = asyncio.Event()
        DATE.refresh()
        self._sweeper = self.loop.call_later(self.sweep_interval, self._sweep)

    def _sweep(self) -> None:
        loop = self.loop
        assert loop is not None
        DATE.refresh()
        now = loop.time()
        rate = self.min_transfer_rate
        grace = self.min_rate_grace
        draining = self.draining
        slow = []
        for conn in list(self.connections):
            if conn.deadline and now >= conn.deadline:
                conn.on_deadline()
            elif rate and conn.too_slow(now, rate, grace):
                slow.append(conn)
            if draining:
                conn.close_if_quiet(now)
        if slow:
            self._cut(slow)
        self._sweeper = loop.call_later(self.sweep_interval, self._sweep)

    def _cut(self, slow: list[Served]) -> None:
        """Cut the connections found too slow, CUTS_PER_TURN per loop turn.

        Attacking connections arrive together and so expire together (100 in
        one sweep at 200 a second); cut at once, their 408s and log lines held
        the loop for milliseconds, and every other client's latency with it.
        """
        loop = self.loop
        assert loop is not None
        now = loop.time()
        for conn in slow[:CUTS_PER_TURN]:
            conn.check_rate(now, self.min_transfer_rate, self.min_rate_grace)
        if len(slow) > CUTS_PER_TURN:
            loop.call_soon(self._cut, slow[CUTS_PER_TURN:])

    def add(self, conn: Served) -> None:
        self.connections.add(conn)

    def discard(self, conn: Served) -> None:
        self.connections.discard(conn)
        if not self.connections and self.draining and self._all_closed is not None:
            self._all_closed.set()

    def waiting_connections(self) -> int:
        """How many open connections wait for their client (``Connection.waiting_for_client``)."""
        return sum(1 for conn in self.connections if conn.waiting_for_client)

    def reclaim(self, wanted: int) -> int:
        """Close up to ``wanted`` connections that wait for a request that has not
        begun (idle keep-alive, fresh and silent), the longest waiting first, and
        only those quiet for ``QUIET_S``; returns how many were closed."""
        if self.loop is None or wanted <= 0:
            return 0
        now = self.loop.time()
        waiting = []
        for conn in self.connections:
            since = conn.waiting_since()
            if since is not None:
                waiting.append((since, id(conn), conn))
        waiting.sort()
        closed = 0
        for _, _, conn in waiting:
            if closed >= wanted:
                break
            if conn.close_if_quiet(now):
                closed += 1
                logger.info(
                    "%s: closing a connection waiting for a request"
                    " (open_connection_limit reached, clients queued)",
                    conn.client_ip,
                )
        return closed

    def begin_drain(self) -> None:
        """Stop keep-alive: every next response says ``Connection: close``; connections
        waiting for a request close once quiet (``Connection.begin_drain``)."""
        self.draining = True
        if self.loop is not None:
            now = self.loop.time()
            for conn in list(self.connections):
                conn.begin_drain(now)
            # Quiet connections are closed by the sweeper: soon after they go quiet.
            self.sweep_interval = min(self.sweep_interval, DRAIN_SWEEP_S)
            if self._sweeper is not None:
                self._sweeper.cancel()
                self._sweeper = self.loop.call_later(self.sweep_interval, self._sweep)
        if not self.connections and self._all_closed is not None:
            self._all_closed.set()

    async def wait_closed(self, timeout: float) -> None:  # noqa: ASYNC109
        """Wait until every connection is gone or ``timeout`` passed; then abort the rest."""
        if self._all_closed is not None and self.connections:
            try:
                await asyncio.wait_for(self._all_closed.wait(), timeout)
            except TimeoutError:
                logger.warning("graceful timeout: aborting %d connection(s)", len(self.connections))
        for conn in list(self.connections):
            conn.abort()
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
