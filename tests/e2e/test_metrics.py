"""``metrics_bind``: /metrics of the whole server, scraped from a real ``prefork run``.

Known traffic goes to two workers; the scraped counts must match it exactly,
also after a reload (HUP), a max_requests recycle and a SIGKILLed worker, and
no counter may ever go down between two scrapes. Every loop is bounded; the
numbers reach the master with the workers' heartbeats, so each check waits
(``wait_until``) for the expected value instead of sleeping.
"""

from __future__ import annotations

import concurrent.futures
import http.client
import json
import os
import re
import signal
import socket
import ssl
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
import trustme
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as parse_openmetrics,
)
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import wait_until
from tests.e2e.conftest import PROBE, ServerProcess, StartServer

pytestmark = pytest.mark.e2e

APP = """
import os


def handle(method, path, args, headers, body, ctx):
    if path == "/missing":
        return "no", 404, None
    if path == "/spin":
        while True:  # a blocked event loop: the master's watchdog kills this worker
            pass
    if path == "/big":
        return b"x" * (32 * 1024 * 1024), 200, None
    if method == "POST":
        return body, 200, None
    return str(os.getpid()), 200, None
"""

# A heartbeat (and so a snapshot) every worker_timeout / 4 = 0.5 s.
BASE_CONFIG: dict[str, object] = {
    "worker_timeout": 2,
    "graceful_timeout": 5,
    "log_level": "info",
    "metrics_bind": "127.0.0.1:0",
}
METRICS_RE = r"metrics on http://127\.0\.0\.1:(\d+)/metrics"
READY_RE = re.compile(r"worker \d+ \(pid (\d+), gen (\d+)\) ready")

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


class Scraper:
    """Scrapes one server's /metrics and checks that no counter ever went down."""

    def __init__(self, server: ServerProcess) -> None:
        self.server = server
        self.port = int(server.wait_log(METRICS_RE).group(1))
        self.history: list[Samples] = []

    def raw(
        self, accept: str | None = None, method: str = "GET", path: str = "/metrics"
    ) -> tuple[int, str, str]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.request(method, path, headers={"Accept": accept} if accept else {})
            resp = conn.getresponse()
            return resp.status, resp.getheader("content-type") or "", resp.read().decode()
        finally:
            conn.close()

    def scrape(self) -> Samples:
        status, _, text = self.raw()
        assert status == 200
        samples: Samples = {}
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
        for earlier in self.history[-1:]:
            for key, value in earlier.items():
                if key[0].endswith(("_total", "_bucket", "_count", "_sum")):
                    assert samples.get(key, 0.0) >= value, (key, value, samples.get(key))
        self.history.append(samples)
        return samples

    def value(self, name: str, **labels: str) -> float:
        return self.scrape().get((name, tuple(sorted(labels.items()))), 0.0)

    def wait_value(self, expected: float, name: str, **labels: str) -> None:
        """Wait until the metric is ``expected``; then check it stays so over a heartbeat."""
        wait_until(lambda: self.value(name, **labels) >= expected, timeout=10)
        time.sleep(0.6)
        assert self.value(name, **labels) == expected, (name, labels)

    def requests(self, method: str = "GET", status: str = "2xx") -> float:
        return self.value("prefork_requests_total", method=method, status=status)


@pytest.fixture
def serve(start_server: StartServer, tmp_path: Path) -> Any:
    """Start APP with ``workers`` and config keys; wait until all are ready; (server, scraper)."""

    def start(workers: int = 2, *args: str, **config: object) -> tuple[ServerProcess, Scraper]:
        conf = tmp_path / "prefork.toml"
        values = {**BASE_CONFIG, "workers": workers, **config}
        conf.write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in values.items()))
        server = start_server(APP, "-c", str(conf), *args)
        wait_until(lambda: len(READY_RE.findall(server.log())) >= workers, timeout=15)
        scraper = Scraper(server)
        # The fixture's readiness probe: a request without Host (400, method unknown),
        # or over TLS a handshake. Counted before the test's own traffic.
        if server.scheme == "https":
            scraper.wait_value(1, "prefork_tls_handshakes_total")
        else:
            scraper.wait_value(1, "prefork_requests_total", method="other", status="4xx")
        return server, scraper

    return start


