"""prefork.metrics and prefork.master.metrics: counting, the snapshot line, merging, exposition."""

from __future__ import annotations

import itertools

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as parse_openmetrics,
)
from prometheus_client.parser import text_string_to_metric_families

from prefork import metrics as m
from prefork.config import Config
from prefork.master.metrics import MasterMetrics, MasterView, ServerCollector, restart_reason
from prefork.master.workers import WorkerRecord
from prefork.worker import MSG_HEARTBEAT, MSG_READY, MSG_RECYCLE


def counted(*requests: tuple[str, int, int, int, float]) -> m.WorkerMetrics:
    wm = m.WorkerMetrics()
    for method, status, body_in, body_out, seconds in requests:
        wm.observe(method, status, body_in, body_out, seconds)
    return wm


# -- a worker's counters ------------------------------------------------------------


def test_observe_counts_by_method_class_and_status_class() -> None:
    wm = counted(
        ("GET", 200, 0, 5, 0.001),
        ("GET", 204, 0, 0, 0.001),
        ("POST", 404, 10, 9, 0.001),
        ("BREW", 503, 0, 0, 0.001),
        ("OPTIONS", 101, 0, 0, 0.001),
    )
    values = wm.values(0, 0)
    assert m.requests(values, "GET", "2xx") == 2
    assert m.requests(values, "POST", "4xx") == 1
    assert m.requests(values, "other", "5xx") == 1
    assert m.requests(values, "OPTIONS", "1xx") == 1
    assert sum(values[m.REQUESTS_AT : m.BUCKETS_AT]) == 5
    assert (values[m.BODY_IN_AT], values[m.BODY_OUT_AT]) == (10, 14)


@pytest.mark.parametrize(
    ("seconds", "bucket"),
    [(0.0, 0), (0.0005, 0), (0.00051, 1), (0.001, 1), (9.9, 13), (10.0, 13), (10.1, 14)],
    ids=["zero", "on-first-bound", "above-first", "on-second", "below-last", "on-last", "inf"],
)
def test_duration_bucket_upper_bounds_are_inclusive(seconds: float, bucket: int) -> None:
    wm = counted(("GET", 200, 0, 0, seconds))
    assert wm.buckets.index(1) == bucket
    assert wm.duration_sum == seconds


def test_slow_clients_and_tls_handshakes_are_counted() -> None:
    wm = m.WorkerMetrics()
    for phase in ("header", "header", "body", "write"):
        wm.slow_closed(phase)
    wm.tls_handshake(True)
    wm.tls_handshake(False)
    wm.tls_handshake(True)
    values = wm.values(3, 1)
    assert values[m.SLOW_AT : m.SLOW_AT + 3] == [2, 1, 1]
    assert (values[m.TLS_OK_AT], values[m.TLS_FAILED_AT]) == (2, 1)
    assert (values[m.OPEN_AT], values[m.IDLE_AT]) == (3, 1)


# -- the snapshot line --------------------------------------------------------------


def test_snapshot_round_trips_and_never_holds_a_pipe_message_byte() -> None:
    wm = counted(("GET", 200, 3, 5, 1.5e-05), ("DELETE", 500, 0, 0, 123.25))
    line = wm.snapshot(7, 2)
    assert line.startswith(m.SNAPSHOT_TAG)
    assert line.endswith(m.SNAPSHOT_END)
    assert len(line) < 4096  # PIPE_BUF: written atomically
    for message in (MSG_READY, MSG_HEARTBEAT, MSG_RECYCLE):
        assert message not in line
    assert m.decode(line[1:-1]) == wm.values(7, 2)


@pytest.mark.parametrize(
    "text", [b"", b"1 2 3", b"x" * 10, b" ".join([b"1"] * (m.N_VALUES + 1))], ids=str
)
def test_malformed_snapshots_are_ignored(text: bytes) -> None:
    assert m.decode(text) is None


def test_inbox_passes_messages_and_keeps_the_last_snapshot() -> None:
    inbox = m.Inbox()
    first = m.encode([1] * m.N_VALUES)
    second = m.encode([2] * m.N_VALUES)
    assert inbox.feed(MSG_READY + MSG_HEARTBEAT + first + MSG_HEARTBEAT + second) == b"RHH"
    assert inbox.latest == [2] * m.N_VALUES
    assert inbox.feed(MSG_RECYCLE) == MSG_RECYCLE


def test_inbox_joins_a_snapshot_split_across_reads() -> None:
    inbox = m.Inbox()
    data = MSG_HEARTBEAT + m.encode(list(range(m.N_VALUES))) + MSG_RECYCLE
    for cut in range(1, len(data)):
        inbox = m.Inbox()
        messages = inbox.feed(data[:cut]) + inbox.feed(data[cut:])
        assert messages == MSG_HEARTBEAT + MSG_RECYCLE, cut
        assert inbox.latest == list(range(m.N_VALUES)), cut


# -- merging in the master ----------------------------------------------------------


