"""Server metrics as plain numbers: a worker's counters, their snapshot, the master's sums.

No I/O and no ``prometheus_client`` here: a worker counts in plain ints
(:class:`WorkerMetrics`, updated where a response is finished, next to the
access line) and sends the whole set to the master as one short line of text
with its heartbeat (:meth:`WorkerMetrics.snapshot`), so there is no
inter-process traffic per request. The master keeps each worker's latest
snapshot (:class:`Inbox` cuts them out of the pipe's byte stream) and, when a
worker exits, adds its last counters to what it keeps of the dead
(:class:`Totals`): the sums served at ``/metrics`` never go down across
restarts and reloads. What a worker counted after its last snapshot and before
it was killed is lost (at most one heartbeat interval); a worker that stops
gracefully sends a final snapshot.

A snapshot is ``b"S"``, numbers separated by spaces, ``b"\\n"``: it never
contains the pipe's one-byte messages (``R``, ``H``, ``M``), so both share the
pipe; it stays far below ``PIPE_BUF``, so a write of it is atomic.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Sequence

# Method classes: the common methods by name, everything else (and a request
# rejected before its method was known) as "other".
METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "other")
# Status classes: index status // 100.
STATUS_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")
# Upper bounds (seconds) of the request duration histogram's buckets; a last one is +Inf.
DURATION_BOUNDS_S = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
# Where a connection was closed for being too slow (the deadline that passed).
SLOW_PHASES = ("header", "body", "write")

# The layout of a snapshot: counters (summed over every worker that ever
# lived), then gauges (summed over the live workers only).
_N_REQUESTS = len(METHODS) * len(STATUS_CLASSES)
REQUESTS_AT = 0
BUCKETS_AT = REQUESTS_AT + _N_REQUESTS
DURATION_SUM_AT = BUCKETS_AT + len(DURATION_BOUNDS_S) + 1
BODY_IN_AT = DURATION_SUM_AT + 1
BODY_OUT_AT = BODY_IN_AT + 1
SLOW_AT = BODY_OUT_AT + 1
TLS_OK_AT = SLOW_AT + len(SLOW_PHASES)
TLS_FAILED_AT = TLS_OK_AT + 1
N_COUNTERS = TLS_FAILED_AT + 1
OPEN_AT = N_COUNTERS
IDLE_AT = OPEN_AT + 1
N_VALUES = IDLE_AT + 1

SNAPSHOT_TAG = b"S"
SNAPSHOT_END = b"\n"
# A partial snapshot longer than this is garbage (a real one is < 1 KiB): dropped.
_MAX_PARTIAL_BYTES = 64 * 1024

Snapshot = list[float]


def empty() -> Snapshot:
    return [0] * N_VALUES


class WorkerMetrics:
    """One worker's counters; ``observe`` runs once per finished request."""

    __slots__ = (
        "body_in",
        "body_out",
        "buckets",
        "duration_sum",
        "other",
        "rows",
        "slow",
        "tls_failed",
        "tls_ok",
    )

    def __init__(self) -> None:
        # One row of status-class counts per method class; index status // 100 - 1
        # is avoided by a spare column 0, so a request costs one division.
        self.rows = {method: [0] * (len(STATUS_CLASSES) + 1) for method in METHODS}
        self.other = self.rows["other"]
        self.buckets = [0] * (len(DURATION_BOUNDS_S) + 1)
        self.duration_sum = 0.0
        self.body_in = 0
        self.body_out = 0
        self.slow = dict.fromkeys(SLOW_PHASES, 0)
        self.tls_ok = 0
        self.tls_failed = 0

    def observe(
        self, method: str, status: int, body_in: int, body_out: int, seconds: float
    ) -> None:
        """Count one finished request (``status`` 100..599)."""
        self.rows.get(method, self.other)[status // 100] += 1
        self.buckets[bisect.bisect_left(DURATION_BOUNDS_S, seconds)] += 1
        self.duration_sum += seconds
        self.body_in += body_in
        self.body_out += body_out

    def slow_closed(self, phase: str) -> None:
        """A connection closed because its ``phase`` deadline passed (see SLOW_PHASES)."""
        self.slow[phase] += 1

    def tls_handshake(self, ok: bool) -> None:
        if ok:
            self.tls_ok += 1
        else:
            self.tls_failed += 1

    def values(self, open_connections: int, idle_connections: int) -> Snapshot:
        """Everything, in the snapshot's layout."""
        out: Snapshot = []
        for method in METHODS:
            out += self.rows[method][1:]
        out += self.buckets
        out.append(self.duration_sum)
        out.append(self.body_in)
        out.append(self.body_out)
        out += [self.slow[phase] for phase in SLOW_PHASES]
        out.append(self.tls_ok)
        out.append(self.tls_failed)
        out.append(open_connections)
        out.append(idle_connections)
        return out

    def snapshot(self, open_connections: int, idle_connections: int) -> bytes:
        """The pipe message: ``S`` and the values, space-separated, then a newline."""
        return encode(self.values(open_connections, idle_connections))


def encode(values: Sequence[float]) -> bytes:
    return SNAPSHOT_TAG + " ".join(map(str, values)).encode("ascii") + SNAPSHOT_END


def decode(text: bytes) -> Snapshot | None:
    """The values of one snapshot (without its tag and newline); None if malformed."""
    parts = text.split()
    if len(parts) != N_VALUES:
        return None
    try:
        values: Snapshot = [int(p) if p.isdigit() else float(p) for p in parts]
    except ValueError:
        return None
    return values


class Inbox:
    """The master's reader of one worker's pipe: snapshots out, one-byte messages through."""

    __slots__ = ("_partial", "latest")

    def __init__(self) -> None:
        self._partial = b""
        self.latest: Snapshot | None = None

    def feed(self, data: bytes) -> bytes:
        """Keep the snapshots in ``data`` (the last one wins); return the other bytes."""
        if self._partial:
            data, self._partial = self._partial + data, b""
        elif SNAPSHOT_TAG not in data:
            return data
        messages: list[bytes] = []
        pos = 0
        while True:
            start = data.find(SNAPSHOT_TAG, pos)
            if start < 0:
                messages.append(data[pos:])
                break
            messages.append(data[pos:start])
            end = data.find(SNAPSHOT_END, start)
            if end < 0:  # the rest comes with the next read
                if len(data) - start <= _MAX_PARTIAL_BYTES:
                    self._partial = data[start:]
                break
            values = decode(data[start + 1 : end])
            if values is not None:
                self.latest = values
            pos = end + 1
        return b"".join(messages)


class Totals:
    """The master's sums: the live workers' latest snapshots plus the dead workers' last.

    Counters of a worker that exited stay in ``retired``, so every counter is
    monotonic however workers come and go; gauges count the live ones only.
    """

    def __init__(self) -> None:
        self.retired: Snapshot = empty()
        self.live: dict[int, Snapshot] = {}

    def update(self, pid: int, values: Snapshot) -> None:
        self.live[pid] = values

    def retire(self, pid: int, last: Snapshot | None = None) -> None:
        """Worker ``pid`` exited; ``last``: a snapshot read after its latest update."""
        values = last if last is not None else self.live.get(pid)
        self.live.pop(pid, None)
        if values is not None:
            retired = self.retired
            for i in range(N_COUNTERS):
                retired[i] += values[i]

    def sum(self) -> Snapshot:
        """Every counter over all workers ever, every gauge over the live ones."""
        return merge([self.retired, *self.live.values()])


def merge(snapshots: Iterable[Snapshot]) -> Snapshot:
    """Element-wise sum (gauges of ``retired`` are always 0)."""
    out = empty()
    for values in snapshots:
        for i, value in enumerate(values):
            out[i] += value
    return out


def requests(values: Snapshot, method: str, status_class: str) -> float:
    """The request count of one (method class, status class) in a snapshot."""
    row = METHODS.index(method) * len(STATUS_CLASSES)
    return values[REQUESTS_AT + row + STATUS_CLASSES.index(status_class)]