def send(port: int, n: int, method: str = "GET", path: str = "/", body: bytes = b"") -> list[str]:
    """``n`` requests, each on its own connection, up to 8 at once; the bodies.

    At once so that both workers get some: one at a time, the worker that just
    answered may win every accept.
    """

    def one(_: int) -> str:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            conn.request(method, path, body=body or None, headers={"Connection": "close"})
            resp = conn.getresponse()
            text = resp.read().decode()
            if path == "/":
                assert resp.status == 200
            return text
        finally:
            conn.close()

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        return list(pool.map(one, range(n)))


def serving(server: ServerProcess, scraper: Scraper, workers: int) -> None:
    scraper.wait_value(workers, "prefork_workers", state="serving")


# -- counts of known traffic ---------------------------------------------------


def test_requests_of_two_workers_are_counted_by_method_and_status(serve: Any) -> None:
    server, scraper = serve(workers=2)
    bodies: list[str] = []
    for _ in range(10):  # bounded: until both workers answered some (a body is a pid)
        bodies += send(server.port, 10)
        if len(set(bodies)) == 2:
            break
    gets = len(bodies)
    assert len(set(bodies)) == 2, "one worker took every connection"
    send(server.port, 7, path="/missing")
    send(server.port, 5, method="POST", path="/echo", body=b"x" * 1000)
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(PROBE)  # what the readiness probe sent: a 400 before any handler
        answer = b""
        while chunk := sock.recv(4096):
            answer += chunk
    rejected = len(answer.partition(b"\r\n\r\n")[2])
    scraper.wait_value(gets, "prefork_requests_total", method="GET", status="2xx")
    scraper.wait_value(7, "prefork_requests_total", method="GET", status="4xx")
    scraper.wait_value(5, "prefork_requests_total", method="POST", status="2xx")
    scraper.wait_value(2, "prefork_requests_total", method="other", status="4xx")
    samples = scraper.scrape()
    total = gets + 7 + 5 + 2
    assert samples[("prefork_request_duration_seconds_count", ())] == total
    assert samples[("prefork_request_duration_seconds_bucket", (("le", "+Inf"),))] == total
    assert samples[("prefork_request_body_bytes_total", ())] == 5 * 1000
    body_out = sum(map(len, bodies)) + 7 * len("no") + 5 * 1000 + 2 * rejected
    assert samples[("prefork_response_body_bytes_total", ())] == body_out
    assert samples[("prefork_workers", (("state", "serving"),))] == 2
    assert samples[("prefork_generation", ())] == 1
    for reason in ("crash", "timeout", "recycle", "reload"):
        assert samples[("prefork_worker_restarts_total", (("reason", reason),))] == 0


def test_counters_survive_a_reload(serve: Any) -> None:
    server, scraper = serve(workers=2)
    send(server.port, 20)
    scraper.wait_value(20, "prefork_requests_total", method="GET", status="2xx")
    os.kill(server.pid, signal.SIGHUP)
    scraper.wait_value(2, "prefork_generation")
    scraper.wait_value(2, "prefork_worker_restarts_total", reason="reload")
    scraper.wait_value(1, "prefork_reloads_total", result="ok")
    assert scraper.requests() == 20  # the old generation's counts are kept
    send(server.port, 15)
    scraper.wait_value(35, "prefork_requests_total", method="GET", status="2xx")
    serving(server, scraper, 2)


def test_a_failed_reload_is_counted(serve: Any, tmp_path: Path) -> None:
    server, scraper = serve(workers=1)
    (tmp_path / "prefork.toml").write_text("workers = -1\n")
    os.kill(server.pid, signal.SIGHUP)
    scraper.wait_value(1, "prefork_reloads_total", result="failed")
    assert scraper.value("prefork_generation") == 1


