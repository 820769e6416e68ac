"""A plain ASGI app for what runs from the protocol callback (``AsgiApp.respond_inline``).

prefork runs an app's first step as soon as a request is read, as part of
the connection's task; an app that waits goes on in that task. Each path
checks one thing an app may rely on there: the task it runs in, the async
library detection of anyio and sniffio, cancellation (asyncio.timeout, a
task cancelling itself), a failure before any await.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import sniffio

TEXT = [(b"content-type", b"text/plain")]


async def reply(send: Any, data: bytes, status: int = 200) -> None:
    await send({"type": "http.response.start", "status": status, "headers": TEXT})
    await send({"type": "http.response.body", "body": data})


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    path = scope["path"]
    if path == "/task":
        # Before any await, then after one: the same task both times.
        first = asyncio.current_task()
        library = sniffio.current_async_library()
        await asyncio.sleep(0)
        after = asyncio.current_task()
        data = {"task": first is not None, "same": first is after, "library": library}
        await reply(send, json.dumps(data).encode())
    elif path == "/task-no-wait":
        await reply(send, str(asyncio.current_task() is not None).encode())
    elif path == "/timeout-now":
        try:
            async with asyncio.timeout(0):
                await asyncio.sleep(5)
            out = b"not timed out"
        except TimeoutError:
            out = b"timed out"
        await reply(send, out)
    elif path == "/cancel-self":
        task = asyncio.current_task()
        assert task is not None
        task.cancel()
        try:
            await asyncio.sleep(5)
            out = b"not cancelled"
        except asyncio.CancelledError:
            task.uncancel()
            out = b"cancelled"
        await reply(send, out)
    elif path == "/wait":
        await asyncio.sleep(0.05)
        await reply(send, b"waited")
    elif path == "/fail-now":
        raise RuntimeError("failed before any await")
    else:
        message = await receive()
        await reply(send, b"echo:" + message["body"])
