"""The WSGI grid's endpoints as a bare PEP 3333 app, wrapped in ``wsgiref.validate``.

Served by ``test_wsgi_grid.py`` (``tests.grid.wsgi_raw_app:app``). The
validator raises AssertionError on any breach of PEP 3333 by the app or the
server, and its warnings are made errors here, so any finding is a 500 the
tests see.
"""

from __future__ import annotations

import hashlib
import json
import threading
import warnings
from collections.abc import Iterator
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import parse_qs
from wsgiref.validate import WSGIWarning, validator

from tests.grid.wsgi_files import grid_file

warnings.simplefilter("error", WSGIWarning)

BIG = 10 * 1024 * 1024
BLOCK = 64 * 1024
_lock = threading.Lock()
_closed = 0  # endless streams whose iterable was closed (the client left)
FILE = grid_file("raw")

StartResponse = Any


def _send(start: StartResponse, status: str, body: bytes, ctype: str, extra=()) -> list[bytes]:
    headers = [("Content-Type", ctype), ("Content-Length", str(len(body))), *extra]
    start(status, headers)
    return [body]


def _json(start: StartResponse, obj: object, extra=()) -> list[bytes]:
    return _send(start, "200 OK", json.dumps(obj).encode(), "application/json", extra)


def _read_body(environ: dict[str, Any]) -> bytes:
    length = int(environ.get("CONTENT_LENGTH") or 0)
    stream = environ["wsgi.input"]
    parts = []
    while length > 0:
        data = stream.read(min(length, BLOCK))
        if not data:
            break
        parts.append(data)
        length -= len(data)
    return b"".join(parts)


def _lines(n: int) -> Iterator[bytes]:
    for i in range(n):
        yield f"chunk {i}\n".encode()


def _endless() -> Iterator[bytes]:
    global _closed
    block = b"e" * BLOCK
    try:
        for _ in range(100_000):  # 6.4 GB: the client leaves long before
            yield block
    finally:
        with _lock:
            _closed += 1


def raw_app(environ: dict[str, Any], start: StartResponse) -> Any:
    path = environ["PATH_INFO"]
    method = environ["REQUEST_METHOD"]
    if path == "/hello":
        return _send(start, "200 OK", b"Hello, World!", "text/plain")
    if path == "/json":
        args = parse_qs(environ["QUERY_STRING"])
        return _json(start, {"name": args["name"][0], "n": int(args["n"][0])})
    if path == "/echo" and method == "POST":
        ctype = environ.get("CONTENT_TYPE", "application/octet-stream")
        return _send(start, "200 OK", _read_body(environ), ctype)
    if path == "/upload" and method == "POST":
        data = _read_body(environ)
        return _json(start, {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()})
    if path == "/stream":
        n = int(parse_qs(environ["QUERY_STRING"]).get("n", ["5"])[0])
        start("200 OK", [("Content-Type", "text/plain")])
        return _lines(n)
    if path == "/headers":
        extra = [("X-Multi", "a"), ("X-Multi", "b")]
        return _json(start, {"x_test": environ.get("HTTP_X_TEST")}, extra)
    if path.startswith("/status/"):
        code = int(path.rsplit("/", 1)[1])
        reason = {200: "OK", 201: "Created", 204: "No Content", 304: "Not Modified"}.get(
            code, "Internal Server Error"
        )
        if code in (204, 304):
            start(f"{code} {reason}", [])
            return []
        return _send(start, f"{code} {reason}", f"status {code}".encode(), "text/plain")
    if path == "/raise":
        raise RuntimeError("the grid's raising route")
    if path == "/cookies":
        jar = SimpleCookie(environ.get("HTTP_COOKIE", ""))
        got = {name: morsel.value for name, morsel in jar.items()}
        extra = [("Set-Cookie", "a=1; Path=/"), ("Set-Cookie", "b=2; Path=/")]
        return _json(start, got, extra)
    if path == "/big":
        return _send(start, "200 OK", b"x" * BIG, "text/plain")
    if path == "/endless":
        start("200 OK", [("Content-Type", "application/octet-stream")])
        return _endless()
    if path == "/file":
        start("200 OK", [("Content-Type", "application/octet-stream")])
        return environ["wsgi.file_wrapper"](open(FILE, "rb"), BLOCK)
    if path == "/closed":
        with _lock:
            return _json(start, {"closed": _closed})
    return _send(start, "404 Not Found", b"not found", "text/plain")


app = validator(raw_app)
