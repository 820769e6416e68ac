"""The rest of an ASGI app call, each step in the request's own context, in the
connection's task (the first step is ``asgi.AsgiApp._start``'s).

Apart from asgi.py because this is a generator-based coroutine
(``types.coroutine``): the compiled build (setup.py) compiles asgi.py, and a
compiled generator is not awaitable, so this module stays interpreted.
"""

from __future__ import annotations

import asyncio
import contextvars
import types
from collections.abc import Coroutine, Generator
from typing import Any


@types.coroutine
def resume_in_context(
    coro: Coroutine[Any, Any, None],
    context: contextvars.Context,
    step: Any,
    throw: BaseException | None = None,
) -> Generator[Any, Any, None]:
    """The rest of ``coro`` after a first ``step``, each step run in ``context``:
    results, exceptions and cancellation pass through as ``await`` passes them.

    ``throw``: a cancellation that came for ``coro`` before this runs, thrown
    into it first (the future it waits for, ``step``, is cancelled, as a
    task cancels the future it waits for).
    """
    run = context.run
    if throw is not None:
        if isinstance(step, asyncio.Future):
            step.cancel()
        try:
            step = run(coro.throw, throw)
        except StopIteration:
            return
    while True:  # one turn per step of the app, as a Task's: ends when the app does
        try:
            value = yield step
        except GeneratorExit:
            coro.close()
            raise
        except BaseException as exc:  # (CancelledError too): thrown into the app
            try:
                step = run(coro.throw, exc)
            except StopIteration:
                return
            continue
        try:
            step = run(coro.send, value)
        except StopIteration:
            return
