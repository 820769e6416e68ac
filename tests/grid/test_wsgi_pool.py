"""The WSGI thread pool, served: busy threads stall no I/O and cause no 503, a graceful
stop lets a call finish, throughput scales with ``wsgi_threads``."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from tests.e2e.conftest import ServerProcess, StartServer, start_server
from tests.grid.wsgi_client import connect, get, read_all

__all__ = ["start_server"]  # the fixture, for the tests below

pytestmark = pytest.mark.e2e


SLEEPY_APP = """
import threading, time

lock = threading.Lock()
running = 0
most = 0  # the most calls in the app at once

def app(environ, start_response):
    global running, most
    body = b"ok"
    if environ["PATH_INFO"] == "/slow":
        with lock:
            running += 1
            most = max(most, running)
        time.sleep(float(environ["QUERY_STRING"] or "0.05"))
        with lock:
            running -= 1
    elif environ["PATH_INFO"] == "/most":
        body = str(most).encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
"""


def _start_sleepy(
    start_server: StartServer, tmp_path: Path, threads: int, extra: str = ""
) -> ServerProcess:
    config = tmp_path / f"threads{threads}.toml"
    config.write_text(f"wsgi_threads = {threads}\n{extra}")
    return start_server(SLEEPY_APP, "-w", "1", "-c", str(config), target="app:app")


def test_a_call_longer_than_the_idle_and_header_timeouts_is_answered(
    start_server: StartServer, tmp_path: Path
) -> None:
    # The request goes to a thread straight from the protocol callback while
    # the connection's coroutine stays parked where the idle (or header)
    # deadline was armed: that deadline must not run while the app works.
    server = _start_sleepy(
        start_server,
        tmp_path,
        threads=2,
        extra="keepalive_idle_timeout = 1\nrequest_header_timeout = 1\n",
    )
    conn = connect(server)
    try:
        for _ in range(2):  # the first under the header deadline, the second the idle one
            conn.request("GET", "/slow?1.6")
            resp = conn.getresponse()
            assert (resp.status, resp.read()) == (200, b"ok")
    finally:
        conn.close()
    # Pipelined behind a slow call: answered in order, on one connection.
    with server.connect() as s:
        s.sendall(
            b"GET /slow?0.3 HTTP/1.1\r\nHost: x\r\n\r\n"
            b"GET /most HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        answer = read_all(s)
    assert answer.count(b"HTTP/1.1 200 OK") == 2, answer
    assert answer.index(b"\r\n\r\nok") < answer.rindex(b"\r\n\r\n")


def test_busy_threads_stall_no_io_and_no_503(start_server: StartServer, tmp_path: Path) -> None:
    server = _start_sleepy(start_server, tmp_path, threads=2)
    events: list[str] = []
    lock = threading.Lock()

    def slow(n: int) -> None:
        resp, _body = get(server, "/slow?1.5")
        with lock:
            events.append(f"slow {resp.status}")

    workers = [threading.Thread(target=slow, args=(n,)) for n in range(2)]
    for t in workers:
        t.start()
    time.sleep(0.3)  # both threads are in the app now
    # A third connection: the loop still reads, parses and answers what needs no thread ...
    with server.connect() as s:
        s.sendall(b"GET / HTTP/1.1\r\n\r\n")  # no Host: 400 from the loop
        answer = read_all(s)
    with lock:
        events.append("bad request " + answer.split(b" ", 2)[1].decode())
    # ... and a request that needs a thread waits for one: no 503.
    resp, _body = get(server, "/fast")
    with lock:
        events.append(f"fast {resp.status}")
    for t in workers:
        t.join(timeout=20)
    assert events[0] == "bad request 400", events
    assert sorted(events[1:]) == ["fast 200", "slow 200", "slow 200"], events


def test_graceful_stop_lets_a_running_call_finish(
    start_server: StartServer, tmp_path: Path
) -> None:
    import signal

    server = _start_sleepy(start_server, tmp_path, threads=2)
    got: list[tuple[int, bytes]] = []

    def slow() -> None:
        resp, body = get(server, "/slow?1.0")
        got.append((resp.status, body))

    client = threading.Thread(target=slow)
    client.start()
    time.sleep(0.3)  # the call is in the app
    assert server.stop(signal.SIGTERM) == 0
    client.join(timeout=20)
    assert got == [(200, b"ok")]
    assert "still running at shutdown" not in server.log()


def test_throughput_scales_with_threads(start_server: StartServer, tmp_path: Path) -> None:
    def run(threads: int) -> tuple[float, int]:
        server = _start_sleepy(start_server, tmp_path, threads)

        def one() -> None:
            for _ in range(2):
                resp, _ = get(server, "/slow?0.1")
                assert resp.status == 200

        clients = [threading.Thread(target=one) for _ in range(8)]
        started = time.monotonic()
        for t in clients:
            t.start()
        for t in clients:
            t.join(timeout=30)
        elapsed = time.monotonic() - started
        return elapsed, int(get(server, "/most")[1])

    one_thread, most_one = run(1)
    eight_threads, most_eight = run(8)
    # 16 calls of 100 ms from 8 clients: one at a time, then eight at a time.
    assert most_one == 1
    assert 4 <= most_eight <= 8  # (all 8 at once unless the machine is very busy)
    assert one_thread >= 1.6
    assert eight_threads < one_thread / 2, (one_thread, eight_threads)


@pytest.mark.parametrize("after", ["idle", "a stalled head", "a stalled body"])
def test_deadlines_hold_after_a_response_handed_back_from_the_pool(
    start_server: StartServer, tmp_path: Path, after: str
) -> None:
    """A quick call's response is written as the pool hands it back, and the
    connection goes on from the protocol callback (its coroutine never woke):
    it must still be timed as any other. An idle connection closes after
    keepalive_idle_timeout, a head or body that stalls after its timeout."""
    server = _start_sleepy(
        start_server,
        tmp_path,
        threads=2,
        extra="keepalive_idle_timeout = 1\nrequest_header_timeout = 1\nrequest_body_timeout = 1\n",
    )
    stalls = {
        "idle": b"",
        "a stalled head": b"GET / HTTP/1.1\r\nHost:",
        "a stalled body": b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc",
    }
    with server.connect() as s:
        for _ in range(3):  # answered in turn on one keep-alive connection
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            reply = b""
            while not reply.endswith(b"\r\n\r\nok"):
                data = s.recv(65536)
                assert data, reply
                reply += data
        s.sendall(stalls[after])
        started = time.monotonic()
        rest = read_all(s)  # until the server closes the connection
        waited = time.monotonic() - started
    assert 0.5 < waited < 5, (after, waited, rest)


def test_pipelined_quick_calls_are_all_answered_in_order(
    start_server: StartServer, tmp_path: Path
) -> None:
    """Requests pipelined in one write: each is parsed once the one before it
    is answered, also when that answer is written as the pool hands it back."""
    server = _start_sleepy(start_server, tmp_path, threads=2)
    for attempt in range(5):
        with server.connect() as s:
            s.settimeout(5)
            # (A call that takes a moment: its answer comes back after the loop
            # has gone idle, and the next request waits unparsed behind it.)
            heads = ["GET /slow?0.01 HTTP/1.1\r\nHost: x\r\n\r\n"] * 5
            s.sendall(
                "".join(heads).encode()
                + b"GET /most HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
            )
            answer = read_all(s)
        assert answer.count(b"HTTP/1.1 200 OK") == 6, (attempt, answer)