def test_totals_keep_the_counters_of_exited_workers_and_drop_their_gauges() -> None:
    totals = m.Totals()
    totals.update(1, counted(("GET", 200, 0, 10, 0.01)).values(4, 2))
    totals.update(2, counted(("GET", 200, 0, 20, 0.01)).values(1, 1))
    before = totals.sum()
    assert m.requests(before, "GET", "2xx") == 2
    assert (before[m.OPEN_AT], before[m.IDLE_AT]) == (5, 3)
    totals.retire(1)
    after = totals.sum()
    assert m.requests(after, "GET", "2xx") == 2
    assert after[m.BODY_OUT_AT] == 30
    assert (after[m.OPEN_AT], after[m.IDLE_AT]) == (1, 1)


def test_counters_never_go_down_as_workers_come_and_go() -> None:
    totals = m.Totals()
    seen: list[m.Snapshot] = []
    for pid in range(1, 6):
        wm = m.WorkerMetrics()
        for _ in range(3):
            wm.observe("GET", 200, 1, 1, 0.002)
            totals.update(pid, wm.values(1, 0))
            seen.append(totals.sum())
        totals.retire(pid)  # a restart, a reload, a SIGKILL: its last snapshot stays
        seen.append(totals.sum())
    for earlier, later in itertools.pairwise(seen):
        assert all(later[i] >= earlier[i] for i in range(m.N_COUNTERS))
    assert m.requests(seen[-1], "GET", "2xx") == 15


def test_retire_of_a_worker_that_never_sent_a_snapshot_changes_nothing() -> None:
    totals = m.Totals()
    totals.retire(42)
    assert totals.sum() == m.empty()


def test_master_metrics_feed_updates_totals_and_counts_restarts() -> None:
    mm = MasterMetrics()
    line = counted(("HEAD", 304, 0, 0, 0.001)).snapshot(1, 1)
    assert mm.feed(7, MSG_HEARTBEAT + line) == MSG_HEARTBEAT
    mm.exited(7, "crash")
    mm.exited(8, None)
    mm.reloaded(True)
    mm.reloaded(False)
    assert m.requests(mm.totals.sum(), "HEAD", "3xx") == 1
    assert mm.restarts == {"crash": 1, "timeout": 0, "recycle": 0, "reload": 0}
    assert mm.reloads == {"ok": 1, "failed": 1}


# -- exposition ---------------------------------------------------------------------


def _registry() -> CollectorRegistry:
    mm = MasterMetrics()
    mm.feed(1, counted(("GET", 200, 0, 5, 0.003), ("POST", 500, 7, 3, 0.2)).snapshot(2, 1))
    mm.exited(2, "recycle")
    view = MasterView(3, {"booting": 0, "serving": 2, "draining": 1}, [("127.0.0.1:80", 4)])
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ServerCollector(mm, lambda: view))
    return registry


def test_prometheus_text_exposition() -> None:
    text = generate_latest(_registry()).decode()
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    assert samples[("prefork_requests_total", (("method", "GET"), ("status", "2xx")))] == 1
    assert samples[("prefork_requests_total", (("method", "POST"), ("status", "5xx")))] == 1
    assert samples[("prefork_request_duration_seconds_bucket", (("le", "0.005"),))] == 1
    assert samples[("prefork_request_duration_seconds_bucket", (("le", "+Inf"),))] == 2
    assert samples[("prefork_request_duration_seconds_count", ())] == 2
    assert samples[("prefork_request_body_bytes_total", ())] == 7
    assert samples[("prefork_response_body_bytes_total", ())] == 8
    assert samples[("prefork_connections_open", ())] == 2
    assert samples[("prefork_connections_idle", ())] == 1
    assert samples[("prefork_workers", (("state", "serving"),))] == 2
    assert samples[("prefork_workers", (("state", "draining"),))] == 1
    assert samples[("prefork_generation", ())] == 3
    assert samples[("prefork_worker_restarts_total", (("reason", "recycle"),))] == 1
    assert samples[("prefork_reloads_total", (("result", "ok"),))] == 0
    assert samples[("prefork_listen_queue_connections", (("listener", "127.0.0.1:80"),))] == 4
    assert samples[("prefork_slow_clients_closed_total", (("phase", "write"),))] == 0
    assert samples[("prefork_tls_handshake_failures_total", ())] == 0


def test_openmetrics_exposition_parses() -> None:
    text = generate_openmetrics(_registry()).decode()
    assert text.endswith("# EOF\n")
    families = {family.name: family for family in parse_openmetrics(text)}
    assert families["prefork_requests"].type == "counter"
    assert families["prefork_request_duration_seconds"].type == "histogram"


# -- why a worker is replaced -------------------------------------------------------


def _worker(generation: int = 2, **fields: object) -> WorkerRecord:
    worker = WorkerRecord(Config.build({}), 1, generation)
    worker.ever_ready = True
    for name, value in fields.items():
        setattr(worker, name, value)
    return worker


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({}, "crash"),
        ({"ever_ready": False}, None),  # a boot failure: not a replacement of a serving one
        ({"killed_for": "sent no heartbeat for 31.0s (timeout)"}, "timeout"),
        ({"expected_exit": True, "recycle": True}, "recycle"),
        ({"expected_exit": True, "generation": 1}, "reload"),
        ({"expected_exit": True}, None),  # TTOU
    ],
    ids=["crash", "boot-failure", "watchdog", "recycle", "reload", "fewer-workers"],
)
def test_restart_reason(fields: dict[str, object], reason: str | None) -> None:
    assert restart_reason(_worker(**fields), serving_generation=2) == reason
