"""Logging: logger names, the ACCESS level, the access line, reopen on SIGUSR1.

Levels, lowest first: debug (10), access (15), info (20), warn (30), error (40).
``access`` sits between debug and info so that ``log_level = "info"`` silences
the per-request line while keeping lifecycle messages.
"""

from __future__ import annotations

import asyncio
import bisect
import json
import logging
import os
import stat
import sys
import time
from collections.abc import Iterable, Mapping
from typing import Protocol

from prefork.metrics import DURATION_BOUNDS_S, WorkerMetrics

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
# The file stderr was redirected to when logging was set up (``2>>file``), to
# reopen by name on SIGUSR1 after a log rotation renamed it; None otherwise.
_stderr_path: str | None = None

# C0 and C1 control characters (and DEL, and the backslash itself) are escaped in logged
# request fields so that a request cannot forge or split log lines.
_ESCAPES = {i: f"\\x{i:02x}" for i in (*range(0x20), *range(0x7F, 0xA0))}
_ESCAPES[ord("\\")] = "\\\\"
_ESCAPES[ord('"')] = '\\"'

_monotonic = time.monotonic
_bisect_left = bisect.bisect_left
_COMPACT = (",", ":")  # json.dumps separators: no spaces
_MILLIS = tuple(f"{ms:03d}" for ms in range(1000))  # the ",mmm" of a time stamp
# The request texts remembered per worker, and the longest path remembered: at most
# 512 x ~1 KiB (a path's escaped form can be 4x its length), whatever the traffic.
_REQUEST_TEXTS_MAX = 512
_REQUEST_TEXT_MAX_PATH = 256


class Request(Protocol):
    """What the access log reads of a request (``prefork.http.request.Request``)."""

    logged: tuple[str | None, ...] | None  # set by AccessLog.capture

    @property
    def method(self) -> str: ...

    @property
    def target(self) -> str: ...

    @property
    def version(self) -> str: ...

    @property
    def headers(self) -> Mapping[str, str]: ...

    @property
    def body(self) -> bytes: ...


def escape(value: str) -> str:
    """``value`` with control characters, quotes and backslashes escaped."""
    if value.isprintable() and "\\" not in value and '"' not in value:
        return value
    return value.translate(_ESCAPES)


def json_string(value: str) -> str:
    """``value`` as a JSON string: quoted, with quotes, backslashes and controls escaped."""
    if value.isprintable() and value.isascii() and "\\" not in value and '"' not in value:
        return f'"{value}"'
    return json.dumps(value)


def setup(level: str) -> None:
    """Send prefork's logs to stderr at ``level``; idempotent (no stacked handlers)."""
    global _handler, _stderr_path
    root = logging.getLogger(ROOT)
    if _handler is None:
        _stderr_path = _redirected_path(sys.stderr)
        _handler = logging.StreamHandler(sys.stderr)
        _handler.setFormatter(logging.Formatter(_FORMAT))
        root.addHandler(_handler)
    root.propagate = False
    root.setLevel(LEVELS[level])


def set_level(level: str) -> None:
    """Change the level of every prefork logger."""
    logging.getLogger(ROOT).setLevel(LEVELS[level])


def _redirected_path(stream: object) -> str | None:
    """The path of the regular file ``stream`` writes to, if it does (Linux /proc)."""
    try:
        fd = stream.fileno()  # type: ignore[attr-defined]
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        return os.readlink(f"/proc/self/fd/{fd}")
    except (AttributeError, OSError, ValueError):
        return None


