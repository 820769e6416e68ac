"""The grid's endpoints on Litestar (see ``common``)."""

from __future__ import annotations

import hashlib
from typing import Any

from litestar import Litestar, Request, Response, get, head, post
from litestar.datastructures import Cookie, State
from litestar.response import Stream
from litestar.response.base import ASGIResponse

from tests.grid import common


def startup(app: Litestar) -> None:
    app.state.value = common.STATE_VALUE


@get("/hello", media_type="text/plain")
async def hello() -> str:
    return common.HELLO


@head("/hello", media_type="text/plain")
async def hello_head() -> Response[None]:
    return Response(
        None, media_type="text/plain", headers={"content-length": str(len(common.HELLO))}
    )


@get("/json")
async def json_args(name: str, n: int) -> dict[str, Any]:
    return {"name": name, "n": n}


@post("/echo", status_code=200)
async def echo(request: Request[Any, Any, Any]) -> Response[bytes]:
    return Response(await request.body(), media_type=request.headers.get("content-type"))


@post("/upload", status_code=200)
async def upload(request: Request[Any, Any, Any]) -> dict[str, Any]:
    sha = hashlib.sha256()
    size = 0
    async for piece in request.stream():
        sha.update(piece)
        size += len(piece)
    return {"size": size, "sha256": sha.hexdigest()}


@get("/stream")
async def stream() -> Stream:
    return Stream(common.stream_pieces(), media_type="text/plain")


@get("/headers")
async def headers(request: Request[Any, Any, Any]) -> ASGIResponse:
    seen = "|".join(request.headers.getall("x-rep", []))
    # Response(headers=...) keeps one value per name; the ASGI response takes pairs.
    return ASGIResponse(
        body=b"ok",
        media_type="text/plain",
        encoded_headers=[
            (b"x-seen", seen.encode()),
            (b"x-multi", b"one"),
            (b"x-multi", b"two"),
        ],
    )


@get("/status/{code:int}")
async def status(code: int) -> Response[bytes]:
    return Response(b"", status_code=code)


@get("/raise")
async def boom() -> None:
    raise RuntimeError("the grid's raising route")


@get("/cookies", media_type="text/plain")
async def cookies() -> Response[str]:
    return Response("cookies set", cookies=[Cookie(key="a", value="1"), Cookie(key="b", value="2")])


@get("/cookies/echo")
async def cookies_echo(request: Request[Any, Any, Any]) -> dict[str, Any]:
    return {"a": request.cookies.get("a"), "b": request.cookies.get("b")}


@get("/big", media_type="application/octet-stream")
async def big() -> bytes:
    return common.BIG


@get("/endless")
async def endless() -> Stream:
    return Stream(common.endless(), media_type="application/octet-stream")


@get("/left")
async def left() -> dict[str, Any]:
    return {"left": common.LEFT[0]}


@get("/state")
async def state(state: State) -> dict[str, Any]:
    return {"state": state.get("value")}


app = Litestar(
    route_handlers=[
        hello,
        hello_head,
        json_args,
        echo,
        upload,
        stream,
        headers,
        status,
        boom,
        cookies,
        cookies_echo,
        big,
        endless,
        left,
        state,
    ],
    on_startup=[startup],
    request_max_body_size=None,
)
