"""Real ASGI frameworks from PyPI served by prefork over real sockets.

One server per framework (module-scoped), the same endpoints in each
(``common``), checked the same way with httpx and raw sockets. The app is
named as ``MODULE:ATTR`` and its interface is found by ``auto``.
"""

from __future__ import annotations

import hashlib
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import wait_until
from tests.e2e.conftest import ServerProcess, launch_server
from tests.grid import common

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
FRAMEWORKS = ["starlette", "fastapi", "django", "quart", "litestar"]
# Django refuses the lifespan scope: served without it (lifespan = auto).
WITHOUT_LIFESPAN = {"django"}


@pytest.fixture(scope="module", params=FRAMEWORKS)
def server(request: pytest.FixtureRequest) -> Iterator[tuple[str, ServerProcess]]:
    name = request.param
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    proc = launch_server(
        REPO,
        "-c",
        str(REPO / "tests" / "grid" / "grid.toml"),
        target=f"tests.grid.{name}_app:app",
        env=env,
    )
    try:
        yield name, proc
    finally:
        proc.stop()


@pytest.fixture
def client(server: tuple[str, ServerProcess]) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=f"http://127.0.0.1:{server[1].port}", timeout=20) as c:
        yield c


def test_hello(client: httpx.Client) -> None:
    r = client.get("/hello")
    assert r.status_code == 200
    assert r.text == common.HELLO
    assert r.headers["content-type"].startswith("text/plain")
    assert r.headers["content-length"] == str(len(common.HELLO))


def test_head_has_no_body(server: tuple[str, ServerProcess]) -> None:
    reply = _raw(server[1], b"HEAD /hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ")
    assert body == b""


def test_json_with_query_args(client: httpx.Client) -> None:
    r = client.get("/json", params={"name": "café au lait", "n": "3"})
    assert r.status_code == 200
    assert r.json() == {"name": "café au lait", "n": 3}


def test_echo(client: httpx.Client) -> None:
    body = bytes(range(256)) * 17
    r = client.post("/echo", content=body, headers={"content-type": "application/x-grid"})
    assert r.status_code == 200
    assert r.content == body
    assert r.headers["content-type"].startswith("application/x-grid")


def test_streamed_upload_5mib(client: httpx.Client) -> None:
    data = os.urandom(5 * 1024 * 1024)

    def pieces() -> Iterator[bytes]:
        for start in range(0, len(data), 256 * 1024):
            yield data[start : start + 256 * 1024]

    r = client.post("/upload", content=pieces())  # chunked: no Content-Length
    assert r.status_code == 200, r.text
    assert r.json() == {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    r = client.post("/upload", content=data)  # with a Content-Length
    assert r.json() == {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def test_streamed_response(server: tuple[str, ServerProcess]) -> None:
    reply = _raw(server[1], b"GET /stream HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    head, _, body = reply.partition(b"\r\n\r\n")
    assert b"transfer-encoding: chunked" in head.lower()
    assert _dechunk(body) == b"".join(common.STREAM_PIECES)


def test_headers_repeated_both_ways(client: httpx.Client) -> None:
    r = client.get("/headers", headers=[("x-rep", "a"), ("x-rep", "b")])
    assert r.status_code == 200
    assert r.headers["x-seen"] == "a|b"
    assert r.headers.get_list("x-multi") == ["one", "two"]


@pytest.mark.parametrize("code", [201, 204, 304, 404, 500])
def test_status_codes(server: tuple[str, ServerProcess], code: int) -> None:
    reply = _raw(
        server[1], f"GET /status/{code} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()
    )
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(f"HTTP/1.1 {code} ".encode())
    assert body == b""
    if code in (204, 304):
        assert b"transfer-encoding" not in head.lower()
    if code == 204:
        assert b"content-length" not in head.lower()


def test_raising_route_gives_500_and_the_worker_lives(
    server: tuple[str, ServerProcess], client: httpx.Client
) -> None:
    r = client.get("/raise")
    assert r.status_code == 500
    assert client.get("/hello").text == common.HELLO
    # The same worker: none died and was replaced.
    assert server[1].log().count("spawned") == 1


def test_cookies(client: httpx.Client) -> None:
    r = client.get("/cookies")
    cookies = r.headers.get_list("set-cookie")
    assert len(cookies) == 2
    assert {c.split(";")[0] for c in cookies} == {"a=1", "b=2"}
    r = client.get("/cookies/echo", headers={"cookie": "a=1; b=2"})
    assert r.json() == {"a": "1", "b": "2"}


@pytest.mark.parametrize("encoding", ["identity", "gzip"])
def test_big_response(client: httpx.Client, encoding: str) -> None:
    r = client.get("/big", headers={"accept-encoding": encoding})
    assert r.status_code == 200
    assert len(r.content) == len(common.BIG)
    assert hashlib.sha256(r.content).digest() == hashlib.sha256(common.BIG).digest()


def test_client_leaving_mid_stream(server: tuple[str, ServerProcess], client: httpx.Client) -> None:
    before = client.get("/left").json()["left"]
    with server[1].connect() as s:
        s.sendall(b"GET /endless HTTP/1.1\r\nHost: x\r\n\r\n")
        got = 0
        while got < 256 * 1024:
            data = s.recv(65536)
            assert data
            got += len(data)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    # The stream stops (its generator is closed) and the worker goes on serving.
    wait_until(lambda: client.get("/left").json()["left"] > before, timeout=10)
    assert client.get("/hello").text == common.HELLO


def test_lifespan_state(server: tuple[str, ServerProcess], client: httpx.Client) -> None:
    name, proc = server
    state = client.get("/state").json()["state"]
    if name in WITHOUT_LIFESPAN:
        assert state is None
        proc.wait_log("does not support lifespan")
    else:
        assert state == common.STATE_VALUE


def test_keep_alive_and_pipelining(server: tuple[str, ServerProcess]) -> None:
    request = b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n"
    with server[1].connect() as s:
        s.sendall(request * 3 + b"GET /hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = _read_all(s)
    assert data.count(b"HTTP/1.1 200 ") == 4
    assert data.count(common.HELLO.encode()) == 4


# -- helpers ------------------------------------------------------------------


def _raw(proc: ServerProcess, request: bytes) -> bytes:
    with proc.connect() as s:
        s.sendall(request)
        return _read_all(s)


def _read_all(s: socket.socket) -> bytes:
    chunks = []
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        data = s.recv(65536)
        if not data:
            break
        chunks.append(data)
    return b"".join(chunks)


def _dechunk(body: bytes) -> bytes:
    out = []
    while True:
        size_line, _, body = body.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            return b"".join(out)
        out.append(body[:size])
        body = body[size + 2 :]
