"""A FastAPI hello: ``GET /hello`` -> 13 bytes text/plain (the framework's own cost).

Served by prefork (``--interface asgi``), uvicorn and granian (ASGI). The
route returns a ``PlainTextResponse`` directly, as a minimal FastAPI app
would, so the bytes match the other apps; no lifespan work.
"""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.responses import PlainTextResponse

app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)


@app.get("/hello")
async def hello() -> PlainTextResponse:
    return PlainTextResponse("Hello, World!")
