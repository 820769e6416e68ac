"""The e2e tests' raw HTTP/1.1 client and their pool of module-scoped servers.

``Wire`` sends raw bytes and reads responses exactly as they are framed on the
wire (so a test sees what a real client would, stray bytes included);
``request`` builds a request head; ``Served`` is a running server with its
directory; ``ServerPool`` starts servers on first use and stops them all at
the end of a module. Every loop is bounded in count and time.
"""

from __future__ import annotations

import select
import socket
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

from tests.e2e.conftest import ServerProcess

RECV_BYTES = 256 * 1024


@dataclass
class Response:
    """One response as it came over the wire."""

    version: str
    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes = b""
    raw_head: bytes = b""
    raw_body: bytes = b""  # the body bytes as framed (chunk sizes included)
    chunks: list[bytes] = field(default_factory=list)

    def values(self, name: str) -> list[str]:
        return [v for n, v in self.headers if n.lower() == name.lower()]

    def header(self, name: str) -> str | None:
        values = self.values(name)
        return ", ".join(values) if values else None

    def has(self, name: str) -> bool:
        return any(n.lower() == name.lower() for n, _ in self.headers)

    @property
    def closes(self) -> bool:
        value = self.header("connection")
        return value is not None and "close" in value.lower()

    @property
    def vary_tokens(self) -> list[str]:
        value = self.header("vary")
        return [t.strip().lower() for t in value.split(",")] if value else []


class Wire:
    """A client socket that sends raw bytes and reads one response (or one chunk) at a time."""

    def __init__(self, port: int, timeout: float = 5.0, rcvbuf: int | None = None) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(timeout)
        self.sock.connect(("127.0.0.1", port))
        self.timeout = timeout
        self.buf = b""
        self.eof = False

    def __enter__(self) -> Wire:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self) -> None:
        if self.eof:
            raise EOFError(f"connection closed; unread: {self.buf[:200]!r}")
        try:
            chunk = self.sock.recv(RECV_BYTES)
        except ConnectionResetError:
            chunk = b""
        if not chunk:
            self.eof = True
            raise EOFError(f"connection closed; unread: {self.buf[:200]!r}")
        self.buf += chunk

    def _line(self) -> bytes:
        for _ in range(10_000):
            i = self.buf.find(b"\r\n")
            if i >= 0:
                line, self.buf = self.buf[:i], self.buf[i + 2 :]
                return line
            self._fill()
        raise AssertionError("no line end")

    def _exact(self, n: int) -> bytes:
        for _ in range(100_000):
            if len(self.buf) >= n:
                data, self.buf = self.buf[:n], self.buf[n:]
                return data
            self._fill()
        raise AssertionError("body never arrived")

    def read_head(self) -> Response:
        """The status line and header fields of the next response."""
        status_line = self._line()
        version, status, reason = [*status_line.decode("latin-1").split(" ", 2), ""][:3]
        assert version.startswith("HTTP/1."), status_line
        headers: list[tuple[str, str]] = []
        raw_head = status_line + b"\r\n"
        for _ in range(1000):
            line = self._line()
            raw_head += line + b"\r\n"
            if not line:
                return Response(version, int(status), reason, headers, raw_head=raw_head)
            name, _, value = line.decode("latin-1").partition(":")
            headers.append((name, value.strip(" \t")))
        raise AssertionError("too many header lines")

    def read_chunk(self) -> bytes | None:
        """The next chunk's data; None for the last chunk (trailers consumed)."""
        return self._chunk()[0]

    def _chunk(self) -> tuple[bytes | None, bytes]:
        """The next chunk's data (None for the last) and its bytes as framed."""
        size_line = self._line()
        raw = size_line + b"\r\n"
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            for _ in range(100):
                trailer = self._line()
                raw += trailer + b"\r\n"
                if not trailer:
                    return None, raw
            raise AssertionError("too many trailer lines")
        data = self._exact(size)
        crlf = self._exact(2)
        assert crlf == b"\r\n", f"chunk not followed by CRLF: {crlf!r}"
        return data, raw + data + crlf

    def read_body(self, resp: Response, method: str = "GET") -> Response:
        """The body of ``resp`` (to a ``method`` request) as RFC 9112 §6.3 frames it."""
        if method == "HEAD" or resp.status < 200 or resp.status in (204, 304):
            return resp
        te = resp.header("transfer-encoding")
        if te is not None:
            assert te.lower() == "chunked", te
            raw = b""
            for _ in range(100_000):
                chunk, framed = self._chunk()
                raw += framed
                if chunk is None:
                    break
                resp.chunks.append(chunk)
            resp.body = b"".join(resp.chunks)
            resp.raw_body = raw
        elif resp.header("content-length") is not None:
            (length,) = resp.values("content-length")
            resp.body = resp.raw_body = self._exact(int(length))
        else:
            resp.body = resp.raw_body = self.read_until_close()
        return resp

    def read_response(self, method: str = "GET", *, head: bool = False) -> Response:
        """One whole response; ``head``: it answers a HEAD request (no body follows)."""
        return self.read_body(self.read_head(), "HEAD" if head else method)

    def read_until_close(self, timeout: float | None = None) -> bytes:
        """Everything until the server closes (or resets) the connection."""
        deadline = time.monotonic() + (timeout or self.timeout)
        data, self.buf = self.buf, b""
        while not self.eof and time.monotonic() < deadline:
            try:
                chunk = self.sock.recv(RECV_BYTES)
            except ConnectionResetError:
                chunk = b""
            except TimeoutError:
                break
            if not chunk:
                self.eof = True
                break
            data += chunk
        assert self.eof, f"server did not close the connection; got {data[:200]!r}"
        return data

    def closed_within(self, timeout: float) -> bool:
        """True when the server closes the connection (with nothing more to read) in time."""
        if self.buf:
            return False
        ready, _, _ = select.select([self.sock], [], [], timeout)
        if not ready:
            return False
        try:
            chunk = self.sock.recv(RECV_BYTES)
        except ConnectionResetError:
            return True
        self.buf += chunk
        return not chunk


