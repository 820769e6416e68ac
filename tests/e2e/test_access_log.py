"""The access line of a real ``prefork run``, field by field, as text and as JSON.

Read from the server's stderr (a pipe, and a file for the SIGUSR1 reopen).
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import wait_until
from tests.e2e.conftest import ServerProcess, StartServer

pytestmark = pytest.mark.e2e

APP = """
import os


def handle(method, path, args, headers, body, ctx):
    if path == "/strip":
        headers.pop("x-trace", None)  # what some apps and frameworks do
    if path == "/missing":
        return "nope", 404, None
    return str(os.getpid()), 200, None
"""

TEXT_RE = re.compile(
    r"^(?P<date>\d{4}-\d\d-\d\d) (?P<time>\d\d:\d\d:\d\d,\d{3}) \[(?P<pid>\d+)\] \[ACCESS\] "
    r'prefork\.access: (?P<client>\S+) "(?P<request>[^"]*)" (?P<status>\d{3}) (?P<bytes>\d+) '
    r"(?P<ms>\d+\.\d\d)ms(?: (?P<headers>.*))?$"
)
JSON_TIME_RE = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d")


@pytest.fixture
def serve(start_server: StartServer, tmp_path: Path) -> Any:
    def start(**config: object) -> ServerProcess:
        values = {"workers": 2, "log_headers": ["X-Trace", "user-agent"], **config}
        conf = tmp_path / "prefork.toml"
        conf.write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in values.items()))
        return start_server(APP, "-c", str(conf))

    return start


def request(port: int, head: bytes) -> tuple[bytes, bytes]:
    """Send one request head on a fresh connection; (status line, body) of the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(head)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head_part, _, body = data.partition(b"\r\n\r\n")
    return head_part.split(b"\r\n")[0], body


def get(port: int, target: str, *fields: str) -> tuple[bytes, bytes]:
    lines = [f"GET {target} HTTP/1.1", "Host: x", "Connection: close", *fields]
    return request(port, ("\r\n".join(lines) + "\r\n\r\n").encode())


def access_lines(server: ServerProcess, marker: str, count: int = 1) -> list[str]:
    """The access lines whose request carries ``marker``, once ``count`` of them were logged."""

    def found() -> list[str]:
        lines = [line for line in server.log().splitlines() if marker in line]
        return lines if len(lines) >= count else []

    result = wait_until(found, timeout=10)
    assert isinstance(result, list)
    return result


# -- text ----------------------------------------------------------------------


def test_text_line_field_by_field(serve: Any) -> None:
    server = serve()
    status, body = get(server.port, "/hello?acc=abc123&t=text", "X-Trace: t-1", "User-Agent: ua")
    assert status == b"HTTP/1.1 200 OK"
    (line,) = access_lines(server, "acc=abc123&t=text")
    match = TEXT_RE.match(line)
    assert match is not None, line
    assert match["pid"] == body.decode()  # written by the worker that answered
    assert match["client"] == "127.0.0.1"
    assert match["request"] == "GET /hello?acc=abc123&t=text HTTP/1.1"
    assert match["status"] == "200"
    assert int(match["bytes"]) == len(body)
    assert 0 < float(match["ms"]) < 10_000
    assert match["headers"] == 'x-trace="t-1" user-agent="ua"'


def test_text_line_keeps_a_header_the_handler_removed(serve: Any) -> None:
    server = serve()
    get(server.port, "/strip?t=strip", "X-Trace: kept")
    (line,) = access_lines(server, "/strip?t=strip")
    match = TEXT_RE.match(line)
    assert match is not None, line
    assert match["headers"] == 'x-trace="kept" user-agent="-"'


def test_text_line_of_a_rejected_request(serve: Any) -> None:
    server = serve()
    status, body = request(server.port, b"GET /x HTTP/1.1\r\nHost: x\r\nContent-Length: z\r\n\r\n")
    assert status.startswith(b"HTTP/1.1 400")
    # The fixture's readiness probe (no Host) was rejected too: two such lines.
    lines = access_lines(server, '"- - HTTP/1.1" 400', count=2)
    matches = [TEXT_RE.match(line) for line in lines]
    mine = [m for m in matches if m is not None and int(m["bytes"]) == len(body)]
    assert len(mine) == 1, lines
    assert (mine[0]["request"], mine[0]["client"]) == ("- - HTTP/1.1", "127.0.0.1")
    assert mine[0]["headers"] == 'x-trace="-" user-agent="-"'


# -- json ----------------------------------------------------------------------


def json_lines(server: ServerProcess, marker: str, count: int = 1) -> list[dict[str, Any]]:
    docs = []
    for line in access_lines(server, marker, count):
        assert line.startswith("{"), line  # nothing before the object
        docs.append(json.loads(line))
    return docs


def test_json_line_field_by_field(serve: Any) -> None:
    server = serve(access_log_format="json")
    status, body = get(server.port, "/hello?acc=abc123&t=json", "X-Trace: t-2")
    assert status == b"HTTP/1.1 200 OK"
    (doc,) = json_lines(server, "acc=abc123&t=json")
    assert JSON_TIME_RE.fullmatch(doc.pop("time"))
    assert 0 < doc.pop("duration_us") < 10_000_000
    assert doc == {
        "pid": int(body),
        "client": "127.0.0.1",
        "method": "GET",
        "target": "/hello?acc=abc123&t=json",
        "path": "/hello",
        "query": "acc=abc123&t=json",
        "version": "1.1",
        "status": 200,
        "bytes": len(body),
        "headers": {"x-trace": "t-2", "user-agent": None},
    }


