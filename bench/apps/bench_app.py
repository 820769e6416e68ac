"""The benchmark app as a prefork handler (API.md, "The handler").

Same three routes, same bytes as ``asgi_app.py`` and the nginx config:
``GET /hello`` -> 13 bytes text/plain; ``POST /echo`` -> the body's length;
``GET /big`` -> the ~100 KiB JSON document (prefork's default compression,
gzip level 6, applies when the client asks for it).
"""

from __future__ import annotations

from bigdoc import BIG_JSON

HELLO = b"Hello, World!"
TEXT = {"content-type": "text/plain"}
JSON = {"content-type": "application/json"}


def handle(method, query, args, headers, body, ctx):
    if query == "/hello":
        return HELLO, 200, TEXT
    if query == "/echo" and method == "POST":
        return str(len(body)), 200, TEXT
    if query == "/big":
        return BIG_JSON, 200, JSON
    return b"not found", 404, TEXT
