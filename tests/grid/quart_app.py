"""The grid's endpoints on Quart (see ``common``)."""

from __future__ import annotations

import hashlib
from typing import Any

from quart import Quart, Response, jsonify, request

from tests.grid import common

app = Quart(__name__)
app.config["MAX_CONTENT_LENGTH"] = None
# Set by lifespan startup (before_serving), read by /state.
STATE: dict[str, Any] = {}


@app.before_serving
async def startup() -> None:
    STATE["value"] = common.STATE_VALUE


@app.route("/hello", methods=["GET", "HEAD"])
async def hello() -> Response:
    return Response(common.HELLO, content_type="text/plain")


@app.route("/json")
async def json_args() -> Any:
    return jsonify({"name": request.args["name"], "n": int(request.args["n"])})


@app.route("/echo", methods=["POST"])
async def echo() -> Response:
    return Response(await request.get_data(as_text=False), content_type=request.content_type)


@app.route("/upload", methods=["POST"])
async def upload() -> Any:
    sha = hashlib.sha256()
    size = 0
    async for piece in request.body:
        sha.update(piece)
        size += len(piece)
    return jsonify({"size": size, "sha256": sha.hexdigest()})


@app.route("/stream")
async def stream() -> Response:
    return Response(common.stream_pieces(), content_type="text/plain")


@app.route("/headers")
async def headers() -> Response:
    response = Response("ok", content_type="text/plain")
    response.headers["x-seen"] = "|".join(request.headers.getlist("x-rep"))
    response.headers.add("x-multi", "one")
    response.headers.add("x-multi", "two")
    return response


@app.route("/status/<int:code>")
async def status(code: int) -> Response:
    return Response(b"", status=code)


@app.route("/raise")
async def boom() -> Response:
    raise RuntimeError("the grid's raising route")


@app.route("/cookies")
async def cookies() -> Response:
    response = Response("cookies set", content_type="text/plain")
    response.set_cookie("a", "1")
    response.set_cookie("b", "2")
    return response


@app.route("/cookies/echo")
async def cookies_echo() -> Any:
    return jsonify({"a": request.cookies.get("a"), "b": request.cookies.get("b")})


@app.route("/big")
async def big() -> Response:
    return Response(common.BIG, content_type="application/octet-stream")


@app.route("/endless")
async def endless() -> Response:
    return Response(common.endless(), content_type="application/octet-stream")


@app.route("/left")
async def left() -> Any:
    return jsonify({"left": common.LEFT[0]})


@app.route("/state")
async def state() -> Any:
    return jsonify({"state": STATE.get("value")})