def test_json_line_escapes_what_the_client_sent(serve: Any) -> None:
    server = serve(access_log_format="json")
    head = b'GET /q"\\?t=esc HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Trace: a\x85"b\r\n\r\n'
    assert request(server.port, head)[0] == b"HTTP/1.1 200 OK"
    (doc,) = json_lines(server, "t=esc")
    assert doc["target"] == '/q"\\?t=esc'
    assert doc["headers"]["x-trace"] == 'a\x85"b'


def test_json_lines_of_both_workers_and_a_404(serve: Any) -> None:
    server = serve(access_log_format="json")
    server.wait_log(r"worker 1 \(pid \d+, gen 1\) ready")
    server.wait_log(r"worker 2 \(pid \d+, gen 1\) ready")
    pids: set[int] = set()
    sent = 0
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        for _ in range(20):  # bounded: bursts of 8 until both workers answered
            targets = [f"/spread?t=spread{sent + k}" for k in range(8)]
            sent += 8
            for _, body in pool.map(lambda t: get(server.port, t), targets):
                pids.add(int(body))
            if len(pids) == 2:
                break
    assert len(pids) == 2
    get(server.port, "/missing?t=gone")
    docs = json_lines(server, "t=spread", count=sent)
    assert {doc["pid"] for doc in docs} == pids
    (missing,) = json_lines(server, "t=gone")
    assert (missing["status"], missing["bytes"]) == (404, len("nope"))


# -- SIGUSR1 reopen ------------------------------------------------------------


@pytest.fixture
def logged_to_file(tmp_path: Path) -> Iterator[Any]:
    """Start ``prefork run`` with stderr appended to a file (``2>>prefork.log``)."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(fmt: str) -> tuple[subprocess.Popen[bytes], Path, int]:
        (tmp_path / "app.py").write_text(textwrap.dedent(APP))
        conf = tmp_path / "prefork.toml"
        conf.write_text(f'workers = 2\naccess_log_format = "{fmt}"\n')
        path = tmp_path / "prefork.log"
        argv = [sys.executable, "-m", "prefork", "run", "app:handle", "-b", "127.0.0.1:0"]
        with open(path, "ab") as stderr:
            proc = subprocess.Popen(
                [*argv, "-c", str(conf)],
                cwd=tmp_path,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                process_group=0,
            )
        procs.append(proc)

        def port() -> int:
            found = re.search(r"listening on http://127\.0\.0\.1:(\d+)", path.read_text())
            return int(found[1]) if found else 0

        wait_until(lambda: path.read_text().count("ready") >= 2, timeout=20)
        return proc, path, int(wait_until(port, timeout=10))  # type: ignore[arg-type]

    yield start
    for proc in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=5)


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_usr1_reopens_the_log_file_after_a_rotation(logged_to_file: Any, fmt: str) -> None:
    proc, path, port = logged_to_file(fmt)
    get(port, "/before?t=rotate")
    wait_until(lambda: "/before?t=rotate" in path.read_text(), timeout=10)
    rotated = path.with_name("prefork.log.1")
    path.rename(rotated)  # what logrotate does, then it signals the master
    os.kill(proc.pid, signal.SIGUSR1)
    # The master and both workers reopen: three "reopening logs" lines in the new file.
    wait_until(lambda: path.exists() and path.read_text().count("reopening logs") >= 3)
    pids: set[int] = set()
    sent = 0
    # One request at a time may all land on the worker that just answered (the
    # kernel wakes whichever is ready first), so send bursts of 8 at once.
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        for _ in range(20):  # bounded: bursts until both workers wrote a line
            targets = [f"/after?t=rotate{sent + k}" for k in range(8)]
            sent += 8
            for _, body in pool.map(lambda t: get(port, t), targets):
                pids.add(int(body))
            if len(pids) == 2:
                break
    assert len(pids) == 2
    wait_until(lambda: path.read_text().count("/after?t=rotate") == sent, timeout=10)
    new = [line for line in path.read_text().splitlines() if "/after?t=rotate" in line]
    if fmt == "json":
        assert {json.loads(line)["pid"] for line in new} == pids
    else:
        assert {int(TEXT_RE.match(line)["pid"]) for line in new} == pids  # type: ignore[index]
    old = rotated.read_text()
    assert "/before?t=rotate" in old
    assert "/after?t=rotate" not in old


# -- the other app interfaces --------------------------------------------------

INTERFACE_APPS = """
import os


async def asgi(scope, receive, send):
    if scope["type"] != "http":
        return
    body = str(os.getpid()).encode()
    await send({"type": "http.response.start", "status": 201, "headers": []})
    await send({"type": "http.response.body", "body": body})


def wsgi(environ, start_response):
    start_response("201 Created", [("Content-Type", "text/plain")])
    return [str(os.getpid()).encode()]
"""


@pytest.mark.parametrize("interface", ["asgi", "wsgi"])
def test_json_line_of_an_asgi_and_a_wsgi_app(
    start_server: StartServer, tmp_path: Path, interface: str
) -> None:
    conf = tmp_path / "prefork.toml"
    conf.write_text('access_log_format = "json"\nlog_headers = ["x-trace"]\n')
    server = start_server(
        INTERFACE_APPS, "-c", str(conf), "--interface", interface, target=f"app:{interface}"
    )
    status, body = get(server.port, f"/{interface}?t=iface", "X-Trace: t-3")
    assert status.startswith(b"HTTP/1.1 201")
    (doc,) = json_lines(server, "t=iface")
    assert (doc["pid"], doc["status"], doc["bytes"]) == (int(body), 201, len(body))
    assert (doc["target"], doc["query"]) == (f"/{interface}?t=iface", "t=iface")
    assert doc["headers"] == {"x-trace": "t-3"}
