"""What one worker's connections share: ``Shared``, deadlines and their sweeper.

``Shared`` is built once per worker, in the child's loop, and handed to every
``Connection`` (as ``conn.shared``): the config and the app interface, the
request limits, the caches (heads, header fields, compressed bodies), the one
head parser, the write batch, the access log, the set of open connections, and
the drain at shutdown (``begin_drain``, then ``wait_closed``).

Deadlines are absolute: a connection stores when it expires (``deadline``) and
why (a ``Deadline`` kind). One sweeper per worker (started by
``Shared.start``) checks them every ``sweep_interval`` seconds and calls
``Connection.on_deadline``: no timer per request. It also refreshes ``DATE``.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import ssl
from typing import TYPE_CHECKING, Any, Protocol

from prefork import log
from prefork.config import Config
from prefork.engine.batch import WriteBatch
from prefork.http import compression
from prefork.http.forwarded import Trust
from prefork.http.parsers import make_parser, resolve
from prefork.http.protocol import DATE, HeadCache
from prefork.http.request import Limits
from prefork.http.response import FieldsCache, NegotiatedCache
from prefork.metrics import WorkerMetrics

if TYPE_CHECKING:
    from prefork.engine.app import AppInterface

logger = logging.getLogger(log.WORKER)

# Request counts up to this are shared int objects (Shared.counts).
COUNTS_SHARED = 4096
# Connections going idle within this many seconds share one deadline float.
DEADLINE_GRAIN = 0.01


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
    deadline_kind: Deadline

    def on_deadline(self) -> None: ...

    def begin_drain(self) -> None: ...

    def abort(self) -> None: ...


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
        self.head_cache: HeadCache = {}
        # One head parser per worker, not per connection: a head is parsed
        # whole and synchronously, so connections never interleave in it, and
        # an llhttp parser costs ~700 bytes on every idle connection.
        self.head_parser = make_parser(self.parser_name)
        # Response header texts (http.response.fields, http.response.negotiate).
        self.fields_cache: FieldsCache = {}
        self.negotiated_cache: NegotiatedCache = {}
        # The access line and the metrics of every finished request (one call: record).
        self.access = log.AccessLog(
            cfg.log_headers, cfg.access_log_format, WorkerMetrics() if cfg.metrics_bind else None
        )
        self.requests_per_connection = cfg.requests_per_connection
        self.keepalive_idle_timeout = cfg.keepalive_idle_timeout
        self.request_header_timeout = cfg.request_header_timeout
        self.request_body_timeout = cfg.request_body_timeout
        self.response_write_timeout = cfg.response_write_timeout
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
        # Deadlines are checked this often: fine enough for the shortest timeout.
        self.sweep_interval = max(0.05, min(1.0, min(timeouts) / 8))

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
        for conn in list(self.connections):
            if conn.deadline and now >= conn.deadline:
                conn.on_deadline()
        self._sweeper = loop.call_later(self.sweep_interval, self._sweep)

    def add(self, conn: Served) -> None:
        self.connections.add(conn)

    def discard(self, conn: Served) -> None:
        self.connections.discard(conn)
        if not self.connections and self.draining and self._all_closed is not None:
            self._all_closed.set()

    def begin_drain(self) -> None:
        """Stop keep-alive: idle connections close now, busy ones after their response."""
        self.draining = True
        for conn in list(self.connections):
            conn.begin_drain()
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