def reopen() -> None:
    """SIGUSR1: flush and reopen file handlers, and stderr if it was redirected to a file.

    After a rotation renamed the file, the next lines go to a new file of the
    original name (as nginx and gunicorn do with their log paths).
    """
    if _stderr_path is not None:
        sys.stderr.flush()
        try:
            fd = os.open(_stderr_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        except OSError as exc:
            logging.getLogger(ROOT).error("cannot reopen %s: %s", _stderr_path, exc.strerror)
        else:
            os.dup2(fd, sys.stderr.fileno())
            os.close(fd)
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
    """What is recorded of each finished request: the access line and the metrics.

    App interfaces call :meth:`record` once per finished request and nothing
    else: it counts the request in the worker's metrics (when ``metrics_bind``
    is set) and writes its access line (at the ``access`` level), as text or
    as one JSON object.

    Lines are formatted here and written to stderr in one write per
    event-loop iteration, not through a LogRecord each: that keeps the access
    log's cost to a small share of a request. The level is still the
    ``prefork.access`` logger's, read once (a worker's level never changes:
    a reload starts new workers).
    """

    __slots__ = (
        "_enabled",
        "_json",
        "_json_tag",
        "_logger",
        "_pending",
        "_requests",
        "_second",
        "_stamp",
        "_stream",
        "_tag",
        "_zone",
        "active",
        "header_names",
        "metrics",
    )

    def __init__(
        self,
        header_names: Iterable[str],
        fmt: str = "text",
        metrics: WorkerMetrics | None = None,
    ) -> None:
        self._logger = logging.getLogger(ACCESS_LOGGER)
        self._enabled = self._logger.isEnabledFor(ACCESS)
        self.header_names = tuple(name.lower() for name in header_names)
        self.metrics = metrics
        # Whether ``record`` has anything to do (lines or metrics): callers on
        # the per-request path read it to skip the call.
        self.active = self._enabled or metrics is not None
        self._json = fmt == "json"
        self._pending: list[str] = []
        # What is the same on every line of this process: after the milliseconds.
        self._tag = f" [{os.getpid()}] [ACCESS] {ACCESS_LOGGER}: "
        self._json_tag = f',"pid":{os.getpid()},"client":'
        self._second = -1
        self._stamp = ""  # "YYYY-mm-dd HH:MM:SS," (json: '{"time":"YYYY-mm-ddTHH:MM:SS.')
        self._zone = ""  # json: '+HH:MM"', the UTC offset after the milliseconds
        # The request's text by (method, target, version): quoted and escaped,
        # or its JSON fields. Most traffic repeats a few (probes, API calls);
        # emptied when full.
        self._requests: dict[tuple[str, str, str], str] = {}
        self._stream = sys.stderr

    def enabled(self) -> bool:
        """Whether access lines are written (the level is ``access`` or ``debug``)."""
        return self._enabled

    def capture(self, req: Request) -> None:
        """Keep the ``log_headers`` values before the handler runs (it may change ``headers``)."""
        headers = req.headers
        req.logged = tuple([headers.get(name) for name in self.header_names])

    def record(
        self, client_ip: str, req: Request | None, status: int, sent: int, started: float
    ) -> None:
        """One finished request (``req`` None: rejected before it was parsed).

        ``sent``: the body bytes sent; ``started``: ``time.monotonic()`` when
        the handler was called.
        """
        if not self.active:
            return
        metrics = self.metrics
        seconds = _monotonic() - started
        if metrics is not None:
            # WorkerMetrics.observe, inlined: this runs for every request.
            if req is None:
                metrics.other[status // 100] += 1
            else:
                metrics.rows.get(req.method, metrics.other)[status // 100] += 1
                metrics.body_in += len(req.body)
            metrics.buckets[_bisect_left(DURATION_BOUNDS_S, seconds)] += 1
            metrics.duration_sum += seconds
            metrics.body_out += sent
        if self._enabled:
            if self._json:
                line = self._json_line(client_ip, req, status, sent, seconds)
            else:
                line = self._text_line(client_ip, req, status, sent, seconds)
            pending = self._pending
            pending.append(line)
            if len(pending) == 1:
                try:
                    asyncio.get_running_loop().call_soon(self.flush)
                except RuntimeError:
                    self.flush()

    def slow_closed(self, phase: str) -> None:
        """A connection was closed because a deadline passed: ``header``, ``body``, ``write``."""
        if self.metrics is not None:
            self.metrics.slow_closed(phase)

    def tls_handshake(self, ok: bool) -> None:
        if self.metrics is not None:
            self.metrics.tls_handshake(ok)

    def _values(self, req: Request | None) -> tuple[str | None, ...]:
        """The ``log_headers`` values: captured before the handler, else read now."""
        if req is None:
            return (None,) * len(self.header_names)
        if req.logged is not None:
            return req.logged
        headers = req.headers
        return tuple([headers.get(name) for name in self.header_names])

    def _request_text(self, req: Request | None) -> str:
        if req is None:
            method, target, version = "-", "-", "1.1"
        else:
            method, target, version = req.method, req.target, req.version
        key = (method, target, version)
        text = self._requests.get(key)
        if text is None:
            if self._json:
                path, _, query = target.partition("?")
                text = (
                    f',"method":{json_string(method)},"target":{json_string(target)}'
                    f',"path":{json_string(path)},"query":{json_string(query)}'
                    f',"version":"{version}"'
                )
            else:
                text = f'"{escape(method)} {escape(target)} HTTP/{version}"'
            if len(target) <= _REQUEST_TEXT_MAX_PATH:
                if len(self._requests) >= _REQUEST_TEXTS_MAX:
                    self._requests.clear()
                self._requests[key] = text
        return text

    def _tick(self, now: float) -> int:
        """The current second; refreshes the time stamp's text when it changed."""
        second = int(now)
        if second != self._second:
            self._second = second
            local = time.localtime(second)
            if self._json:
                self._stamp = time.strftime('{"time":"%Y-%m-%dT%H:%M:%S.', local)
                offset = time.strftime("%z", local)  # +HHMM
                self._zone = f'{offset[:3]}:{offset[3:]}"'
            else:
                self._stamp = time.strftime("%Y-%m-%d %H:%M:%S,", local)
        return second

    def _text_line(
        self, client_ip: str, req: Request | None, status: int, sent: int, seconds: float
    ) -> str:
        now = time.time()
        second = self._tick(now)
        line = (
            f"{self._stamp}{_MILLIS[int((now - second) * 1000)]}{self._tag}{escape(client_ip)} "
            f"{self._request_text(req)} {status} {sent} {seconds * 1000.0:.2f}ms"
        )
        if self.header_names:
            extra = " ".join(
                f'{name}="{"-" if value is None else escape(value)}"'
                for name, value in zip(self.header_names, self._values(req), strict=True)
            )
            line = f"{line} {extra}"
        return line

    def _json_line(
        self, client_ip: str, req: Request | None, status: int, sent: int, seconds: float
    ) -> str:
        now = time.time()
        second = self._tick(now)
        line = (
            f"{self._stamp}{_MILLIS[int((now - second) * 1000)]}{self._zone}{self._json_tag}"
            f'{json_string(client_ip)}{self._request_text(req)},"status":{status},"bytes":{sent}'
            f',"duration_us":{int(seconds * 1e6)}'
        )
        if self.header_names:
            fields = dict(zip(self.header_names, self._values(req), strict=True))
            return f'{line},"headers":{json.dumps(fields, separators=_COMPACT)}}}'
        return line + "}"

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
