"""What the WSGI grid's tests share: a client over a fresh connection, reading to the end."""

from __future__ import annotations

import http.client
import socket
import time

from tests.e2e.conftest import ServerProcess


def connect(server: ServerProcess) -> http.client.HTTPConnection:
    return http.client.HTTPConnection("127.0.0.1", server.port, timeout=20)


def get(
    server: ServerProcess, path: str, method: str = "GET", **kw: object
) -> tuple[http.client.HTTPResponse, bytes]:
    """One request on a fresh connection: the response and its whole body."""
    conn = connect(server)
    try:
        conn.request(method, path, **kw)  # type: ignore[arg-type]
        resp = conn.getresponse()
        return resp, resp.read()
    finally:
        conn.close()


def read_all(s: socket.socket) -> bytes:
    """What ``s`` receives until the server closes it (at most 20 s)."""
    out = []
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        data = s.recv(65536)
        if not data:
            break
        out.append(data)
    return b"".join(out)
