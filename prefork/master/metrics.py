"""The master's side of the metrics: the workers' snapshots, its own counts, the collector.

The workers send snapshots of their counters with their heartbeats (see
prefork.metrics); :class:`MasterMetrics` takes them out of each worker's pipe
data, keeps the totals (monotonic across worker exits) and counts what only
the master sees: worker restarts by reason and reloads by result.
:class:`ServerCollector` turns all of it, with the master's live view (the
generation, the workers by state, the listen queues), into Prometheus metric
families for ``prometheus_client``'s exposition on a private registry.

The numbers are as fresh as the workers' last heartbeats: at most one
heartbeat interval old (``min(1 s, worker_timeout / 4)``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import socket
from collections.abc import Callable, Iterable, Iterator

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from prefork import metrics as m
from prefork.engine.accept import accept_queue_length
from prefork.master.listeners import format_host
from prefork.master.workers import WorkerRecord, WorkerState

# Why a worker was replaced: it died unexpectedly (crash), the master killed it
# for missing heartbeats (timeout), max_requests (recycle), a new generation
# took over (reload).
RESTART_REASONS = ("crash", "timeout", "recycle", "reload")
RELOAD_RESULTS = ("ok", "failed")


@dataclasses.dataclass
class MasterView:
    """What the master knows at scrape time."""

    generation: int
    workers: dict[str, int]  # by state: booting, serving, draining
    listen_queues: list[tuple[str, int]]  # (address, connections waiting to be accepted)


def restart_reason(worker: WorkerRecord, serving_generation: int) -> str | None:
    """Why an exited ``worker`` is replaced; None when it is not (TTOU, a boot failure)."""
    if not worker.expected_exit:
        if worker.killed_for is not None:
            return "timeout"  # the watchdog: no heartbeat within worker_timeout
        return "crash" if worker.ever_ready else None
    if worker.recycle:
        return "recycle"
    if worker.generation < serving_generation:
        return "reload"
    return None


def master_view(
    generation: int, workers: Iterable[WorkerRecord], listeners: Iterable[socket.socket]
) -> MasterView:
    """The master's live view at scrape time: workers by state, listen queue lengths."""
    states = dict.fromkeys((s.value for s in WorkerState), 0)
    for worker in workers:
        states[worker.state.value] += 1
    queues = []
    for sock in listeners:
        waiting = accept_queue_length(sock)  # TCP on Linux only
        if waiting is not None:
            host, port = sock.getsockname()[:2]
            queues.append((f"{format_host(host)}:{port}", waiting))
    return MasterView(generation, states, queues)


class MasterMetrics:
    """The workers' counters (via their snapshots) and the master's own counts."""

    def __init__(self) -> None:
        self.totals = m.Totals()
        self._inboxes: dict[int, m.Inbox] = {}
        self.restarts = dict.fromkeys(RESTART_REASONS, 0)
        self.reloads = dict.fromkeys(RELOAD_RESULTS, 0)

    def feed(self, pid: int, data: bytes) -> bytes:
        """Take the snapshots out of what worker ``pid`` sent; returns the one-byte messages."""
        inbox = self._inboxes.get(pid)
        if inbox is None:
            inbox = self._inboxes[pid] = m.Inbox()
        messages = inbox.feed(data)
        if inbox.latest is not None:
            self.totals.update(pid, inbox.latest)
        return messages

    def exited(self, pid: int, restart: str | None) -> None:
        """Worker ``pid`` is gone: keep its last counters; ``restart``: why it is replaced."""
        self._inboxes.pop(pid, None)
        self.totals.retire(pid)
        if restart is not None:
            self.restarts[restart] += 1

    def reaped(self, worker: WorkerRecord, serving_generation: int | None) -> None:
        """A reaped worker: read what it sent last (its final counts), count the restart
        (``serving_generation``: None while the master stops, when nothing is replaced)."""
        with contextlib.suppress(OSError):
            while worker.pipe_r >= 0 and (data := os.read(worker.pipe_r, 4096)):
                self.feed(worker.pid, data)
        reason = None
        if serving_generation is not None:
            reason = restart_reason(worker, serving_generation)
        self.exited(worker.pid, reason)

    def reloaded(self, ok: bool) -> None:
        self.reloads["ok" if ok else "failed"] += 1


