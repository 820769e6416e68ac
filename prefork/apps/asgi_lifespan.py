"""The ASGI lifespan protocol, once per worker (config key ``lifespan``).

The app's lifespan call runs as one task for the worker's whole life: it gets
``lifespan.startup`` before the worker reports ready and ``lifespan.shutdown``
after its connections are drained. ``state`` is the dict the app fills in at
startup; every request scope gets a shallow copy of it.

Modes: ``on``, a failed startup (``startup.failed``, a raise, or the call
returning without an answer) fails the worker's boot; ``auto``, an app that
raises (or returns) before answering startup is served without lifespan, with
one info line, while ``startup.failed`` still fails the boot; ``off``, no
lifespan call at all.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from prefork import log
from prefork.errors import PreforkError

logger = logging.getLogger(log.WORKER)

# How long the app may take to answer lifespan.shutdown before the worker goes on.
SHUTDOWN_TIMEOUT_S = 30.0

AsgiCallable = Callable[..., Awaitable[None]]

_MESSAGES = frozenset(
    (
        "lifespan.startup.complete",
        "lifespan.startup.failed",
        "lifespan.shutdown.complete",
        "lifespan.shutdown.failed",
    )
)


class LifespanFailed(PreforkError):
    """The app's lifespan startup failed: the worker must not serve."""


class Lifespan:
    """One app's lifespan task and the two events it waits for."""

    def __init__(self, app: AsgiCallable, name: str, mode: str, asgi: dict[str, str]) -> None:
        self.app = app
        self.name = name
        self.mode = mode
        self.asgi = asgi
        # One dict for the worker's life, never replaced: AsgiApp holds it too.
        self.state: dict[str, Any] = {}
        self._task: asyncio.Task[None] | None = None
        self._inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._answer: asyncio.Future[dict[str, Any]] | None = None
        self._running = False  # startup completed: shutdown is owed

    async def startup(self) -> None:
        """Run ``lifespan.startup``; raise LifespanFailed if the boot must fail."""
        if self.mode == "off":
            return
        loop = asyncio.get_running_loop()
        self._answer = loop.create_future()
        scope = {"type": "lifespan", "asgi": self.asgi, "state": self.state}
        self._task = loop.create_task(self._run(scope))
        await self._inbox.put({"type": "lifespan.startup"})
        try:
            answer = await asyncio.shield(self._answer)
        except Exception as exc:
            return self._unsupported(exc)
        kind = answer["type"]
        if kind == "lifespan.startup.complete":
            self._running = True
            return
        message = answer.get("message") or "no message"
        raise LifespanFailed(f"lifespan startup failed: {message}")

    def _unsupported(self, exc: BaseException) -> None:
        """The app raised (or returned) before answering startup."""
        what = "returned" if isinstance(exc, _Returned) else f"raised {type(exc).__name__}: {exc}"
        if self.mode == "on":
            raise LifespanFailed(f"lifespan startup: the app {what}") from None
        logger.info("app %s does not support lifespan (it %s): serving without it", self.name, what)

    async def shutdown(self) -> None:
        """Send ``lifespan.shutdown`` and wait for the answer (bounded)."""
        task = self._task
        if task is None or not self._running or task.done():
            return
        loop = asyncio.get_running_loop()
        self._answer = loop.create_future()
        await self._inbox.put({"type": "lifespan.shutdown"})
        try:
            answer = await asyncio.wait_for(asyncio.shield(self._answer), SHUTDOWN_TIMEOUT_S)
        except TimeoutError:
            logger.warning("app %s: lifespan shutdown took over %ss", self.name, SHUTDOWN_TIMEOUT_S)
            task.cancel()
            return
        except Exception as exc:
            logger.error(
                "app %s: lifespan shutdown raised %s: %s", self.name, type(exc).__name__, exc
            )
            return
        if answer["type"] == "lifespan.shutdown.failed":
            logger.error(
                "app %s: lifespan shutdown failed: %s",
                self.name,
                answer.get("message") or "no message",
            )

    async def _run(self, scope: MutableMapping[str, Any]) -> None:
        try:
            await self.app(scope, self._receive, self._send)
        except BaseException as exc:
            self._fail(exc)
            if not isinstance(exc, Exception):
                raise
        else:
            self._fail(_Returned())

    def _fail(self, exc: BaseException) -> None:
        answer = self._answer
        if answer is not None and not answer.done():
            answer.set_exception(exc if isinstance(exc, Exception) else RuntimeError(str(exc)))
            # Nobody may be awaiting it (the call ended before a shutdown was sent).
            answer.exception()
        elif self._running and not isinstance(exc, _Returned | asyncio.CancelledError):
            logger.error("app %s: lifespan raised %s: %s", self.name, type(exc).__name__, exc)

    async def _receive(self) -> dict[str, Any]:
        return await self._inbox.get()

    async def _send(self, message: MutableMapping[str, Any]) -> None:
        kind = message.get("type") if isinstance(message, MutableMapping) else None
        answer = self._answer
        expected = (
            ("lifespan.startup.complete", "lifespan.startup.failed")
            if not self._running
            else ("lifespan.shutdown.complete", "lifespan.shutdown.failed")
        )
        if kind not in _MESSAGES:
            raise RuntimeError(f"unexpected ASGI lifespan message {kind!r}")
        if kind not in expected or answer is None or answer.done():
            # A valid message at the wrong time (Starlette reports its own
            # cancellation at a worker's quick stop as shutdown.failed): nothing
            # waits for it.
            logger.debug("app %s: lifespan message %r ignored", self.name, kind)
            return
        answer.set_result(dict(message))


class _Returned(Exception):
    """The lifespan call returned before it answered."""
