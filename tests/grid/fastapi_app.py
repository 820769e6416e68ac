"""The grid's endpoints on FastAPI (see ``common``)."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse

from tests.grid import common


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
    yield {"value": common.STATE_VALUE}


app = FastAPI(lifespan=lifespan)


@app.api_route("/hello", methods=["GET", "HEAD"], response_class=PlainTextResponse)
async def hello() -> str:
    return common.HELLO


@app.get("/json")
async def json_args(name: str, n: int) -> dict[str, Any]:
    return {"name": name, "n": n}


@app.post("/echo")
async def echo(request: Request) -> Response:
    return Response(await request.body(), media_type=request.headers.get("content-type"))


@app.post("/upload")
async def upload(request: Request) -> dict[str, Any]:
    sha = hashlib.sha256()
    size = 0
    async for piece in request.stream():
        sha.update(piece)
        size += len(piece)
    return {"size": size, "sha256": sha.hexdigest()}


@app.get("/stream")
async def stream() -> StreamingResponse:
    return StreamingResponse(common.stream_pieces(), media_type="text/plain")


@app.get("/headers")
async def headers(request: Request) -> Response:
    response = PlainTextResponse("ok")
    response.headers["x-seen"] = "|".join(request.headers.getlist("x-rep"))
    response.headers.append("x-multi", "one")
    response.headers.append("x-multi", "two")
    return response


@app.get("/status/{code}")
async def status(code: int) -> Response:
    return Response(status_code=code)


@app.get("/raise")
async def boom() -> None:
    raise RuntimeError("the grid's raising route")


@app.get("/cookies")
async def cookies() -> Response:
    response = PlainTextResponse("cookies set")
    response.set_cookie("a", "1")
    response.set_cookie("b", "2")
    return response


@app.get("/cookies/echo")
async def cookies_echo(request: Request) -> dict[str, Any]:
    return {"a": request.cookies.get("a"), "b": request.cookies.get("b")}


@app.get("/big")
async def big() -> Response:
    return Response(common.BIG, media_type="application/octet-stream")


@app.get("/endless")
async def endless() -> StreamingResponse:
    return StreamingResponse(common.endless(), media_type="application/octet-stream")


@app.get("/left")
async def left() -> dict[str, Any]:
    return {"left": common.LEFT[0]}


@app.get("/state")
async def state(request: Request) -> JSONResponse:
    return JSONResponse({"state": getattr(request.state, "value", None)})