class ServerCollector:
    """A ``prometheus_client`` collector of the whole server (every worker, every generation)."""

    def __init__(self, metrics: MasterMetrics, view: Callable[[], MasterView]) -> None:
        self._metrics = metrics
        self._view = view

    def collect(self) -> Iterator[Metric]:
        values = self._metrics.totals.sum()
        yield from _worker_families(values)
        view = self._view()
        workers = GaugeMetricFamily(
            "prefork_workers", "Worker processes alive, by state.", labels=["state"]
        )
        for state, count in view.workers.items():
            workers.add_metric([state], count)
        yield workers
        yield GaugeMetricFamily(
            "prefork_generation",
            "The serving generation: 1 at start, one more per successful reload.",
            value=view.generation,
        )
        restarts = CounterMetricFamily(
            "prefork_worker_restarts",
            "Workers replaced, by reason (crash, timeout, recycle, reload).",
            labels=["reason"],
        )
        for reason, count in self._metrics.restarts.items():
            restarts.add_metric([reason], count)
        yield restarts
        reloads = CounterMetricFamily(
            "prefork_reloads", "Reloads (SIGHUP), by result (ok, failed).", labels=["result"]
        )
        for result, count in self._metrics.reloads.items():
            reloads.add_metric([result], count)
        yield reloads
        queue = GaugeMetricFamily(
            "prefork_listen_queue_connections",
            "Connections waiting in a listen socket's accept queue (Linux).",
            labels=["listener"],
        )
        for address, waiting in view.listen_queues:
            queue.add_metric([address], waiting)
        yield queue


def _worker_families(values: m.Snapshot) -> Iterator[Metric]:
    """The families summed from the workers' snapshots."""
    requests = CounterMetricFamily(
        "prefork_requests",
        "Responses finished, by request method class and status class.",
        labels=["method", "status"],
    )
    for method in m.METHODS:
        for status in m.STATUS_CLASSES:
            requests.add_metric([method, status], m.requests(values, method, status))
    yield requests
    buckets: list[tuple[str, float]] = []
    cumulative = 0.0
    bounds = [*map(str, m.DURATION_BOUNDS_S), "+Inf"]
    for i, bound in enumerate(bounds):
        cumulative += values[m.BUCKETS_AT + i]
        buckets.append((bound, cumulative))
    yield HistogramMetricFamily(
        "prefork_request_duration_seconds",
        "Time from calling the handler to the response handed to the kernel.",
        buckets=buckets,
        sum_value=values[m.DURATION_SUM_AT],
    )
    yield CounterMetricFamily(
        "prefork_request_body_bytes",
        "Request body bytes received (heads not included).",
        value=values[m.BODY_IN_AT],
    )
    yield CounterMetricFamily(
        "prefork_response_body_bytes",
        "Response body bytes sent (heads not included; compressed size when compressed).",
        value=values[m.BODY_OUT_AT],
    )
    slow = CounterMetricFamily(
        "prefork_slow_clients_closed",
        "Connections closed because a deadline passed: request head, request body, response write.",
        labels=["phase"],
    )
    for i, phase in enumerate(m.SLOW_PHASES):
        slow.add_metric([phase], values[m.SLOW_AT + i])
    yield slow
    yield CounterMetricFamily(
        "prefork_tls_handshakes", "TLS handshakes completed.", value=values[m.TLS_OK_AT]
    )
    yield CounterMetricFamily(
        "prefork_tls_handshake_failures",
        "TLS handshakes that failed or timed out.",
        value=values[m.TLS_FAILED_AT],
    )
    yield GaugeMetricFamily(
        "prefork_connections_open",
        "Client connections open in the workers.",
        value=values[m.OPEN_AT],
    )
    yield GaugeMetricFamily(
        "prefork_connections_idle",
        "Open keep-alive connections waiting for their next request.",
        value=values[m.IDLE_AT],
    )
