"""The benchmark app as a plain WSGI app (PEP 3333), for granian's WSGI interface,
gunicorn's gthread worker and prefork's ``--interface wsgi``.

Same routes and bytes as ``bench_app.py`` and ``asgi_app.py``. No framework:
each server is measured on its own cost. ``GET /big`` is gzipped at level 6
on every request when ``Accept-Encoding`` names gzip, as the ASGI app does.
"""

from __future__ import annotations

import zlib

from bigdoc import BIG_JSON

HELLO = b"Hello, World!"
TEXT = [("Content-Type", "text/plain")]


def _gzip(data: bytes) -> bytes:
    comp = zlib.compressobj(6, zlib.DEFLATED, 31)  # wbits 31: gzip container
    return comp.compress(data) + comp.flush()


def app(environ, start_response):
    path = environ["PATH_INFO"]
    if path == "/hello":
        status, headers, body = "200 OK", TEXT, HELLO
    elif path == "/echo" and environ["REQUEST_METHOD"] == "POST":
        # Read whole, like the prefork handler's ``body``: the same work for all.
        length = int(environ.get("CONTENT_LENGTH") or 0)
        data = environ["wsgi.input"].read(length) if length else environ["wsgi.input"].read()
        status, headers, body = "200 OK", TEXT, str(len(data)).encode()
    elif path == "/big":
        status, headers = "200 OK", [("Content-Type", "application/json")]
        if "gzip" in environ.get("HTTP_ACCEPT_ENCODING", ""):
            body = _gzip(BIG_JSON)
            headers = [*headers, ("Content-Encoding", "gzip"), ("Vary", "Accept-Encoding")]
        else:
            body = BIG_JSON
    else:
        status, headers, body = "404 Not Found", TEXT, b"not found"
    start_response(status, [*headers, ("Content-Length", str(len(body)))])
    return [body]
