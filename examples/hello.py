"""The example app: ``prefork run examples.hello:handle``."""

from __future__ import annotations

import json


def handle(method, query, args, headers, body, ctx):
    if query == "/":
        return "Hello from prefork!\n", 200, {"content-type": "text/plain; charset=utf-8"}
    if query == "/healthz":
        return b"ok", 200, {"content-type": "text/plain"}
    if query == "/echo":
        doc = {"method": method, "args": args, "headers": headers, "body_bytes": len(body)}
        return json.dumps(doc, indent=1), 200, {"content-type": "application/json"}
    if query == "/stream":
        return (f"line {i}\n".encode() for i in range(5)), 200, {"content-type": "text/plain"}
    return "not found\n", 404, {"content-type": "text/plain"}
