"""The WSGI ``environ`` (PEP 3333): CGI variables, ``wsgi.*`` keys, input and errors.

``ConnectionEnviron`` holds what is the same for every request of a connection
(the server's and the peer's addresses, the scheme, the ``wsgi.*`` keys); a
request's environ is a copy of it plus the request's own keys
(``request_environ``). Strings are "native strings" as PEP 3333 says: bytes
decoded as latin-1 (``PATH_INFO`` is percent-decoded first).
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterable, Iterator
from typing import IO, Any, Final
from urllib.parse import unquote_to_bytes

from prefork import log
from prefork.http.request import Request

app_logger = logging.getLogger(log.APP)

Environ = dict[str, Any]

# The environ key of each lower-case field name (a per-worker cache: most
# traffic repeats a few names). CGI gives Content-Type and Content-Length
# their own keys (PEP 3333 and wsgiref.validate forbid HTTP_CONTENT_TYPE and
# HTTP_CONTENT_LENGTH); a name the app must not see maps to _DROPPED, taken out
# again after the environ was filled in one pass (``request_environ``).
_DROPPED: Final = ""
_KEYS: Final[dict[str, str]] = {
    "content-type": "CONTENT_TYPE",
    "content-length": "CONTENT_LENGTH",
}
_KEYS_MAX: Final = 512
# Percent-decoded paths by raw path (most requests repeat a few).
_PATHS: Final[dict[str, str]] = {}
_PATHS_MAX: Final = 1024


def header_key(name: str) -> str | None:
    """``HTTP_ACCEPT_ENCODING`` for ``accept-encoding``; None for a field with no ``HTTP_*``
    key (Content-Type and Content-Length have their own) or one the app must not see.

    A field name with ``_`` is dropped (as gunicorn, nginx and Apache do): its
    key would be the same as that of the name with ``-`` instead, so a client
    could pass off ``X_Forwarded_For`` as ``X-Forwarded-For``.
    """
    key = _key(name)
    return key if key.startswith("HTTP_") else None


def _key(name: str) -> str:
    """The environ key of the field ``name`` (``_DROPPED`` for a dropped one), cached."""
    key = _KEYS.get(name)
    if key is None:
        key = _DROPPED if "_" in name else "HTTP_" + name.upper().replace("-", "_")
        if len(_KEYS) < _KEYS_MAX:
            _KEYS[name] = key
    return key


def path_info(raw: str, script_name: str) -> str:
    """The percent-decoded path as a latin-1 str, without the ``script_name`` prefix."""
    path = _PATHS.get(raw)
    if path is None:
        path = unquote_to_bytes(raw).decode("latin-1") if "%" in raw else raw
        if len(_PATHS) < _PATHS_MAX and len(raw) <= 256:
            _PATHS[raw] = path
    if script_name and path.startswith(script_name):
        rest = path[len(script_name) :]
        if not rest or rest[0] == "/":
            return rest
    return path


class Input:
    """``wsgi.input``: the request body as a binary file-like object.

    Reads a body that arrived whole before the app was called
    (``Request.body``); larger ones are streamed (``wsgi_input.StreamedInput``).
    ``read()`` past the end returns ``b""`` (``wsgi.input_terminated``).
    """

    __slots__ = ("_buf",)

    def __init__(self, body: bytes) -> None:
        self._buf = io.BytesIO(body)

    def read(self, size: int | None = -1) -> bytes:
        return self._buf.read(-1 if size is None else size)

    def readline(self, size: int | None = -1) -> bytes:
        return self._buf.readline(-1 if size is None else size)

    def readlines(self, hint: int | None = -1) -> list[bytes]:
        return self._buf.readlines(-1 if hint is None else hint)

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._buf)

    def close(self) -> None:
        self._buf.close()


class _EmptyInput(Input):
    """``wsgi.input`` of a request without a body: nothing to read, no state, one for all."""

    __slots__ = ()

    def __init__(self) -> None:
        pass

    def read(self, size: int | None = -1) -> bytes:
        return b""

    def readline(self, size: int | None = -1) -> bytes:
        return b""

    def readlines(self, hint: int | None = -1) -> list[bytes]:
        return []

    def __iter__(self) -> Iterator[bytes]:
        return iter(())

    def close(self) -> None:
        pass


EMPTY_INPUT: Final = _EmptyInput()


class Errors:
    """``wsgi.errors``: text written here goes to the app log (``prefork.app``), line by line."""

    __slots__ = ("_partial",)

    def __init__(self) -> None:
        self._partial = ""

    def write(self, text: str) -> int:
        if not isinstance(text, str):
            raise TypeError(f"wsgi.errors takes str, not {type(text).__name__}")
        data = self._partial + text
        *lines, self._partial = data.split("\n")
        for line in lines:
            app_logger.error("%s", line)
        return len(text)

    def writelines(self, seq: Iterable[str]) -> None:
        for text in seq:
            self.write(text)

    def flush(self) -> None:
        if self._partial:
            app_logger.error("%s", self._partial)
            self._partial = ""


class FileWrapper:
    """``wsgi.file_wrapper``: a file the server may send with ``os.sendfile``.

    Iterating it reads ``block_size`` bytes at a time (what the server does
    when it cannot send the file itself: TLS, or a file object without a
    descriptor). ``close()`` closes the file, as PEP 3333 asks.
    """

    __slots__ = ("block_size", "filelike")

    def __init__(self, filelike: IO[bytes], block_size: int = 64 * 1024) -> None:
        self.filelike = filelike
        self.block_size = block_size

    def __iter__(self) -> Iterator[bytes]:
        read = self.filelike.read
        size = self.block_size
        while True:
            data = read(size)
            if not data:
                return
            yield data

    def fileno(self) -> int | None:
        """The descriptor to send from, or None when the file has none."""
        try:
            return int(self.filelike.fileno())
        except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
            return None

    def close(self) -> None:
        closer = getattr(self.filelike, "close", None)
        if closer is not None:
            closer()


class ConnectionEnviron:
    """What every request's environ on one connection shares (the ``wsgi.*`` keys, addresses).

    ``base`` is the template a request's environ is copied from: it holds the
    keys most requests leave as they are too (``SERVER_PROTOCOL`` HTTP/1.1, an
    empty ``QUERY_STRING`` and ``wsgi.input``), overwritten when they differ.
    """

    __slots__ = ("base", "client_ip", "script_name")

    def __init__(
        self,
        script_name: str,
        scheme: str,
        client_ip: str,
        peername: tuple[str, int] | None,
        sockname: object,
    ) -> None:
        self.client_ip = client_ip
        self.script_name = script_name
        if isinstance(sockname, tuple):
            server_name, server_port = str(sockname[0]), str(sockname[1])
        else:  # a Unix socket, or not known
            server_name, server_port = "localhost", "443" if scheme == "https" else "80"
        self.base: Environ = {
            "SCRIPT_NAME": script_name,
            "SERVER_NAME": server_name,
            "SERVER_PORT": server_port,
            "SERVER_PROTOCOL": "HTTP/1.1",
            "QUERY_STRING": "",
            "REMOTE_ADDR": client_ip,
            "REMOTE_PORT": str(peername[1]) if peername else "",
            "wsgi.version": (1, 0),
            "wsgi.url_scheme": scheme,
            "wsgi.input": EMPTY_INPUT,
            "wsgi.errors": Errors(),
            "wsgi.multithread": True,
            "wsgi.multiprocess": True,
            "wsgi.run_once": False,
            "wsgi.input_terminated": True,
            "wsgi.file_wrapper": FileWrapper,
        }


def request_environ(conn_env: ConnectionEnviron, req: Request, stream: object = None) -> Environ:
    """The environ of one request on the connection ``conn_env`` describes.

    ``stream``: the ``wsgi.input`` of a body read as the app reads it
    (``wsgi_input.StreamedInput``); None when the body is ``req.body``.
    """
    environ = conn_env.base.copy()
    headers = req.headers
    # The fields in one pass, each key from the cache (a dropped field's
    # goes in under _DROPPED and out again below: one test per request, not
    # per field). (Measured: a dict comprehension, or map and zip in C, cost
    # more than this loop on CPython 3.11.)
    keys = _KEYS
    for name, value in headers.items():
        key = keys.get(name)
        if key is None:
            key = _key(name)
        environ[key] = value
    if _DROPPED in environ:
        del environ[_DROPPED]
    environ["REQUEST_METHOD"] = req.method
    environ["PATH_INFO"] = path_info(req.path, conn_env.script_name)
    query = req.query
    if query:
        environ["QUERY_STRING"] = query
    if req.version == "1.0":
        environ["SERVER_PROTOCOL"] = "HTTP/1.0"
    body = req.body
    if stream is not None:
        environ["wsgi.input"] = stream
        # Streamed: the length is known only when the client announced it
        # (PEP 3333: a chunked body is read to b"", wsgi.input_terminated).
        # (A request with both Content-Length and chunked was refused.)
        if not req.chunked:
            environ["CONTENT_LENGTH"] = str(req.content_length)
    elif body or req.chunked or "CONTENT_LENGTH" in environ:
        if body:
            environ["wsgi.input"] = Input(body)
        # The whole body is there: its length is known even when it came chunked
        # (an app that reads CONTENT_LENGTH bytes, as Django does, gets all of it).
        environ["CONTENT_LENGTH"] = str(len(body))
    return environ
