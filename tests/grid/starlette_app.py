"""The grid's endpoints on Starlette (see ``common``)."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from tests.grid import common


@asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
    yield {"value": common.STATE_VALUE}


async def hello(request: Request) -> Response:
    return PlainTextResponse(common.HELLO)


async def json_args(request: Request) -> Response:
    return JSONResponse({"name": request.query_params["name"], "n": int(request.query_params["n"])})


async def echo(request: Request) -> Response:
    body = await request.body()
    return Response(body, media_type=request.headers.get("content-type"))


async def upload(request: Request) -> Response:
    sha = hashlib.sha256()
    size = 0
    async for piece in request.stream():
        sha.update(piece)
        size += len(piece)
    return JSONResponse({"size": size, "sha256": sha.hexdigest()})


async def stream(request: Request) -> Response:
    return StreamingResponse(common.stream_pieces(), media_type="text/plain")


async def headers(request: Request) -> Response:
    response = PlainTextResponse("ok")
    response.headers["x-seen"] = "|".join(request.headers.getlist("x-rep"))
    response.headers.append("x-multi", "one")
    response.headers.append("x-multi", "two")
    return response


async def status(request: Request) -> Response:
    return Response(status_code=int(request.path_params["code"]))


async def boom(request: Request) -> Response:
    raise RuntimeError("the grid's raising route")


async def cookies(request: Request) -> Response:
    response = PlainTextResponse("cookies set")
    response.set_cookie("a", "1")
    response.set_cookie("b", "2")
    return response


async def cookies_echo(request: Request) -> Response:
    return JSONResponse({"a": request.cookies.get("a"), "b": request.cookies.get("b")})


async def big(request: Request) -> Response:
    return Response(common.BIG, media_type="application/octet-stream")


async def endless(request: Request) -> Response:
    return StreamingResponse(common.endless(), media_type="application/octet-stream")


async def left(request: Request) -> Response:
    return JSONResponse({"left": common.LEFT[0]})


async def state(request: Request) -> Response:
    return JSONResponse({"state": getattr(request.state, "value", None)})


app = Starlette(
    routes=[
        Route("/hello", hello, methods=["GET", "HEAD"]),
        Route("/json", json_args),
        Route("/echo", echo, methods=["POST"]),
        Route("/upload", upload, methods=["POST"]),
        Route("/stream", stream),
        Route("/headers", headers),
        Route("/status/{code:int}", status),
        Route("/raise", boom),
        Route("/cookies", cookies),
        Route("/cookies/echo", cookies_echo),
        Route("/big", big),
        Route("/endless", endless),
        Route("/left", left),
        Route("/state", state),
    ],
    lifespan=lifespan,
)