def test_counters_survive_a_max_requests_recycle(serve: Any) -> None:
    server, scraper = serve(workers=2, max_requests=20, max_requests_jitter=0)
    sent = 0
    deadline = time.monotonic() + 20
    while scraper.value("prefork_worker_restarts_total", reason="recycle") < 2:
        assert time.monotonic() < deadline, f"no recycling after {sent} requests"
        send(server.port, 10)
        sent += 10
    # A recycled worker drains and sends its final counts: nothing is lost.
    scraper.wait_value(sent, "prefork_requests_total", method="GET", status="2xx")


def test_counters_survive_a_sigkilled_worker(serve: Any) -> None:
    server, scraper = serve(workers=2)
    send(server.port, 30)
    scraper.wait_value(30, "prefork_requests_total", method="GET", status="2xx")
    victim = next(iter(psutil.Process(server.pid).children()))
    victim.kill()
    scraper.wait_value(1, "prefork_worker_restarts_total", reason="crash")
    serving(server, scraper, 2)
    # Its last heartbeat carried all 30 (it had been idle since): kept.
    assert scraper.requests() == 30
    send(server.port, 10)
    scraper.wait_value(40, "prefork_requests_total", method="GET", status="2xx")


def test_a_worker_killed_by_the_watchdog_is_a_timeout_restart(serve: Any) -> None:
    server, scraper = serve(workers=1)
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"GET /spin HTTP/1.1\r\nHost: x\r\n\r\n")
        scraper.wait_value(1, "prefork_worker_restarts_total", reason="timeout")
    assert scraper.value("prefork_worker_restarts_total", reason="crash") == 0
    serving(server, scraper, 1)


# -- connections ---------------------------------------------------------------


def test_open_and_idle_connections_and_the_listen_queue(serve: Any) -> None:
    # No rate rule: the two clients below that never read hold their slots.
    server, scraper = serve(workers=1, connection_limit=2, min_transfer_rate=0)
    held = []
    try:
        for _ in range(2):  # two keep-alive connections, idle after one request each
            sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            assert sock.recv(4096).startswith(b"HTTP/1.1 200")
            held.append(sock)
        scraper.wait_value(2, "prefork_connections_open")
        scraper.wait_value(2, "prefork_connections_idle")
        # Two responses the clients never read keep connection_limit's two slots
        # busy (idle connections do not count): three more wait in the queue.
        for _ in range(2):
            sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.sendall(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
            held.append(sock)
        scraper.wait_value(4, "prefork_connections_open")
        for _ in range(3):
            held.append(socket.create_connection(("127.0.0.1", server.port), timeout=10))
        listener = f"127.0.0.1:{server.port}"
        scraper.wait_value(3, "prefork_listen_queue_connections", listener=listener)
    finally:
        for sock in held:
            sock.close()
    scraper.wait_value(0, "prefork_connections_open")


@pytest.mark.parametrize(
    ("phase", "sent"),
    [
        ("header", b"GET / HTTP/1.1\r\nHost: x\r\n"),
        ("body", b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc"),
        ("write", b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n"),
    ],
    ids=["header", "body", "write"],
)
def test_slow_clients_closed_are_counted_by_phase(serve: Any, phase: str, sent: bytes) -> None:
    server, scraper = serve(
        workers=1,
        request_header_timeout=1,
        request_body_timeout=1,
        response_write_timeout=1,
    )
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        # A small receive buffer, never read: a 32 MiB response cannot be written.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.sendall(sent)
        scraper.wait_value(1, "prefork_slow_clients_closed_total", phase=phase)
    for other in {"header", "body", "write"} - {phase}:
        assert scraper.value("prefork_slow_clients_closed_total", phase=other) == 0


def test_tls_handshakes_and_failures(serve: Any, tmp_path: Path) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("localhost")
    cert.private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "key.pem"))
    pem = str(tmp_path / "key.pem")
    server, scraper = serve(1, "--certfile", pem, "--keyfile", pem, tls_handshake_timeout=1)
    context = ssl.create_default_context()
    ca.configure_trust(context)
    for _ in range(3):
        with (
            socket.create_connection(("127.0.0.1", server.port), timeout=10) as raw,
            context.wrap_socket(raw, server_hostname="localhost") as tls,
        ):
            tls.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            assert tls.recv(4096).startswith(b"HTTP/1.1 200")
    for _ in range(2):  # not TLS at all
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as raw:
            raw.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            raw.recv(4096)
    scraper.wait_value(1 + 3, "prefork_tls_handshakes_total")  # the probe's and ours
    scraper.wait_value(2, "prefork_tls_handshake_failures_total")


# -- the endpoint --------------------------------------------------------------


def test_openmetrics_when_the_scraper_asks_for_it(serve: Any) -> None:
    server, scraper = serve(workers=1)
    send(server.port, 3)
    wait_until(lambda: scraper.requests() == 3, timeout=10)
    status, content_type, text = scraper.raw(accept="application/openmetrics-text; version=1.0.0")
    assert status == 200
    assert content_type.startswith("application/openmetrics-text")
    families = {f.name: f for f in parse_openmetrics(text)}
    assert families["prefork_requests"].type == "counter"
    status, content_type, _ = scraper.raw()
    assert content_type.startswith("text/plain; version=0.0.4")


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [("GET", "/", 404), ("POST", "/metrics", 405), ("HEAD", "/metrics", 200)],
    ids=["other-path", "post", "head"],
)
def test_endpoint_answers_other_requests_clearly(
    serve: Any, method: str, path: str, status: int
) -> None:
    _, scraper = serve(workers=1)
    assert scraper.raw(method=method, path=path)[0] == status


