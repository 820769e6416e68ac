"""What the engine asks of an app interface (native, ASGI, WSGI).

The engine (the connection, the worker) calls these and nothing else of an app
interface; each interface in ``prefork.apps`` implements them against the
connection's public members. The engine defines the Protocol so that it never
imports a layer above it; it is generic in the connection type (``C``) so that
this module need not import the connection module that uses it.
"""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any, Literal, Protocol, TypeVar

from prefork.http.request import Request

Action = Literal["keep-alive", "close"]
# What an exchange may return instead of an Action: a session that outlives
# the request that opened it (a WebSocket, for hours), awaited by the engine
# in the exchange's place, so that the exchange's frame (its locals, the
# request's) is not kept alive as long as the session: ~1 KiB per idle one.
Session = Coroutine[Any, Any, Action]

C = TypeVar("C", contravariant=True)


class AppInterface(Protocol[C]):
    """One app served through one interface, per worker (``C``: the connection type)."""

    # True: complete requests may be answered straight from the protocol
    # callback (``respond_inline``) while the connection's coroutine is parked.
    inline: bool
    # Request bodies the app reads piece by piece (``Connection.receive_body``)
    # rather than whole: those bigger than this many bytes, chunked, or behind
    # ``Expect: 100-continue`` (``http.protocol.streams_body``). None: every
    # body is read whole (up to ``max_body_size``) before the app is called.
    stream_bodies_over: int | None
    # True: the app is given a request's fields as a list (ASGI's headers), so
    # a request's dict holds only the fields the server reads until the whole
    # one is asked for (``http.fields``); its ``lowered`` list is the app's.
    fields_as_list: bool

    def respond_inline(self, conn: C, req: Request) -> bool:
        """Answer ``req`` from the protocol callback.

        Returns True when the connection may go on with the next request; False
        when it closes or the request was handed to the coroutine
        (``Connection.hand_off``).
        """
        ...

    async def exchange(self, conn: C) -> Action | Session:
        """Serve the connection's next request (or the one handed off); say what next,
        or hand back the session it opened for the engine to await."""
        ...

    async def startup(self) -> None:
        """Before the worker reports ready (ASGI lifespan startup, thread pools)."""
        ...

    async def shutdown(self) -> None:
        """After the worker's connections are drained."""
        ...
