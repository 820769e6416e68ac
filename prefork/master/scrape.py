"""``GET /metrics`` on ``metrics_bind``, served from the master's own loop.

No thread and no extra process: the listening socket and each scrape's
connection are non-blocking and sit on the master's selector (wakeups.py)
with a callback, so a fork never happens while another thread holds a lock,
and the master stays plain single-threaded code. A scrape is one short
request on one connection (``Connection: close``): read the head (at most
``MAX_HEAD_BYTES``), render the metrics with ``prometheus_client`` from the
numbers the master already holds (a few hundred microseconds), write, close.
Nothing waits: a slow client only keeps its own socket, at most
``SCRAPE_DEADLINE_S`` and never more than ``MAX_SCRAPES`` of them.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import selectors
import socket
import time

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from prefork import log
from prefork.errors import BindError
from prefork.master.listeners import format_host, listen, parse_address
from prefork.master.wakeups import Wakeups

logger = logging.getLogger(log.MASTER)

MAX_HEAD_BYTES = 8 * 1024
MAX_SCRAPES = 8  # connections at once; the oldest goes when one more comes
SCRAPE_DEADLINE_S = 5.0
LISTEN_BACKLOG = 16
PATH = "/metrics"


class _Scrape:
    """One scrape connection: the head read so far, then the response left to write."""

    __slots__ = ("buf", "opened", "out", "sock")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""
        self.out = b""
        self.opened = time.monotonic()


class MetricsEndpoint:
    """The listening socket of ``metrics_bind`` and its scrapes, on the master's selector."""

    def __init__(self, address: str, collector: Collector, wakeups: Wakeups) -> None:
        try:
            host, port = parse_address(address)
            self._sock = listen(host, port, LISTEN_BACKLOG)
        except BindError as exc:
            raise BindError(f"metrics_bind: {exc}") from None
        self._sock.setblocking(False)
        self._registry = CollectorRegistry(auto_describe=False)
        self._registry.register(collector)
        self._wakeups = wakeups
        self._scrapes: dict[int, _Scrape] = {}
        wakeups.watch_fd(self._sock.fileno(), selectors.EVENT_READ, self._on_accept)
        bound_host, bound_port = self._sock.getsockname()[:2]
        self.url = f"http://{format_host(bound_host)}:{bound_port}{PATH}"

    def fds(self) -> list[int]:
        """Every fd of the endpoint (a forked worker closes them)."""
        return [self._sock.fileno(), *self._scrapes]

    def close(self) -> None:
        for fd in list(self._scrapes):
            self._finish(fd)
        with contextlib.suppress(OSError):
            self._wakeups.unwatch_fd(self._sock.fileno())
        self._sock.close()

    def _on_accept(self, events: int) -> None:
        now = time.monotonic()
        for fd, scrape in list(self._scrapes.items()):
            if now - scrape.opened > SCRAPE_DEADLINE_S:
                self._finish(fd)
        for _ in range(MAX_SCRAPES):
            try:
                sock, _addr = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # EMFILE and the like: the next wake-up retries
                logger.warning("metrics: accept() failed: %s", exc)
                return
            sock.setblocking(False)
            if len(self._scrapes) >= MAX_SCRAPES:
                self._finish(next(iter(self._scrapes)))  # the oldest
            fd = sock.fileno()
            self._scrapes[fd] = _Scrape(sock)
            self._wakeups.watch_fd(fd, selectors.EVENT_READ, functools.partial(self._on_event, fd))

    def _on_event(self, fd: int, events: int) -> None:
        scrape = self._scrapes.get(fd)
        if scrape is None:
            return
        try:
            if scrape.out:
                self._write(fd, scrape)
                return
            data = scrape.sock.recv(4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._finish(fd)
            return
        if not data:
            self._finish(fd)
            return
        scrape.buf += data
        end = scrape.buf.find(b"\r\n\r\n")
        if end < 0:
            if len(scrape.buf) > MAX_HEAD_BYTES:
                scrape.out = _response(431, "text/plain; charset=utf-8", b"head too large\n")
                self._write(fd, scrape)
            return
        scrape.out = self.respond(scrape.buf[:end].decode("latin-1"))
        self._write(fd, scrape)

    def respond(self, head: str) -> bytes:
        """The whole response to a request head (without its final CRLF CRLF)."""
        lines = head.split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            return _response(400, "text/plain; charset=utf-8", b"bad request\n")
        method, target = parts[0], parts[1]
        if target.partition("?")[0] != PATH:
            return _response(404, "text/plain; charset=utf-8", b"not found: try /metrics\n")
        if method not in ("GET", "HEAD"):
            return _response(
                405, "text/plain; charset=utf-8", b"GET only\n", "Allow: GET, HEAD\r\n"
            )
        accept = ""
        for line in lines[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "accept":
                accept = value.strip()
        encoder, content_type = choose_encoder(accept)
        body = encoder(self._registry)
        return _response(200, content_type, b"" if method == "HEAD" else body, length=len(body))

    def _write(self, fd: int, scrape: _Scrape) -> None:
        try:
            sent = scrape.sock.send(scrape.out)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            self._finish(fd)
            return
        scrape.out = scrape.out[sent:]
        if not scrape.out:
            self._finish(fd)
        else:
            self._wakeups.modify_fd(
                fd, selectors.EVENT_WRITE, functools.partial(self._on_event, fd)
            )

    def _finish(self, fd: int) -> None:
        scrape = self._scrapes.pop(fd, None)
        if scrape is None:
            return
        self._wakeups.unwatch_fd(fd)
        scrape.sock.close()


_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    431: "Request Header Fields Too Large",
}


def _response(
    status: int, content_type: str, body: bytes, extra: str = "", length: int | None = None
) -> bytes:
    head = (
        f"HTTP/1.1 {status} {_REASONS[status]}\r\n"
        f"Content-Type: {content_type}\r\n"
        f"Content-Length: {len(body) if length is None else length}\r\n"
        f"{extra}Connection: close\r\n\r\n"
    )
    return head.encode("latin-1") + body
