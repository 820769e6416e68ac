"""Logging: logger names, the ACCESS level, the access line, reopen on SIGUSR1.

Levels, lowest first: debug (10), access (15), info (20), warn (30), error (40).
``access`` sits between debug and info so that ``log_level = "info"`` silences
the per-request line while keeping lifecycle messages.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
from collections.abc import Iterable, Mapping

ACCESS = 15
logging.addLevelName(ACCESS, "ACCESS")

LEVELS = {
    "debug": logging.DEBUG,
    "access": ACCESS,
    "info": logging.INFO,
    "warn": logging.WARNING,
    "error": logging.ERROR,
}

ROOT = "prefork"
MASTER = "prefork.master"
WORKER = "prefork.worker"
ACCESS_LOGGER = "prefork.access"
ERROR = "prefork.error"
APP = "prefork.app"

_FORMAT = "%(asctime)s [%(process)d] [%(levelname)s] %(name)s: %(message)s"
_handler: logging.Handler | None = None

# C0 and C1 control characters (and DEL, and the backslash itself) are escaped in logged
# request fields so that a request cannot forge or split log lines.
_ESCAPES = {i: f"\\x{i:02x}" for i in (*range(0x20), *range(0x7F, 0xA0))}
_ESCAPES[ord("\\")] = "\\\\"
_ESCAPES[ord('"')] = '\\"'

_MILLIS = tuple(f"{ms:03d}" for ms in range(1000))  # the ",mmm" of a time stamp
# The request texts remembered per worker, and the longest path remembered: at most
# 512 x ~1 KiB (a path's escaped form can be 4x its length), whatever the traffic.
_REQUEST_TEXTS_MAX = 512
_REQUEST_TEXT_MAX_PATH = 256


def escape(value: str) -> str:
    """``value`` with control characters, quotes and backslashes escaped."""
    if value.isprintable() and "\\" not in value and '"' not in value:
        return value
    return value.translate(_ESCAPES)


def setup(level: str) -> None:
    """Send prefork's logs to stderr at ``level``; idempotent (no stacked handlers)."""
    global _handler
    root = logging.getLogger(ROOT)
    if _handler is None:
        _handler = logging.StreamHandler(sys.stderr)
        _handler.setFormatter(logging.Formatter(_FORMAT))
        root.addHandler(_handler)
    root.propagate = False
    root.setLevel(LEVELS[level])


def set_level(level: str) -> None:
    """Change the level of every prefork logger."""
    logging.getLogger(ROOT).setLevel(LEVELS[level])


def reopen() -> None:
    """SIGUSR1: flush and reopen file handlers (stderr has nothing to reopen)."""
    for handler in logging.getLogger(ROOT).handlers:
        handler.flush()
        if isinstance(handler, logging.FileHandler):
            handler.acquire()
            try:
                handler.close()
                handler.stream = handler._open()
            finally:
                handler.release()


class AccessLog:
    """One line per request at the ``access`` level, cheap enough for the hot path.

    Lines are formatted here (the same layout as every other log line) and
    written to stderr in one write per event-loop iteration, not through a
    LogRecord each: that keeps the access log's cost to a small share of a
    request. The level is still the ``prefork.access`` logger's.
    """

    __slots__ = (
        "_header_names",
        "_logger",
        "_pending",
        "_requests",
        "_second",
        "_stamp",
        "_stream",
        "_tag",
    )

    def __init__(self, header_names: Iterable[str]) -> None:
        self._logger = logging.getLogger(ACCESS_LOGGER)
        self._header_names = tuple(header_names)
        self._pending: list[str] = []
        # What is the same on every line of this process: after the milliseconds.
        self._tag = f" [{os.getpid()}] [ACCESS] {ACCESS_LOGGER}: "
        self._second = -1
        self._stamp = ""  # "YYYY-mm-dd HH:MM:SS," for the current second
        # The quoted, escaped request text by (method, path, version): most
        # traffic repeats a few (probes, API calls); emptied when full.
        self._requests: dict[tuple[str, str, str], str] = {}
        self._stream = sys.stderr

    def enabled(self) -> bool:
        return self._logger.isEnabledFor(ACCESS)

    def log(
        self,
        client_ip: str,
        method: str,
        path: str,
        version: str,
        status: int,
        size: int,
        started: float,
        headers: Mapping[str, str],
    ) -> None:
        now = time.time()
        duration_ms = (time.monotonic() - started) * 1000.0
        second = int(now)
        if second != self._second:
            self._second = second
            self._stamp = time.strftime("%Y-%m-%d %H:%M:%S,", time.localtime(second))
        key = (method, path, version)
        text = self._requests.get(key)
        if text is None:
            text = f'"{escape(method)} {escape(path)} HTTP/{version}"'
            if len(path) <= _REQUEST_TEXT_MAX_PATH:
                if len(self._requests) >= _REQUEST_TEXTS_MAX:
                    self._requests.clear()
                self._requests[key] = text
        line = (
            f"{self._stamp}{_MILLIS[int((now - second) * 1000)]}{self._tag}{client_ip} {text} "
            f"{status} {size} {duration_ms:.2f}ms"
        )
        if self._header_names:
            extra = " ".join(
                f'{name}="{escape(headers.get(name, "-"))}"' for name in self._header_names
            )
            line = f"{line} {extra}"
        pending = self._pending
        pending.append(line)
        if len(pending) == 1:
            try:
                asyncio.get_running_loop().call_soon(self.flush)
            except RuntimeError:
                self.flush()

    def flush(self) -> None:
        """Write the lines gathered in this loop iteration."""
        if not self._pending:
            return
        text = "\n".join(self._pending) + "\n"
        self._pending.clear()
        try:
            self._stream.write(text)
            self._stream.flush()
        except (OSError, ValueError):
            pass
