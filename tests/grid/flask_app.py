"""The WSGI grid's endpoints as a Flask app (``tests.grid.flask_app:app``)."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator

from flask import Flask, Response, jsonify, request, send_file, stream_with_context

from tests.grid.wsgi_files import grid_file

BIG = 10 * 1024 * 1024
BLOCK = 64 * 1024

app = Flask(__name__)
_lock = threading.Lock()
_closed = 0  # endless streams closed (the client left)
FILE = grid_file("flask")


@app.get("/hello")
def hello() -> Response:
    return Response(b"Hello, World!", content_type="text/plain")


@app.get("/json")
def json_args() -> Response:
    return jsonify(name=request.args["name"], n=int(request.args["n"]))


@app.post("/echo")
def echo() -> Response:
    return Response(request.get_data(), content_type=request.content_type)


@app.post("/upload")
def upload() -> Response:
    data = request.get_data()
    return jsonify(size=len(data), sha256=hashlib.sha256(data).hexdigest())


@app.get("/stream")
def stream() -> Response:
    n = int(request.args.get("n", "5"))

    def lines() -> Iterator[bytes]:
        for i in range(n):
            yield f"chunk {i}\n".encode()

    return Response(lines(), content_type="text/plain")


@app.get("/headers")
def headers() -> Response:
    resp = jsonify(x_test=request.headers.get("X-Test"))
    resp.headers.add("X-Multi", "a")
    resp.headers.add("X-Multi", "b")
    return resp


@app.get("/status/<int:code>")
def status(code: int) -> Response:
    if code in (204, 304):
        return Response(status=code)
    return Response(f"status {code}", status=code, content_type="text/plain")


@app.get("/raise")
def boom() -> Response:
    raise RuntimeError("the grid's raising route")


@app.get("/cookies")
def cookies() -> Response:
    resp = jsonify(dict(request.cookies))
    resp.set_cookie("a", "1")
    resp.set_cookie("b", "2")
    return resp


@app.get("/big")
def big() -> Response:
    return Response(b"x" * BIG, content_type="text/plain")


@app.get("/endless")
def endless() -> Response:
    def blocks() -> Iterator[bytes]:
        global _closed
        block = b"e" * BLOCK
        try:
            for _ in range(100_000):
                yield block
        finally:
            with _lock:
                _closed += 1

    return Response(stream_with_context(blocks()), content_type="application/octet-stream")


@app.get("/file")
def file() -> Response:
    return send_file(FILE, mimetype="application/octet-stream")


@app.get("/closed")
def closed() -> Response:
    with _lock:
        return jsonify(closed=_closed)
