"""An example application for the deploy/ files: replace it with your own.

Served as ``prefork run app:handle``. It answers ``GET /healthz`` cheaply,
which is what the Kubernetes probes and the container's HEALTHCHECK ask for:
keep such a path in your application (no database call, no auth), so that a
probe measures "this server takes and answers requests" and nothing else.
"""

from __future__ import annotations

from typing import Any


def handle(
    method: str, query: str, args: Any, headers: Any, body: bytes, ctx: Any
) -> tuple[str, int, dict[str, str]]:
    if query == "/healthz":
        return "ok\n", 200, {"content-type": "text/plain", "cache-control": "no-store"}
    return "Hello from prefork!\n", 200, {"content-type": "text/plain"}
