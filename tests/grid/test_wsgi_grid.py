"""The WSGI grid: one endpoint set served by a bare PEP 3333 app (under
``wsgiref.validate``), Flask and Django, each by a real ``prefork run`` over
real sockets; then the thread pool's promises (a slow app stalls no other
connection's I/O, never a 503, throughput scales with ``wsgi_threads``).
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import wait_until
from tests.e2e.conftest import ServerProcess, StartServer, launch_server, start_server
from tests.grid.wsgi_files import CONTENT

__all__ = ["start_server"]  # the fixture, for the tests below

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
APPS = {
    "raw": "tests.grid.wsgi_raw_app:app",
    "flask": "tests.grid.flask_app:app",
    "django": "tests.grid.django_wsgi_app:app",
}
BIG = 10 * 1024 * 1024


@pytest.fixture(scope="module", params=sorted(APPS))
def grid(request: pytest.FixtureRequest) -> Iterator[tuple[str, ServerProcess]]:
    name = request.param
    server = launch_server(ROOT, "-w", "1", "--interface", "wsgi", target=APPS[name])
    try:
        yield name, server
    finally:
        server.stop()
        log = server.log()
        # The validator's findings are AssertionErrors (its warnings are made errors).
        assert "AssertionError" not in log, log
        assert "WSGIWarning" not in log, log


def _conn(server: ServerProcess) -> http.client.HTTPConnection:
    return http.client.HTTPConnection("127.0.0.1", server.port, timeout=20)


def _get(
    server: ServerProcess, path: str, method: str = "GET", **kw: object
) -> tuple[http.client.HTTPResponse, bytes]:
    conn = _conn(server)
    try:
        conn.request(method, path, **kw)  # type: ignore[arg-type]
        resp = conn.getresponse()
        return resp, resp.read()
    finally:
        conn.close()


def test_hello_keep_alive_and_head(grid: tuple[str, ServerProcess]) -> None:
    _, server = grid
    conn = _conn(server)
    for _ in range(3):  # one connection, kept alive
        conn.request("GET", "/hello")
        resp = conn.getresponse()
        assert (resp.status, resp.read()) == (200, b"Hello, World!")
        assert resp.getheader("Content-Length") == "13"
        assert resp.getheader("Connection") is None
    conn.request("HEAD", "/hello")
    resp = conn.getresponse()
    assert resp.status == 200
    assert resp.getheader("Content-Length") == "13"
    assert resp.read() == b""
    conn.request("GET", "/hello")  # the HEAD left nothing behind on the connection
    assert conn.getresponse().read() == b"Hello, World!"
    conn.close()
    server.wait_log(r'127\.0\.0\.1 "GET /hello HTTP/1\.1" 200 13 ')
    server.wait_log(r'"HEAD /hello HTTP/1\.1" 200 0 ')


def test_pipelined_requests_are_answered_in_order(grid: tuple[str, ServerProcess]) -> None:
    _, server = grid
    with server.connect() as s:
        s.sendall(
            b"GET /json?name=one&n=1 HTTP/1.1\r\nHost: x\r\n\r\n"
            b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n"
            b"GET /json?name=three&n=3 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        data = _read_all(s)
    assert data.count(b"HTTP/1.1 200") == 3
    assert data.index(b'"one"') < data.index(b"Hello, World!") < data.index(b'"three"')


def test_json_with_query_args(grid: tuple[str, ServerProcess]) -> None:
    _, server = grid
    resp, body = _get(server, "/json?name=caf%C3%A9&n=3")
    assert resp.status == 200
    assert resp.getheader("Content-Type").startswith("application/json")
    assert json.loads(body) == {"name": "café", "n": 3}


def test_echo(grid: tuple[str, ServerProcess]) -> None:
    _, server = grid
    data = bytes(range(256)) * 40
    resp, body = _get(
        server, "/echo", "POST", body=data, headers={"Content-Type": "application/x-grid"}
    )
    assert resp.status == 200
    assert resp.getheader("Content-Type") == "application/x-grid"
    assert body == data


def test_upload_5_mib_checksum(grid: tuple[str, ServerProcess]) -> None:
    _, server = grid
    data = os.urandom(5 * 1024 * 1024)
    resp, body = _get(
        server, "/upload", "POST", body=data, headers={"Content-Type": "application/octet-stream"}
    )
    assert resp.status == 200
    assert json.loads(body) == {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def test_chunked_upload_reaches_the_app_whole(grid: tuple[str, ServerProcess]) -> None:
    _, server = grid
    data = os.urandom(100_000)
    resp, body = _get(
        server,
        "/upload",
        "POST",
        body=iter([data[:30_000], data[30_000:]]),
        headers={"Content-Type": "application/octet-stream"},
        encode_chunked=True,
    )
    assert resp.status == 200
    assert json.loads(body)["sha256"] == hashlib.sha256(data).hexdigest()


def test_streamed_response_is_chunked(grid: tuple[str, ServerProcess]) -> None:
    _, server = grid
    resp, body = _get(server, "/stream?n=50")
    assert resp.status == 200
    assert resp.getheader("Transfer-Encoding") == "chunked"
    assert body == b"".join(f"chunk {i}\n".encode() for i in range(50))


def test_streamed_response_compressed_and_head(grid: tuple[str, ServerProcess]) -> None:
    import gzip

    _, server = grid
    expected = b"".join(f"chunk {i}\n".encode() for i in range(500))
    resp, body = _get(server, "/stream?n=500", headers={"Accept-Encoding": "gzip"})
    assert resp.getheader("Content-Encoding") == "gzip"
    assert resp.getheader("Transfer-Encoding") == "chunked"
    assert gzip.decompress(body) == expected
    conn = _conn(server)
    conn.request("HEAD", "/endless")  # HEAD asks the app for no block of its body
    resp = conn.getresponse()
    assert (resp.status, resp.read()) == (200, b"")
    conn.request("GET", "/hello")
    assert conn.getresponse().read() == b"Hello, World!"
    conn.close()


def test_expect_100_continue(grid: tuple[str, ServerProcess]) -> None:
    _, server = grid
    data = os.urandom(200_000)
    with server.connect() as s:
        s.sendall(
            b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\n"
            b"Content-Length: %d\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n" % len(data)
        )
        assert s.recv(1024).startswith(b"HTTP/1.1 100 Continue\r\n\r\n")
        s.sendall(data)
        answer = _read_all(s)
    assert answer.startswith(b"HTTP/1.1 200")
    assert json.loads(answer.partition(b"\r\n\r\n")[2])["sha256"] == (
        hashlib.sha256(data).hexdigest()
    )


def test_streamed_response_on_http_10_is_close_delimited(
    grid: tuple[str, ServerProcess],
) -> None:
    _, server = grid
    with server.connect() as s:
        s.sendall(b"GET /stream?n=3 HTTP/1.0\r\n\r\n")
        data = _read_all(s)
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert b"transfer-encoding" not in head.lower()
    assert b"connection: close" in head.lower()
    assert body == b"chunk 0\nchunk 1\nchunk 2\n"


def test_http_10_keep_alive(grid: tuple[str, ServerProcess]) -> None:
    _, server = grid
    with server.connect() as s:
        answers = []
        for _ in range(2):
            s.sendall(b"GET /hello HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            data = b""
            while not data.endswith(b"Hello, World!"):
                more = s.recv(65536)
                assert more, data
                data += more
            answers.append(data)
    for data in answers:
        assert b"\r\nconnection: keep-alive\r\n" in data.lower()


def test_repeated_headers_both_ways(grid: tuple[str, ServerProcess]) -> None:
    _, server = grid
    conn = _conn(server)
    conn.putrequest("GET", "/headers")
    conn.putheader("X-Test", "1")
    conn.putheader("X-Test", "2")
    conn.putheader("X_Test", "smuggled")  # an underscore twin: never reaches the app
    conn.endheaders()
    resp = conn.getresponse()
    assert json.loads(resp.read()) == {"x_test": "1, 2"}
    assert ", ".join(resp.headers.get_all("X-Multi")) == "a, b"
    conn.close()


@pytest.mark.parametrize("code", [200, 201, 204, 304, 500])
def test_status_codes(grid: tuple[str, ServerProcess], code: int) -> None:
    _, server = grid
    conn = _conn(server)
    conn.request("GET", f"/status/{code}")
    resp = conn.getresponse()
    body = resp.read()
    assert resp.status == code
    if code in (204, 304):
        assert body == b""
        assert resp.getheader("Transfer-Encoding") is None
    else:
        assert body == f"status {code}".encode()
    conn.request("GET", "/hello")  # the connection is still in step
    assert conn.getresponse().read() == b"Hello, World!"
    conn.close()


def test_raising_route_is_a_500_and_logged(grid: tuple[str, ServerProcess]) -> None:
    name, server = grid
    resp, _ = _get(server, "/raise")
    assert resp.status == 500
    server.wait_log(r'"GET /raise HTTP/1\.1" 500 ')
    if name == "raw":  # Flask and Django answer their own 500
        server.wait_log(r"app tests\.grid\.wsgi_raw_app:app raised on GET /raise")
    assert _get(server, "/hello")[1] == b"Hello, World!"


def test_cookies(grid: tuple[str, ServerProcess]) -> None:
    _, server = grid
    resp, body = _get(server, "/cookies", headers={"Cookie": "x=1; y=two"})
    assert json.loads(body) == {"x": "1", "y": "two"}
    cookies = resp.headers.get_all("Set-Cookie")
    assert sorted(c.split(";")[0] for c in cookies) == ["a=1", "b=2"]


def test_10_mib_response(grid: tuple[str, ServerProcess]) -> None:
    _, server = grid
    resp, body = _get(server, "/big")
    assert resp.status == 200
    assert resp.getheader("Content-Length") == str(BIG)
    assert body == b"x" * BIG


def test_gzip_when_asked(grid: tuple[str, ServerProcess]) -> None:
    _, server = grid
    import gzip

    resp, body = _get(server, "/big", headers={"Accept-Encoding": "gzip"})
    assert resp.getheader("Content-Encoding") == "gzip"
    assert "Accept-Encoding" in resp.getheader("Vary", "")
    assert gzip.decompress(body) == b"x" * BIG


def test_a_file(grid: tuple[str, ServerProcess]) -> None:
    name, server = grid
    resp, body = _get(server, "/file")
    assert body == CONTENT
    if name != "raw":  # (the validator hides the file wrapper: streamed chunked)
        assert resp.getheader("Content-Length") == str(len(CONTENT))


def test_client_leaving_mid_stream_closes_the_iterable(grid: tuple[str, ServerProcess]) -> None:
    _, server = grid
    before = json.loads(_get(server, "/closed")[1])["closed"]
    with server.connect() as s:
        s.sendall(b"GET /endless HTTP/1.1\r\nHost: x\r\n\r\n")
        got = 0
        while got < 1024 * 1024:
            data = s.recv(65536)
            assert data
            got += len(data)
    wait_until(lambda: json.loads(_get(server, "/closed")[1])["closed"] > before, timeout=20)
    assert _get(server, "/hello")[1] == b"Hello, World!"


def _read_all(s: socket.socket) -> bytes:
    out = []
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        data = s.recv(65536)
        if not data:
            break
        out.append(data)
    return b"".join(out)


# -- the thread pool ---------------------------------------------------------

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


def _start_sleepy(start_server: StartServer, tmp_path: Path, threads: int) -> ServerProcess:
    config = tmp_path / f"threads{threads}.toml"
    config.write_text(f"wsgi_threads = {threads}\n")
    return start_server(SLEEPY_APP, "-w", "1", "-c", str(config), target="app:app")


def test_busy_threads_stall_no_io_and_no_503(start_server: StartServer, tmp_path: Path) -> None:
    server = _start_sleepy(start_server, tmp_path, threads=2)
    events: list[str] = []
    lock = threading.Lock()

    def slow(n: int) -> None:
        resp, _body = _get(server, "/slow?1.5")
        with lock:
            events.append(f"slow {resp.status}")

    workers = [threading.Thread(target=slow, args=(n,)) for n in range(2)]
    for t in workers:
        t.start()
    time.sleep(0.3)  # both threads are in the app now
    # A third connection: the loop still reads, parses and answers what needs no thread ...
    with server.connect() as s:
        s.sendall(b"GET / HTTP/1.1\r\n\r\n")  # no Host: 400 from the loop
        answer = _read_all(s)
    with lock:
        events.append("bad request " + answer.split(b" ", 2)[1].decode())
    # ... and a request that needs a thread waits for one: no 503.
    resp, _body = _get(server, "/fast")
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
        resp, body = _get(server, "/slow?1.0")
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
                resp, _ = _get(server, "/slow?0.1")
                assert resp.status == 200

        clients = [threading.Thread(target=one) for _ in range(8)]
        started = time.monotonic()
        for t in clients:
            t.start()
        for t in clients:
            t.join(timeout=30)
        elapsed = time.monotonic() - started
        return elapsed, int(_get(server, "/most")[1])

    one_thread, most_one = run(1)
    eight_threads, most_eight = run(8)
    # 16 calls of 100 ms from 8 clients: one at a time, then eight at a time.
    assert most_one == 1
    assert 4 <= most_eight <= 8  # (all 8 at once unless the machine is very busy)
    assert one_thread >= 1.6
    assert eight_threads < one_thread / 2, (one_thread, eight_threads)


# -- PEP 3333's rules, served ------------------------------------------------

RULES_APP = """
import json, os, sys

FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "served.bin")
with open(FILE, "wb") as f:
    f.write(bytes(range(256)) * 4096)  # 1 MiB

def app(environ, start_response):
    path = environ["PATH_INFO"]
    text = [("Content-Type", "text/plain")]
    if path.startswith("/env"):
        keys = ("SCRIPT_NAME", "PATH_INFO", "QUERY_STRING", "SERVER_PROTOCOL")
        body = json.dumps({k: environ[k] for k in keys}).encode()
        start_response("200 OK", text)
        return [body]
    if path == "/who":
        who = {
            "client": environ["REMOTE_ADDR"],
            "port": "REMOTE_PORT" in environ,
            "scheme": environ["wsgi.url_scheme"],
            "host": environ.get("HTTP_HOST"),
        }
        start_response("200 OK", text)
        return [json.dumps(who).encode()]
    if path == "/bad-status":
        start_response("200", text)
        return [b"never"]
    if path == "/twice":
        start_response("200 OK", text)
        start_response("200 OK", text)
        return [b"never"]
    if path == "/hop":
        start_response("200 OK", [*text, ("Connection", "close")])
        return [b"never"]
    if path == "/non-str":
        start_response("200 OK", [*text, ("X-Count", 3)])
        return [b"never"]
    if path == "/no-start":
        return [b"never"]
    if path == "/none":
        start_response("200 OK", text)
        return None
    if path == "/exc-before":
        start_response("200 OK", text)
        try:
            raise ValueError("late")
        except ValueError:
            start_response("503 Busy", text, sys.exc_info())
        return [b"replaced"]
    if path == "/exc-after":
        write = start_response("200 OK", text)
        write(b"partial")
        try:
            raise ValueError("after the head")
        except ValueError:
            start_response("500 Oops", text, sys.exc_info())
        return [b"never"]
    if path == "/raise-mid-stream":
        start_response("200 OK", text)
        def gen():
            yield b"first block"
            raise RuntimeError("mid-stream")
        return gen()
    if path == "/short":
        start_response("200 OK", [*text, ("Content-Length", "10")])
        def gen():
            yield b"12345"
        return gen()
    if path == "/write":
        write = start_response("200 OK", text)
        write(b"hello ")
        return [b"world"]
    if path == "/reason":
        start_response("299 Custom Reason", text)
        return [b"ok"]
    if path == "/file":
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return environ["wsgi.file_wrapper"](open(FILE, "rb"), 8192)
    start_response("404 Not Found", text)
    return [b"not found"]
