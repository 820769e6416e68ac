"""A Flask hello: ``GET /hello`` -> 13 bytes text/plain (the framework's own cost).

Served by prefork (``--interface wsgi``), granian (WSGI) and gunicorn (gthread).
"""

from __future__ import annotations

from flask import Flask, Response

app = Flask(__name__)


@app.get("/hello")
def hello() -> Response:
    return Response("Hello, World!", content_type="text/plain")
