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

    def close(self) -> None: ...
