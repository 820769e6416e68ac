"""The WSGI grid: one endpoint set served by a bare PEP 3333 app (under
``wsgiref.validate``), Flask and Django, each by a real ``prefork run`` over
real sockets (one server per framework for the module).

The thread pool's promises are in test_wsgi_pool.py, PEP 3333's rules served
in test_wsgi_rules.py.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import wait_until
from tests.e2e.conftest import ServerProcess, launch_server, start_server
from tests.grid.wsgi_client import connect, get, read_all
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


def test_hello_keep_alive_and_head(grid: tuple[str, ServerProcess]) -> None:
    _, server = grid
    conn = connect(server)
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
        data = read_all(s)
    assert data.count(b"HTTP/1.1 200") == 3
    assert data.index(b'"one"') < data.index(b"Hello, World!") < data.index(b'"three"')


def test_json_with_query_args(grid: tuple[str, ServerProcess]) -> None:
    _, server = grid
    resp, body = get(server, "/json?name=caf%C3%A9&n=3")
    assert resp.status == 200
    assert resp.getheader("Content-Type").startswith("application/json")
    assert json.loads(body) == {"name": "café", "n": 3}


def test_echo(grid: tuple[str, ServerProcess]) -> None:
    _, server = grid
    data = bytes(range(256)) * 40
    resp, body = get(
        server, "/echo", "POST", body=data, headers={"Content-Type": "application/x-grid"}
    )
    assert resp.status == 200
    assert resp.getheader("Content-Type") == "application/x-grid"
    assert body == data


def test_upload_5_mib_checksum(grid: tuple[str, ServerProcess]) -> None:
    _, server = grid
    data = os.urandom(5 * 1024 * 1024)
    resp, body = get(
        server, "/upload", "POST", body=data, headers={"Content-Type": "application/octet-stream"}
    )
    assert resp.status == 200
    assert json.loads(body) == {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def test_chunked_upload_reaches_the_app_whole(grid: tuple[str, ServerProcess]) -> None:
    _, server = grid
    data = os.urandom(100_000)
    resp, body = get(
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
    resp, body = get(server, "/stream?n=50")
    assert resp.status == 200
    assert resp.getheader("Transfer-Encoding") == "chunked"
    assert body == b"".join(f"chunk {i}\n".encode() for i in range(50))


def test_streamed_response_compressed_and_head(grid: tuple[str, ServerProcess]) -> None:
    import gzip

    _, server = grid
    expected = b"".join(f"chunk {i}\n".encode() for i in range(500))
    resp, body = get(server, "/stream?n=500", headers={"Accept-Encoding": "gzip"})
    assert resp.getheader("Content-Encoding") == "gzip"
    assert resp.getheader("Transfer-Encoding") == "chunked"
    assert gzip.decompress(body) == expected
    conn = connect(server)
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
        answer = read_all(s)
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
        data = read_all(s)
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
    conn = connect(server)
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
    conn = connect(server)
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
    resp, _ = get(server, "/raise")
    assert resp.status == 500
    server.wait_log(r'"GET /raise HTTP/1\.1" 500 ')
    if name == "raw":  # Flask and Django answer their own 500
        server.wait_log(r"app tests\.grid\.wsgi_raw_app:app raised on GET /raise")
    assert get(server, "/hello")[1] == b"Hello, World!"


def test_cookies(grid: tuple[str, ServerProcess]) -> None:
    _, server = grid
    resp, body = get(server, "/cookies", headers={"Cookie": "x=1; y=two"})
    assert json.loads(body) == {"x": "1", "y": "two"}
    cookies = resp.headers.get_all("Set-Cookie")
    assert sorted(c.split(";")[0] for c in cookies) == ["a=1", "b=2"]


def test_10_mib_response(grid: tuple[str, ServerProcess]) -> None:
    _, server = grid
    resp, body = get(server, "/big")
    assert resp.status == 200
    assert resp.getheader("Content-Length") == str(BIG)
    assert body == b"x" * BIG


def test_gzip_when_asked(grid: tuple[str, ServerProcess]) -> None:
    _, server = grid
    import gzip

    resp, body = get(server, "/big", headers={"Accept-Encoding": "gzip"})
    assert resp.getheader("Content-Encoding") == "gzip"
    assert "Accept-Encoding" in resp.getheader("Vary", "")
    assert gzip.decompress(body) == b"x" * BIG


def test_a_file(grid: tuple[str, ServerProcess]) -> None:
    name, server = grid
    resp, body = get(server, "/file")
    assert body == CONTENT
    if name != "raw":  # (the validator hides the file wrapper: streamed chunked)
        assert resp.getheader("Content-Length") == str(len(CONTENT))


def test_client_leaving_mid_stream_closes_the_iterable(grid: tuple[str, ServerProcess]) -> None:
    _, server = grid
    before = json.loads(get(server, "/closed")[1])["closed"]
    with server.connect() as s:
        s.sendall(b"GET /endless HTTP/1.1\r\nHost: x\r\n\r\n")
        got = 0
        while got < 1024 * 1024:
            data = s.recv(65536)
            assert data
            got += len(data)
    wait_until(lambda: json.loads(get(server, "/closed")[1])["closed"] > before, timeout=20)
    assert get(server, "/hello")[1] == b"Hello, World!"


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