"""


@pytest.fixture
def rules(start_server: StartServer, tmp_path: Path) -> ServerProcess:
    config = tmp_path / "rules.toml"
    config.write_text('root_path = "/api"\n')
    return start_server(RULES_APP, "-w", "1", "-c", str(config), target="app:app")


def test_environ_script_name_and_path_info(rules: ServerProcess) -> None:
    _, body = _get(rules, "/api/env/caf%C3%A9%2Fx?q=%20")
    assert json.loads(body) == {
        "SCRIPT_NAME": "/api",
        "PATH_INFO": "/env/caf\xc3\xa9/x",  # percent-decoded bytes as latin-1 (PEP 3333)
        "QUERY_STRING": "q=%20",
        "SERVER_PROTOCOL": "HTTP/1.1",
    }
    # Outside root_path: SCRIPT_NAME still says where the app is mounted.
    _resp, body = _get(rules, "/env")
    assert json.loads(body)["PATH_INFO"] == "/env"


def test_a_trusted_proxy_names_the_client_scheme_and_host(rules: ServerProcess) -> None:
    _, body = _get(rules, "/api/who", headers={"Host": "inner:8080"})
    assert json.loads(body) == {
        "client": "127.0.0.1",
        "port": True,
        "scheme": "http",
        "host": "inner:8080",
    }
    # 127.0.0.1 is in forwarded_allow_ips by default: its word is believed.
    forwarded = {
        "Host": "inner:8080",
        "X-Forwarded-For": "203.0.113.7",
        "X-Forwarded-Proto": "https",
        "X-Forwarded-Host": "example.com",
    }
    _, body = _get(rules, "/api/who", headers=forwarded)
    assert json.loads(body) == {
        "client": "203.0.113.7",
        "port": False,
        "scheme": "https",
        "host": "example.com",
    }
    rules.wait_log(r'203\.0\.113\.7 "GET /api/who HTTP/1\.1" 200 ')


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("/bad-status", "bad status '200'"),
        ("/twice", "start_response called a second time without exc_info"),
        ("/hop", "hop-by-hop header 'Connection'"),
        ("/non-str", "header ('X-Count', 3): name and value must be str"),
        ("/no-start", "the app returned without calling start_response"),
        ("/none", "the app returned NoneType, not an iterable"),
    ],
)
def test_bad_start_response_use_is_a_500_naming_the_app(
    rules: ServerProcess, path: str, reason: str
) -> None:
    resp, _ = _get(rules, f"/api{path}")
    assert resp.status == 500
    rules.wait_log(r"app app:app broke PEP 3333 on GET /api" + re.escape(f"{path}: {reason}"))


def test_exc_info_before_the_head_replaces_the_response(rules: ServerProcess) -> None:
    resp, body = _get(rules, "/api/exc-before")
    assert (resp.status, resp.reason, body) == (503, "Busy", b"replaced")


@pytest.mark.parametrize("path", ["/exc-after", "/raise-mid-stream", "/short"])
def test_failure_after_the_head_cuts_the_connection(rules: ServerProcess, path: str) -> None:
    conn = _conn(rules)
    conn.request("GET", f"/api{path}")
    resp = conn.getresponse()
    assert resp.status == 200
    with pytest.raises(http.client.IncompleteRead):
        resp.read()
    conn.close()
    assert _get(rules, "/api/write")[1] == b"hello world"  # the worker serves on


def test_write_callable_and_the_apps_reason_phrase(rules: ServerProcess) -> None:
    resp, body = _get(rules, "/api/write")
    assert (resp.status, resp.getheader("Transfer-Encoding"), body) == (
        200,
        "chunked",
        b"hello world",
    )
    resp, _ = _get(rules, "/api/reason")
    assert (resp.status, resp.reason) == (299, "Custom Reason")


def test_file_wrapper_over_tls_is_read_not_sendfile(
    start_server: StartServer, tmp_path: Path
) -> None:
    import ssl

    import trustme

    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert.private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "server.pem"))
    pem = str(tmp_path / "server.pem")
    server = start_server(
        RULES_APP, "-w", "1", "--certfile", pem, "--keyfile", pem, target="app:app"
    )
    context = ssl.create_default_context()
    ca.configure_trust(context)
    conn = http.client.HTTPSConnection("127.0.0.1", server.port, timeout=20, context=context)
    conn.request("GET", "/file")
    resp = conn.getresponse()
    assert resp.read() == bytes(range(256)) * 4096
    conn.request("GET", "/env")  # the TLS connection is still in step
    assert json.loads(conn.getresponse().read())["PATH_INFO"] == "/env"
    conn.close()


def test_a_client_that_stops_reading_holds_the_stream_back(
    grid: tuple[str, ServerProcess],
) -> None:
    import psutil

    _, server = grid
    worker = psutil.Process(server.pid).children()[0]
    before = worker.memory_info().rss
    with server.connect() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        s.sendall(b"GET /endless HTTP/1.1\r\nHost: x\r\n\r\n")
        time.sleep(1.0)  # the app could make gigabytes meanwhile
        grown = worker.memory_info().rss - before
    assert grown < 32 * 1024 * 1024, grown


def test_file_wrapper(rules: ServerProcess) -> None:
    expected = bytes(range(256)) * 4096
    resp, body = _get(rules, "/api/file")
    assert resp.getheader("Content-Length") == str(len(expected))
    assert body == expected
    resp, body = _get(rules, "/api/file", "HEAD")
    assert (resp.getheader("Content-Length"), body) == (str(len(expected)), b"")