def request(path: str, *headers: str, method: str = "GET", version: str = "1.1") -> bytes:
    """A request head: ``Host: test`` for HTTP/1.1, then ``headers`` ("Name: value")."""
    lines = [f"{method} {path} HTTP/{version}", *(["Host: test"] if version == "1.1" else [])]
    lines.extend(headers)
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def http_exchange(port: int, data: bytes, timeout: float = 10.0) -> bytes:
    """Send ``data`` on a fresh connection; everything until the server closes it."""
    with Wire(port, timeout) as w:
        w.send(data)
        return w.read_until_close()


@dataclass
class Served:
    """A running server, its directory and the handler calls it recorded."""

    proc: ServerProcess
    directory: Path

    @property
    def port(self) -> int:
        return self.proc.port

    def wire(self, **kwargs: Any) -> Wire:
        return Wire(self.port, **kwargs)

    def calls(self) -> str:
        """What the test apps append to ``calls.log``, one handler call a line."""
        path = self.directory / "calls.log"
        return path.read_text(encoding="utf-8") if path.exists() else ""

    def exchange(self, data: bytes, method: str = "GET", *, head: bool = False) -> Response:
        """Send ``data`` on a fresh connection and read one response."""
        with self.wire() as w:
            w.send(data)
            return w.read_response(method, head=head)

    def get(self, path: str, *headers: str) -> Response:
        return self.exchange(request(path, *headers))


K = TypeVar("K", bound=Hashable)


class ServerPool(Generic[K]):
    """Module-scoped servers started on first use, one per key; ``stop()`` ends them all.

    ``launch(directory, key)`` starts the server for ``key`` in a fresh
    directory (``launch_server`` waits until a worker answered). A server that
    failed to start fails every later test that asks for it at once, with the
    first error, rather than being started again.
    """

    def __init__(self, base: Path, launch: Callable[[Path, K], ServerProcess]) -> None:
        self.base = base
        self.launch = launch
        self.servers: dict[K, Served] = {}
        self.failed: dict[K, str] = {}

    def get(self, key: K) -> Served:
        if key in self.failed:
            raise AssertionError(f"server {key!r} did not start: {self.failed[key]}")
        if key not in self.servers:
            name = "-".join(key) if isinstance(key, tuple) else str(key)
            directory = self.base / name
            directory.mkdir()
            try:
                proc = self.launch(directory, key)
            except AssertionError as exc:
                self.failed[key] = str(exc)
                raise
            self.servers[key] = Served(proc, directory)
        return self.servers[key]

    def stop(self) -> None:
        for served in self.servers.values():
            served.proc.stop()
