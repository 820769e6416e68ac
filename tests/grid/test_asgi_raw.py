"""The ASGI rules through a plain ASGI app (``raw_app``) served by prefork over real sockets."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import trustme

from tests.conftest import wait_until
from tests.e2e.conftest import ServerProcess, launch_server
from tests.e2e.helpers import Wire, request

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
TARGET = "tests.grid.raw_app:app"


def _env(**extra: str) -> dict[str, str]:
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    return {"PYTHONPATH": path, **extra}


def _config(directory: Path, text: str) -> str:
    path = directory / "prefork.toml"
    path.write_text(text)
    return str(path)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    config = _config(tmp_path_factory.mktemp("raw"), "max_body_size = 1048576\n")
    proc = launch_server(REPO, "-c", config, target=TARGET, env=_env())
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture
def client(server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=f"http://127.0.0.1:{server.port}", timeout=20) as c:
        yield c


def exchange(server: ServerProcess, request: bytes) -> tuple[bytes, bytes]:
    """Send ``request`` on a fresh connection; (head, rest) of what came back before the close."""
    with server.connect() as s:
        s.sendall(request)
        data = read_all(s)
    head, _, rest = data.partition(b"\r\n\r\n")
    return head, rest


def read_all(s: socket.socket, timeout: float = 20) -> bytes:
    chunks = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            data = s.recv(65536)
        except ConnectionResetError:
            break
        if not data:
            break
        chunks.append(data)
    return b"".join(chunks)


def get(path: str, extra: str = "") -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{extra}\r\n".encode()


def dechunk(body: bytes) -> tuple[bytes, bool]:
    """The body of a chunked message and whether its last chunk came."""
    out = []
    while body:
        size_line, sep, body = body.partition(b"\r\n")
        if not sep:
            return b"".join(out), False
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            return b"".join(out), True
        out.append(body[:size])
        body = body[size + 2 :]
    return b"".join(out), False


# -- the scope ----------------------------------------------------------------


def test_scope(server: ServerProcess) -> None:
    _head, body = exchange(
        server,
        b"POST /scope/caf%C3%A9%20x?a=1&b=%20 HTTP/1.1\r\nHost: example.com\r\n"
        b"X-Rep: one\r\nX-Rep: two\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc",
    )
    scope = json.loads(body)
    assert scope["type"] == "http"
    assert scope["asgi"] == {"version": "3.0", "spec_version": "2.5"}
    assert scope["http_version"] == "1.1"
    assert scope["method"] == "POST"
    assert scope["scheme"] == "http"
    assert scope["path"] == "/scope/café x"
    assert scope["raw_path"] == "/scope/caf%C3%A9%20x"
    assert scope["query_string"] == "a=1&b=%20"
    assert scope["root_path"] == ""
    assert scope["headers"] == [
        ["host", "example.com"],
        ["x-rep", "one"],
        ["x-rep", "two"],
        ["content-length", "3"],
        ["connection", "close"],
    ]
    assert scope["client"][0] == "127.0.0.1"
    assert scope["server"] == ["127.0.0.1", server.port]
    assert scope["extensions"] == ["http.response.pathsend"]
    assert scope["tls"] is None
    assert scope["body_len"] == 3


def test_trusted_proxy_sets_client_and_scheme(server: ServerProcess) -> None:
    # 127.0.0.1 is a trusted proxy by default (forwarded_allow_ips).
    _, body = exchange(
        server, get("/scope", "X-Forwarded-For: 203.0.113.7\r\nX-Forwarded-Proto: https\r\n")
    )
    scope = json.loads(body)
    assert scope["client"] == ["203.0.113.7", 0]
    assert scope["scheme"] == "https"
    server.wait_log(r"203\.0\.113\.7 \"GET /scope")  # the access log names the client too


def test_lifespan_state_is_copied_into_each_scope(client: httpx.Client) -> None:
    # The first request writes into its copy; the next one does not see it.
    assert client.get("/scope").json()["state"] == {"started": "yes"}
    assert client.get("/scope").json()["state"] == {"started": "yes"}


def test_root_path(tmp_path: Path) -> None:
    config = _config(tmp_path, 'root_path = "/mount"\n')
    proc = launch_server(REPO, "-c", config, target=TARGET, env=_env())
    try:
        _, body = exchange(proc, get("/scope/x%2Fy"))
    finally:
        proc.stop()
    scope = json.loads(body)
    assert scope["root_path"] == "/mount"
    assert scope["path"] == "/mount/scope/x/y"
    assert scope["raw_path"] == "/mount/scope/x%2Fy"


def test_tls_scope_and_extension(tmp_path: Path) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("localhost")
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.private_key_and_cert_chain_pem.write_to_path(str(cert_path))
    cert.private_key_pem.write_to_path(str(key_path))
    args = ("--certfile", str(cert_path), "--keyfile", str(key_path))
    proc = launch_server(REPO, *args, target=TARGET, env=_env())
    try:
        ctx = ssl.create_default_context()
        ca.configure_trust(ctx)
        with (
            socket.create_connection(("127.0.0.1", proc.port), timeout=10) as raw,
            ctx.wrap_socket(raw, server_hostname="localhost") as s,
        ):
            s.sendall(get("/scope"))
            data = read_all(s)
    finally:
        proc.stop()
    scope = json.loads(data.partition(b"\r\n\r\n")[2])
    assert scope["scheme"] == "https"
    assert "tls" in scope["extensions"]
    tls = scope["tls"]
    assert tls["tls_version"] in (0x0303, 0x0304)
    assert isinstance(tls["cipher_suite"], int)
    assert tls["client_cert_chain"] == []
    assert tls["server_cert"].startswith("-----BEGIN CERTIFICATE-----")
    assert tls["server_cert"].strip() in cert.cert_chain_pems[0].bytes().decode()


# -- request bodies -------------------------------------------------------------


def test_small_body_is_one_event_large_and_chunked_are_streamed(client: httpx.Client) -> None:
    assert client.post("/count-events", content=b"x" * 1000).text == "1 1000"
    events, size = map(int, client.post("/count-events", content=b"x" * 900_000).text.split())
    assert size == 900_000
    assert events >= 2
    pieces = iter([b"a" * 100_000] * 5)
    events, size = map(int, client.post("/count-events", content=pieces).text.split())
    assert size == 500_000


def test_a_client_cannot_send_faster_than_the_app_reads(tmp_path: Path) -> None:
    """Flow control: while the app does not read, the server stops reading the socket."""
    total = 64 * 1024 * 1024
    config = _config(tmp_path, f"max_body_size = {total}\n")
    proc = launch_server(REPO, "-c", config, target=TARGET, env=_env())
    try:
        with proc.connect() as s:
            s.sendall(
                b"POST /slow-reader HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % total
            )
            s.setblocking(False)
            piece = b"f" * 65536
            accepted = 0
            stalled_since = time.monotonic()
            while time.monotonic() - stalled_since < 0.5 and accepted < total:
                try:
                    accepted += s.send(piece[: total - accepted])
                    stalled_since = time.monotonic()
                except BlockingIOError:
                    time.sleep(0.01)
            # Server-side buffering is bounded (256 KiB) plus the kernel's socket
            # buffers: far from the whole body.
            assert accepted < total // 4
            with httpx.Client(base_url=f"http://127.0.0.1:{proc.port}", timeout=20) as c:
                assert c.get("/release").text == "released"
            s.setblocking(True)
            s.settimeout(30)
            while accepted < total:
                accepted += s.send(piece[: total - accepted])
            reply = read_until(s, str(total).encode())
    finally:
        proc.stop()
    assert reply.startswith(b"HTTP/1.1 200 ")
    assert reply.endswith(str(total).encode())


def read_until(s: socket.socket, end: bytes) -> bytes:
    data = b""
    deadline = time.monotonic() + 30
    while not data.endswith(end) and time.monotonic() < deadline:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def test_expect_continue_only_when_the_app_reads(server: ServerProcess) -> None:
    head = "POST {} HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n"
    with server.connect() as s:
        s.sendall(head.format("/echo").encode())
        first = s.recv(100)
        assert first == b"HTTP/1.1 100 Continue\r\n\r\n"
        s.sendall(b"hello")
        reply = s.recv(65536)
        assert reply.startswith(b"HTTP/1.1 200 ")
        assert reply.endswith(b"hello")
    with server.connect() as s:
        s.sendall(head.format("/no-read").encode())
        reply = read_all(s)
    assert reply.startswith(b"HTTP/1.1 200 ")
    assert b"100 Continue" not in reply
    assert b"connection: close" in reply.lower()  # the unread body is not read after it


def test_content_length_over_the_limit_is_refused_before_the_app(server: ServerProcess) -> None:
    head, _ = exchange(server, b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 2000000\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413 ")


def test_chunked_body_growing_past_the_limit_ends_the_request(server: ServerProcess) -> None:
    piece = b"%x\r\n%s\r\n" % (65536, b"z" * 65536)
    with server.connect() as s:
        s.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        try:
            for _ in range(40):  # 2.5 MiB against a 1 MiB limit
                s.sendall(piece)
        except (BrokenPipeError, ConnectionResetError):
            pass
        reply = read_all(s)
    assert reply.startswith(b"HTTP/1.1 413 ")


def test_pipelined_requests_behind_a_streamed_body(server: ServerProcess) -> None:
    big = b"q" * 200_000
    request = b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(big), big)
    with server.connect() as s:
        s.sendall(request + get("/echo").replace(b"GET", b"POST", 1))
        data = read_all(s)
    assert data.count(b"HTTP/1.1 200 ") == 2
    assert big in data


# -- responses ----------------------------------------------------------------


def test_streamed_response_is_chunked(server: ServerProcess) -> None:
    head, rest = exchange(server, get("/stream"))
    assert b"Transfer-Encoding: chunked" in head
    body, complete = dechunk(rest)
    assert complete
    assert body == b"".join(f"piece {i}\n".encode() * 100 for i in range(4))


def test_streamed_response_with_content_length(server: ServerProcess) -> None:
    head, rest = exchange(server, get("/stream-length"))
    assert b"Content-Length: 12" in head
    assert b"chunked" not in head.lower()
    assert rest == b"hello world!"


def test_http10_stream_is_close_delimited(server: ServerProcess) -> None:
    head, rest = exchange(server, b"GET /stream HTTP/1.0\r\n\r\n")
    assert b"chunked" not in head.lower()
    assert rest == b"".join(f"piece {i}\n".encode() * 100 for i in range(4))


def test_head_gets_no_body(server: ServerProcess) -> None:
    for path in ("/stream", "/echo", "/big-text"):
        head, rest = exchange(server, get(path).replace(b"GET", b"HEAD", 1))
        assert head.startswith(b"HTTP/1.1 200 ")
        assert rest == b""


@pytest.mark.parametrize("code", [204, 304])
def test_bodyless_status(server: ServerProcess, code: int) -> None:
    head, rest = exchange(server, get(f"/status?{code}"))
    assert head.startswith(f"HTTP/1.1 {code} ".encode())
    assert rest == b""
    assert b"content-length" not in head.lower()


def test_compressed_whole_and_streamed(client: httpx.Client) -> None:
    r = client.get("/big-text", headers={"accept-encoding": "gzip"})
    assert r.headers["content-encoding"] == "gzip"
    assert r.content == b"compress me please " * 20000
    r = client.get("/stream-text", headers={"accept-encoding": "gzip"})
    assert r.headers["content-encoding"] == "gzip"
    assert r.headers["transfer-encoding"] == "chunked"
    assert r.content == b"compress me please " * 5000
    assert gzip.decompress(gzip.compress(r.content)) == r.content


def test_pathsend(client: httpx.Client, tmp_path: Path) -> None:
    for size in (1000, 3 * 1024 * 1024 + 7):
        path = tmp_path / f"file{size}"
        data = os.urandom(size)
        path.write_bytes(data)
        r = client.get(f"/pathsend?{path}", headers={"accept-encoding": "identity"})
        assert r.status_code == 200
        assert hashlib.sha256(r.content).digest() == hashlib.sha256(data).digest()


def test_websocket_upgrade_is_answered_cleanly(server: ServerProcess) -> None:
    # The websocket scope reaches the app, which answers it with http.response
    # messages: an app error, answered 500 before any accept.
    head, _ = exchange(
        server,
        b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    assert head.startswith(b"HTTP/1.1 500 ")


# -- errors -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "logged"),
    [
        ("/fail-before-start", "raised on GET /fail-before-start"),
        ("/return-without-response", "returned without sending a response"),
        ("/bad-type", "unexpected message type 'http.response.bogus'"),
        ("/bad-body", "body is str, not bytes"),
        ("/bad-status", "bad status '200'"),
        ("/bad-header", "CR, LF or NUL"),
        ("/str-header", "is not bytes"),
        ("/trailers", "trailers are not supported"),
    ],
)
def test_app_errors_before_the_head_give_500(server: ServerProcess, path: str, logged: str) -> None:
    head, rest = exchange(server, get(path))
    assert head.startswith(b"HTTP/1.1 500 ")
    assert b"x-injected" not in head + rest
    line = server.wait_log(f"ASGI app {TARGET}.*{logged}")
    assert line


@pytest.mark.parametrize("path", ["/fail-after-start", "/return-mid-stream"])
def test_app_errors_after_the_head_truncate(server: ServerProcess, path: str) -> None:
    head, rest = exchange(server, get(path))
    assert head.startswith(b"HTTP/1.1 200 ")
    body, complete = dechunk(rest)
    assert body.startswith(b"part")
    assert not complete  # never a false complete response


def test_disconnect_reaches_receive(server: ServerProcess, client: httpx.Client) -> None:
    with server.connect() as s:
        s.sendall(b"POST /watch-disconnect HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
        time.sleep(0.2)
    wait_until(lambda: client.get("/record").json().get("disconnect") == "http.disconnect")


def test_send_after_the_client_left_raises_oserror(
    server: ServerProcess, client: httpx.Client
) -> None:
    with server.connect() as s:
        s.sendall(get("/send-after-leaving"))
        got = 0
        while got < 100_000:
            data = s.recv(65536)
            assert data
            got += len(data)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    wait_until(
        lambda: client.get("/record").json().get("send_error") == ["ClientDisconnected", True]
    )


def test_worker_survived_all_of_it(server: ServerProcess, client: httpx.Client) -> None:
    assert client.get("/echo").status_code == 200
    assert server.log().count("spawned") == 1


# -- lifespan -----------------------------------------------------------------


def test_lifespan_on_failed_startup_stops_the_boot(tmp_path: Path) -> None:
    config = _config(tmp_path, 'lifespan = "on"\n')
    cmd = [sys.executable, "-m", "prefork", "run", TARGET, "-b", "127.0.0.1:0", "-c", config]
    env = {**os.environ, **_env(RAW_APP_FAIL_STARTUP="1")}
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert "lifespan startup failed: no database today" in done.stderr


def test_lifespan_shutdown_after_a_graceful_stop(tmp_path: Path) -> None:
    marker = tmp_path / "shutdown"
    proc = launch_server(
        REPO, "-w", "2", target=TARGET, env=_env(RAW_APP_SHUTDOWN_FILE=str(marker))
    )
    proc.wait_log(r"worker 1 .* ready")
    proc.wait_log(r"worker 2 .* ready")
    exchange(proc, get("/echo"))
    assert proc.stop() == 0
    assert marker.read_text() == "shutdown\n" * 2  # once per worker


def test_lifespan_auto_without_support(tmp_path: Path) -> None:
    (tmp_path / "nolifespan.py").write_text(
        "async def app(scope, receive, send):\n"
        "    if scope['type'] != 'http':\n"
        "        raise ValueError('only http here')\n"
        "    await send({'type': 'http.response.start', 'status': 200, 'headers': []})\n"
        "    await send({'type': 'http.response.body', 'body': b'ok'})\n"
    )
    proc = launch_server(tmp_path, target="nolifespan:app", env=_env())
    try:
        proc.wait_log("does not support lifespan .*ValueError: only http here")
        head, rest = exchange(proc, get("/"))
    finally:
        proc.stop()
    assert head.startswith(b"HTTP/1.1 200 ")
    assert rest == b"ok"


def test_context_vars_stay_with_their_request(server: ServerProcess) -> None:
    """A ContextVar an app sets (and never resets) is its request's, as in a
    task per request: it survives the app's awaits, and the next request on
    the same keep-alive connection does not see it."""
    with Wire(server.port) as wire:
        wire.send(request("/context-set?first"))
        assert wire.read_response().body == b"first"
        wire.send(request("/context-get"))
        assert wire.read_response().body == b"unset"
        # Pipelined: the second request is read while the first is answered.
        wire.send(request("/context-set?second") + request("/context-get"))
        assert wire.read_response().body == b"second"
        assert wire.read_response().body == b"unset"