def test_a_silent_scrape_connection_does_not_stall_the_master(serve: Any) -> None:
    server, scraper = serve(workers=1)
    with socket.create_connection(("127.0.0.1", scraper.port), timeout=10):
        # The master keeps supervising and answering other scrapes meanwhile.
        send(server.port, 2)
        scraper.wait_value(2, "prefork_requests_total", method="GET", status="2xx")


INTERFACE_APPS = """
async def asgi(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 404, "headers": []})
    await send({"type": "http.response.body", "body": b"gone"})


def wsgi(environ, start_response):
    start_response("404 Not Found", [("Content-Type", "text/plain")])
    return [b"gone"]
"""


@pytest.mark.parametrize("interface", ["asgi", "wsgi"])
def test_responses_of_an_asgi_and_a_wsgi_app_are_counted(
    start_server: StartServer, tmp_path: Path, interface: str
) -> None:
    conf = tmp_path / "prefork.toml"
    conf.write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in BASE_CONFIG.items()))
    server = start_server(
        INTERFACE_APPS, "-c", str(conf), "--interface", interface, target=f"app:{interface}"
    )
    scraper = Scraper(server)
    scraper.wait_value(1, "prefork_requests_total", method="other", status="4xx")  # the probe
    send(server.port, 6, method="DELETE", path="/x")
    scraper.wait_value(6, "prefork_requests_total", method="DELETE", status="4xx")
    assert scraper.value("prefork_request_duration_seconds_count") == 7


def test_a_metrics_port_in_use_stops_the_start_with_a_clear_message(
    start_server: StartServer, tmp_path: Path
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        conf = tmp_path / "prefork.toml"
        conf.write_text(f'metrics_bind = "127.0.0.1:{port}"\n')
        server = start_server(APP, "-c", str(conf), wait=False)
        assert server.proc.wait(timeout=20) != 0
    server.wait_log(rf"metrics_bind: cannot bind 127\.0\.0\.1:{port}")
