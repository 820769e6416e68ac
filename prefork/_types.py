"""Shared type aliases and Protocols."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Literal, Protocol

Action = Literal["keep-alive", "close"]

# A handler returns (content, status, headers); see docs/reference.md "The handler".
HandlerResult = tuple[Any, int | None, dict[str, str] | None]
Handler = Callable[..., HandlerResult | Awaitable[HandlerResult]]


class ConnectionLike(Protocol):
    """What a handler may use on ``ctx.client``."""

    peername: tuple[str, int] | None
    server_name: str | None

    async def read(self, n: int) -> bytes: ...

    async def write(self, data: bytes) -> None: ...

    def send(self, data: bytes) -> None:
        """Hand ``data`` to the transport now, never waiting (dropped once ``lost``)."""

    @property
    def write_paused(self) -> bool:
        """The transport's buffer is above its high-water mark: ``await drain()``."""

    @property
    def lost(self) -> bool:
        """The peer is gone (closed, reset, or the connection was aborted)."""

    async def drain(self) -> None:
        """Wait while ``write_paused``; raises ``OSError`` or ``PreforkError`` once lost."""

    def close(self) -> None: ...

    def abort(self) -> None: ...

    def on_drain(self, callback: Callable[[], None] | None) -> None:
        """Call ``callback`` once when the worker starts to stop (None: forget it)."""
