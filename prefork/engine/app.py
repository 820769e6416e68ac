"""What the engine asks of an app interface (native, ASGI, WSGI).

The engine (the connection, the worker) calls these and nothing else of an app
interface; each interface in ``prefork.apps`` implements them against the
connection's public members. The engine defines the Protocol so that it never
imports a layer above it; it is generic in the connection type (``C``) so that
this module need not import the connection module that uses it.
"""

from __future__ import annotations

from typing import Literal, Protocol, TypeVar

from prefork.http.request import Request

Action = Literal["keep-alive", "close"]

C = TypeVar("C", contravariant=True)


class AppInterface(Protocol[C]):
    """One app served through one interface, per worker (``C``: the connection type)."""

    # True: complete requests may be answered straight from the protocol
    # callback (``respond_inline``) while the connection's coroutine is parked.
    inline: bool

    def respond_inline(self, conn: C, req: Request) -> bool:
        """Answer ``req`` from the protocol callback.

        Returns True when the connection may go on with the next request; False
        when it closes or the request was handed to the coroutine
        (``Connection.hand_off``).
        """
        ...

    async def exchange(self, conn: C) -> Action:
        """Serve the connection's next request (or the one handed off); say what next."""
        ...

    async def startup(self) -> None:
        """Before the worker reports ready (ASGI lifespan startup, thread pools)."""
        ...

    async def shutdown(self) -> None:
        """After the worker's connections are drained."""
        ...
