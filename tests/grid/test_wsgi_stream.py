"""Streamed request bodies for WSGI apps (``wsgi.input`` read as the app reads it),
over real sockets to a real ``prefork run``: big uploads, 100-continue, backpressure,
413 for a chunked body past ``max_body_size``, a client leaving mid-body, Flask's
``request.stream``; and ``StreamedInput``'s file semantics against a real piece source."""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import threading
import time
from collections.abc import Iterator

import psutil
import pytest

from prefork.apps.wsgi_input import ClientDisconnected, InputError, StreamedInput
from prefork.http.request import Request
from tests.e2e.conftest import ServerProcess, launch_server
from tests.grid.wsgi_client import connect, read_all

MiB = 1024 * 1024

STREAM_APP = """
import hashlib, json, time
from urllib.parse import parse_qs

from flask import Flask, request

flask_app = Flask(__name__)


@flask_app.post("/flask/stream")
def flask_stream():
    h = hashlib.sha256()
    size = 0
    for block in iter(lambda: request.stream.read(8192), b""):
        h.update(block)
        size += len(block)
    return {"size": size, "sha256": h.hexdigest()}


def _json(start, obj, status="200 OK"):
    body = json.dumps(obj).encode()
    start(status, [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]


def _sum(stream, block):
    h = hashlib.sha256()
    size = 0
    while True:
        data = stream.read(block)
        if not data:
            return size, h.hexdigest()
        assert len(data) <= block
        h.update(data)
        size += len(data)


def app(environ, start):
    path = environ["PATH_INFO"]
    if path.startswith("/flask/"):
        return flask_app(environ, start)
    query = parse_qs(environ["QUERY_STRING"])
    stream = environ["wsgi.input"]
    if path == "/sum":
        time.sleep(float(query.get("sleep", ["0"])[0]))
        size, digest = _sum(stream, 8192)
        return _json(start, {
            "size": size,
            "sha256": digest,
            "content_length": environ.get("CONTENT_LENGTH"),
            "terminated": environ["wsgi.input_terminated"],
        })
    if path == "/catch":  # reads, reports the read error in the log, answers 200 anyway
        try:
            _sum(stream, 8192)
        except OSError as exc:
            environ["wsgi.errors"].write(
                f"caught {type(exc).__name__} status={getattr(exc, 'status', None)} "
                f"connection_error={isinstance(exc, ConnectionError)}\\n"
            )
        return _json(start, {"read": "all"})
    if path == "/late":  # starts its response, then reads
        write = start("200 OK", [("Content-Type", "text/plain")])
        write(b"partial")
        _sum(stream, 8192)
        return [b"never"]
    if path == "/ignore":  # answers without reading the body
        return _json(start, {"read": "nothing"})
    if path == "/lines":
        mode = query["mode"][0]
        if mode == "readline":
            lines = list(iter(stream.readline, b""))
        elif mode == "readlines":
            lines = stream.readlines()
        else:
            lines = list(stream)
        return _json(start, {
            "count": len(lines),
            "sha256": hashlib.sha256(b"".join(lines)).hexdigest(),
            "all_end_in_newline": all(line.endswith(b"\\n") for line in lines),
        })
    return _json(start, {"path": path}, "404 Not Found")
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    directory = tmp_path_factory.mktemp("wsgi_stream")
    (directory / "app.py").write_text(STREAM_APP)
    (directory / "stream.toml").write_text(f"max_body_size = {32 * MiB}\n")
    proc = launch_server(directory, "-w", "1", "-c", "stream.toml", target="app:app")
    yield proc
    proc.stop()


def _post(
    server: ServerProcess, path: str, body: object, **kw: object
) -> tuple[http.client.HTTPResponse, dict[str, object]]:
    conn = connect(server)
    try:
        conn.request("POST", path, body=body, **kw)  # type: ignore[arg-type]
        resp = conn.getresponse()
        return resp, json.loads(resp.read())
    finally:
        conn.close()


def _pieces(data: bytes, size: int) -> Iterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# -- uploads ------------------------------------------------------------------


def test_5_mib_with_content_length_read_in_8_kib_pieces_then_keep_alive(
    server: ServerProcess,
) -> None:
    data = os.urandom(5 * MiB)
    conn = connect(server)
    conn.request("POST", "/sum", body=data)
    resp = conn.getresponse()
    answer = json.loads(resp.read())
    assert answer == {
        "size": len(data),
        "sha256": _digest(data),
        "content_length": str(len(data)),
        "terminated": True,
    }
    # Read to its end: the connection stays open for the next request.
    assert resp.getheader("Connection") is None
    conn.request("POST", "/sum", body=b"small")
    assert json.loads(conn.getresponse().read())["sha256"] == _digest(b"small")
    conn.close()


def test_5_mib_chunked_is_streamed_without_content_length(server: ServerProcess) -> None:
    data = os.urandom(5 * MiB)
    resp, answer = _post(server, "/sum", _pieces(data, 64 * 1024), encode_chunked=True)
    assert resp.status == 200
    # Past the 1 MiB read-ahead, a chunked body's length is not known: no CONTENT_LENGTH.
    assert answer == {
        "size": len(data),
        "sha256": _digest(data),
        "content_length": None,
        "terminated": True,
    }


def test_readline_readlines_and_iteration_over_a_streamed_body(server: ServerProcess) -> None:
    data = b"".join(b"line %d %s\n" % (i, b"x" * (i % 300)) for i in range(3000))
    assert len(data) > 256 * 1024  # streamed, in several pieces
    for mode in ("readline", "readlines", "iter"):
        _, answer = _post(server, f"/lines?mode={mode}", data)
        assert answer == {"count": 3000, "sha256": _digest(data), "all_end_in_newline": True}


def test_flask_request_stream(server: ServerProcess) -> None:
    data = os.urandom(3 * MiB)
    resp, answer = _post(server, "/flask/stream", data)
    assert (resp.status, answer) == (200, {"size": len(data), "sha256": _digest(data)})
    resp, answer = _post(server, "/flask/stream", _pieces(data, 100_000), encode_chunked=True)
    assert (resp.status, answer) == (200, {"size": len(data), "sha256": _digest(data)})


# -- 100-continue ---------------------------------------------------------------


def _expect_head(path: str, length: int) -> bytes:
    return (
        b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n"
        b"Expect: 100-continue\r\nConnection: close\r\n\r\n" % (path.encode(), length)
    )


def test_100_continue_is_sent_when_the_app_reads_not_before(server: ServerProcess) -> None:
    data = os.urandom(300_000)
    with server.connect() as s:
        s.sendall(_expect_head("/sum?sleep=1.5", len(data)))
        s.settimeout(0.5)
        with pytest.raises(TimeoutError):  # the app sleeps: it has not read yet
            s.recv(1024)
        s.settimeout(10)
        assert s.recv(1024) == b"HTTP/1.1 100 Continue\r\n\r\n"
        s.sendall(data)
        head, _, body = read_all(s).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert json.loads(body)["sha256"] == _digest(data)


def test_no_100_continue_when_the_app_answers_without_reading(server: ServerProcess) -> None:
    with server.connect() as s:
        s.sendall(_expect_head("/ignore", 300_000))
        answer = read_all(s)  # the server closes after the response: the body is unwanted
    assert b"100 Continue" not in answer
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert b"connection: close" in head.lower()
    assert json.loads(body) == {"read": "nothing"}


# -- backpressure -----------------------------------------------------------------


def _worker(server: ServerProcess) -> psutil.Process:
    workers = psutil.Process(server.pid).children()
    assert len(workers) == 1
    return workers[0]


def test_a_body_sent_faster_than_the_app_reads_is_held_back(server: ServerProcess) -> None:
    total = 20 * MiB
    data = os.urandom(total)
    worker = _worker(server)
    before = worker.memory_info().rss
    print(f"worker RSS before: {before / MiB:.1f} MiB")
    sent = 0
    with server.connect(timeout=30) as s:
        s.sendall(
            b"POST /sum?sleep=3 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
            b"Content-Length: %d\r\n\r\n" % total
        )

        def send() -> None:
            nonlocal sent
            for piece in _pieces(data, 256 * 1024):
                s.sendall(piece)
                sent += len(piece)

        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        time.sleep(1.5)  # the app sleeps 3 s before reading
        held_at, grown = sent, worker.memory_info().rss - before
        sender.join(timeout=30)
        answer = read_all(s) if not sender.is_alive() else b""
    # The client is stopped by TCP flow control (what the kernel buffers on
    # loopback, a few MiB) and the worker holds at most a piece of the body.
    print(f"held at {held_at / MiB:.1f} MiB sent, worker grew {grown / MiB:.1f} MiB")
    assert held_at < total
    assert grown < 6 * MiB, f"the worker grew by {grown / MiB:.1f} MiB"
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert json.loads(body)["sha256"] == _digest(data)


# -- bodies that fail ---------------------------------------------------------------


def test_a_chunked_body_past_max_body_size_gets_413(server: ServerProcess) -> None:
    piece = os.urandom(MiB)
    with server.connect(timeout=20) as s:
        s.sendall(b"POST /catch HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")

        def send() -> None:
            try:
                for _ in range(40):  # 40 MiB, past the 32 MiB max_body_size
                    s.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
                s.sendall(b"0\r\n\r\n")
            except OSError:
                pass  # the server closed: expected

        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        answer = read_all(s)
        sender.join(timeout=20)
    # The app read into the limit, caught the error and answered 200: the 413 stands.
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b'"read"' not in answer
    server.wait_log(r"caught InputError status=413 connection_error=False")


def test_a_chunked_body_past_max_body_size_after_the_response_started_is_cut(
    server: ServerProcess,
) -> None:
    piece = os.urandom(MiB)
    received = []
    with server.connect(timeout=20) as s:
        s.sendall(b"POST /late HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")

        def send() -> None:
            try:
                for _ in range(40):
                    s.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
                s.sendall(b"0\r\n\r\n")
            except OSError:
                pass

        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        try:
            while data := s.recv(65536):
                received.append(data)
        except ConnectionResetError:
            pass  # the cut: what a reset looks like when it outruns the FIN
        sender.join(timeout=20)
    answer = b"".join(received)
    assert answer.startswith(b"HTTP/1.1 200")
    assert b"partial" in answer
    assert not answer.endswith(b"0\r\n\r\n")  # never the end of a chunked body
    assert b"413" not in answer


def test_a_client_leaving_mid_body_makes_read_raise(server: ServerProcess) -> None:
    with server.connect() as s:
        s.sendall(b"POST /catch HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % (4 * MiB))
        s.sendall(os.urandom(300_000))
        time.sleep(0.3)
    server.wait_log(r"caught ClientDisconnected status=\S+ connection_error=True")


# -- StreamedInput's file semantics, from a real piece source -------------------------


class _Pieces:
    """A body source handing out fixed pieces (what the loop does, without a loop)."""

    def __init__(self, pieces: list[bytes], error: InputError | None = None) -> None:
        self.pieces = pieces
        self.error = error
        self.calls = 0

    def receive_piece(self, body: StreamedInput) -> tuple[bytes, bool]:
        self.calls += 1
        if not self.pieces:
            assert self.error is not None
            raise self.error
        data = self.pieces.pop(0)
        return data, bool(self.pieces) or self.error is not None


def _input(
    pieces: list[bytes], first: bytes = b"", error: InputError | None = None
) -> StreamedInput:
    req = Request("POST", "/", "/", "", "1.1", {}, True)
    return StreamedInput(_Pieces(pieces, error), None, req, first)  # type: ignore[arg-type]


def test_read_n_spans_pieces_and_read_all_takes_the_rest() -> None:
    body = _input([b"defgh", b"ij", b"klmnop"], first=b"abc")
    assert body.read(2) == b"ab"
    assert body.read(5) == b"cdefg"
    assert body.read(0) == b""
    assert body.read(3) == b"hij"
    assert not body.complete
    assert body.read() == b"klmnop"
    assert body.complete
    assert (body.read(10), body.read(), body.readline()) == (b"", b"", b"")


def test_readline_with_and_without_a_limit_across_pieces() -> None:
    body = _input([b"ne\nsec", b"ond", b"\nthird"], first=b"first li")
    assert body.readline(4) == b"firs"
    assert body.readline() == b"t line\n"
    assert body.readline(7) == b"second\n"
    assert body.readline() == b"third"
    assert body.readline() == b""
    rest = _input([b"a\nbb\n", b"ccc\nd"])
    assert rest.readlines(3) == [b"a\n", b"bb\n"]
    assert list(rest) == [b"ccc\n", b"d"]


def test_a_failed_body_raises_an_oserror_on_every_read() -> None:
    body = _input([b"abc"], error=ClientDisconnected("gone"))
    assert body.read(3) == b"abc"
    with pytest.raises(ClientDisconnected) as caught:
        body.read(1)
    assert isinstance(caught.value, OSError)
    assert isinstance(caught.value, ConnectionError)
    assert body.cut
    assert not body.complete
    with pytest.raises(ClientDisconnected):
        body.readline()
