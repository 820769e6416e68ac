"""Running an ASGI app's WebSocket call: its steps handed through, then the close it owes.

Apart from ``websocket_asgi`` so that it is compiled (setup.py): every message
the app waits for resumes the session through ``AppRun``, and plain Python
methods there cost two interpreted frames per message.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Coroutine, Generator
from typing import Any

from prefork import log
from prefork.apps.websocket_exchange import Exchange, Outcome

app_logger = logging.getLogger(log.APP)


class AppRun:
    """Awaiting it awaits the app's call, then ``end`` (the close the app owes, ``finish``).

    It hands the app's steps through (``send``/``throw`` to the app's
    awaitable), where a coroutine awaiting the app would keep its frame for
    the session's life (~0.25 KiB per idle connection; this is ~0.07). What
    the app raises, or its return, starts ``end`` in its place. A
    BaseException (a cancellation) goes through, as it would through ``try:
    await app(...) except Exception``.
    """

    __slots__ = ("ending", "exchange", "finish", "path", "step")

    def __init__(
        self, call: Awaitable[None], exchange: Exchange, path: str, finish: Callable[[Outcome], Any]
    ) -> None:
        # A coroutine is its own iterator; another awaitable gives one.
        self.step: Any = call if isinstance(call, Coroutine) else call.__await__()
        self.ending = False
        self.exchange = exchange
        self.path = path
        self.finish = finish

    def __await__(self) -> Generator[Any, None, Any]:
        return self  # type: ignore[return-value]  # (an iterator with send/throw)

    def __next__(self) -> Any:
        return self.send(None)

    def send(self, value: Any) -> Any:
        if self.ending:
            return self.step.send(value)
        try:
            return self.step.send(value)
        except StopIteration:
            failure = None
        except Exception as exc:
            failure = exc
        return self._start_end(failure)

    def throw(self, *args: Any) -> Any:
        if self.ending:
            return self.step.throw(*args)
        try:
            return self.step.throw(*args)
        except StopIteration:
            failure = None
        except Exception as exc:
            failure = exc
        return self._start_end(failure)

    def close(self) -> None:
        self.step.close()

    def _start_end(self, failure: Exception | None) -> Any:
        self.ending = True
        self.step = end(self.exchange, failure, self.path, self.finish)
        # Its first step; its StopIteration (done already) is this one's.
        return self.step.send(None)


async def end(
    exchange: Exchange, failure: Exception | None, path: str, finish: Callable[[Outcome], Any]
) -> Any:
    """After the app's call: the close (or HTTP answer) it owes, then ``finish``."""
    if failure is not None:
        app_logger.error("ASGI app raised on WebSocket %s", path, exc_info=failure)
        if exchange.accepted:
            if not exchange.ws.closed:
                await exchange.ws.close(1011, "")
        elif exchange.answered is None:
            await exchange.answer(500, "Internal Server Error")
    elif exchange.accepted:
        if not exchange.ws.closed:
            await exchange.ws.close(1000, "")
    elif exchange.answered is None:
        app_logger.error("ASGI app returned without accepting or denying the WebSocket")
        await exchange.answer(500, "Internal Server Error")
    return finish(exchange.outcome())


# asyncio (iscoroutine) and the engine's Session type take it for the
# coroutine it stands in for; a compiled class cannot derive from the ABC.
Coroutine.register(AppRun)
