"""One exchange: read a request, call the handler, write the response.

``exchange`` is the coroutine path (what ``Server.process_request`` runs);
``finish`` is the synchronous core that the connection's inline path shares
with it, so both answer a request the same way. Streams and bodies big enough
to compress slice by slice are finished by ``respond_slow``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from prefork import log
from prefork._types import Action
from prefork.apps.handler import HandlerResultError, check_result, is_stream
from prefork.errors import PeerGone, PreforkError, ProtocolError
from prefork.http import compression
from prefork.http.protocol import DATE, SERVER_HEADER, bodyless_status, error_response, status_line
from prefork.http.request import Request, parse_args

if TYPE_CHECKING:
    from prefork.engine.connection import Connection
    from prefork.engine.state import ServerState

logger = logging.getLogger(log.WORKER)
app_logger = logging.getLogger(log.APP)

# Responses with bodies at least this big are written in two calls (no copy).
JOIN_BODY_MAX_BYTES = 64 * 1024
# Header names the server owns: a handler's value is replaced or interpreted.
_FRAMING = frozenset(("content-length", "transfer-encoding", "connection", "date"))


async def exchange(
    conn: Connection, state: ServerState, client_ip: str, count: int, redis_module: Any
) -> Action:
    """Read one request, call the handler, write the response; say what to do next."""
    try:
        req = await conn.receive_request(count)
    except ProtocolError as exc:
        _reject(conn, state, client_ip, exc)
        raise
    if req is None:
        # Served inline up to a response that needs this coroutine (a stream,
        # an async result, a big body to compress off the loop).
        handoff = conn.take_handoff()
        if handoff is None:
            return "close"  # the inline path answered and closed
        req, result, started = handoff
        count = conn.count  # the inline path answered some requests meanwhile
        if asyncio.iscoroutine(result):
            try:
                result = await result
            except Exception:
                return handler_failed(conn, state, req, conn.client_ip, started)
    else:
        started = time.monotonic()
        ctx = conn.context(client_ip, redis_module)
        if state.access.header_names:
            state.access.capture(req)
        try:
            if state.is_async:
                result = await state.handler(  # type: ignore[misc]
                    req.method, req.path, parse_args(req.query), req.headers, req.body, ctx
                )
            else:
                result = state.handler(
                    req.method, req.path, parse_args(req.query), req.headers, req.body, ctx
                )
                # (iscoroutine on a tuple goes through an ABC check: skip it.)
                if type(result) is not tuple and asyncio.iscoroutine(result):
                    result = await result
        except Exception:
            return handler_failed(conn, state, req, client_ip, started)
    conn.count = count + 1
    outcome = finish(conn, state, req, result, count, started)
    if isinstance(outcome, str):
        action: Action = outcome
    else:
        action = await respond_slow(conn, state, req, outcome, started)
    if conn._write_paused and action == "keep-alive":
        await conn.drain()
    return action


def _reject(conn: Connection, state: ServerState, client_ip: str, exc: ProtocolError) -> None:
    logger.debug("rejecting request from %s: %d %s", client_ip, exc.status, exc)
    sent = conn._reply_error_and_close(exc)
    state.access.record(client_ip, None, exc.status, sent, time.monotonic())


def handler_failed(
    conn: Connection, state: ServerState, req: Request, client_ip: str, started: float
) -> Action:
    app_logger.exception("handler raised on %s %s", req.method, req.path)
    return _send_500(conn, state, req, client_ip, started)


def _send_500(
    conn: Connection, state: ServerState, req: Request, client_ip: str, started: float
) -> Action:
    data = error_response(500, "Internal Server Error")
    if req.method == "HEAD":  # RFC 9110 §9.3.2: no content, whatever the status
        data = data[: data.index(b"\r\n\r\n") + 4]
    conn._send(data)
    state.requests_served += 1
    state.access.record(client_ip, req, 500, body_length(data), started)
    conn.graceful_close()
    return "close"


def body_length(response: bytes) -> int:
    return len(response) - response.find(b"\r\n\r\n") - 4


class _BadHeader(Exception):
    """A response header the handler set cannot be sent (CR/LF/NUL, not latin-1)."""


class _Slow:
    """A response that needs the coroutine: a stream, or a body to compress off the loop."""

    __slots__ = ("content", "headers", "keep_alive", "status")

    def __init__(
        self, content: Any, status: int, headers: Mapping[str, Any] | None, keep_alive: bool
    ) -> None:
        self.content = content
        self.status = status
        self.headers = headers
        self.keep_alive = keep_alive


def finish(
    conn: Connection,
    state: ServerState,
    req: Request,
    result: object,
    count: int,
    started: float,
) -> Action | _Slow:
    """Write the response to ``req`` now if it can be done without waiting."""
    valid = False
    if type(result) is tuple and len(result) == 3:
        content, status, headers = result
        if content is None and status is None and headers is None:
            # The handler proxied the exchange itself on ctx.client.
            state.requests_served += 1
            return "keep-alive"
        valid = type(status) is int and 100 <= status <= 599 and type(headers) is dict
    if not valid:
        try:
            content, status, headers = check_result(result)
        except HandlerResultError as exc:
            app_logger.error("%s %s: %s", req.method, req.path, exc)
            return _send_500(conn, state, req, conn.client_ip, started)
    keep_alive = (
        req.keep_alive
        and count + 1 < state.requests_per_connection
        and not state.draining
        and not conn._closing
    )
    try:
        text, lower, has_server, close = _fields(state, headers, type(content) is str)
        if close:
            keep_alive = False
        if isinstance(content, bytes):
            body = content
        elif isinstance(content, str):
            body = content.encode("utf-8")
        elif content is None:
            body = b""
        elif isinstance(content, bytearray | memoryview):
            body = bytes(content)
        elif is_stream(content):
            return _Slow(content, status, headers, keep_alive)
        else:
            raise _BadHeader(f"handler returned content of type {type(content).__name__}")
        coding, text = _negotiate(state, req, status, lower, text, len(body))
        if coding is not None:
            size = len(body)
            cache = state.body_cache
            cached = None
            if size >= compression.CACHE_MIN_BYTES and cache.max_bytes:
                cached = cache.get(coding, body)
            if cached is not None:
                body = cached
            elif size > compression.SLICE_BYTES:
                return _Slow(content, status, headers, keep_alive)
            else:
                out = compression.compress_body(coding, state.policy.level, body)
                if size >= compression.CACHE_MIN_BYTES:
                    cache.put(coding, body, out)
                body = out
        sent = _write_fixed(conn, req, status, text, has_server, body, keep_alive)
    except _BadHeader as exc:
        app_logger.error("%s %s: %s", req.method, req.path, exc)
        return _send_500(conn, state, req, conn.client_ip, started)
    return _done(conn, state, req, status, sent, started, keep_alive)


def _done(
    conn: Connection,
    state: ServerState,
    req: Request,
    status: int,
    sent: int,
    started: float,
    keep_alive: bool,
) -> Action:
    """Count and log a response that went out; close the connection if it said so."""
    state.requests_served += 1
    state.access.record(conn.client_ip, req, status, sent, started)
    if keep_alive:
        return "keep-alive"
    conn.close_after_response(asked=not req.keep_alive)
    return "close"


def _negotiate(
    state: ServerState,
    req: Request,
    status: int,
    lower: Mapping[str, str],
    text: str,
    body_len: int | None,
) -> tuple[str | None, str]:
    """The coding to apply (or None) and the header text, with Vary etc. updated."""
    policy = state.policy
    if not policy.enabled or req.method == "HEAD" or bodyless_status(status):
        return None, text
    if body_len is not None and body_len < policy.min_size:
        return None, text
    coding, vary = policy.choose(
        req.method, status, req.headers.get("accept-encoding"), lower, body_len
    )
    if coding is not None or vary:
        key = (text, coding, vary)
        cache = state.negotiated_cache
        new = cache.get(key)
        if new is None:
            changed = dict(lower)  # ``lower`` may be shared through the fields cache
            compression.apply_headers(changed, coding, vary)
            new = _replace_fields(text, lower, changed)
            if len(text) <= NEGOTIATED_MAX_TEXT:
                if len(cache) >= NEGOTIATED_MAX_ENTRIES:
                    cache.clear()
                cache[key] = new
        text = new
    return coding, text


# state.negotiated_cache: the header text after compression's changes by (text,
# coding, vary), a pure function of those (``lower`` is derived from ``text``);
# a handler sends few distinct header sets. At most 256 x 2 KiB per worker.
NEGOTIATED_MAX_ENTRIES = 256
NEGOTIATED_MAX_TEXT = 2048


def _replace_fields(text: str, before: Mapping[str, str], after: Mapping[str, str]) -> str:
    """``text`` with the fields that differ between ``before`` and ``after`` replaced.

    Every other line stays as the handler wrote it, in its case and repeated if it
    was (two ``Set-Cookie`` keys differing in case are two lines). ``text`` holds
    one CRLF per line and no other CR or LF (``_build_fields`` checked).
    """
    touched = {name for name in before.keys() | after.keys() if before.get(name) != after.get(name)}
    lines = [
        line + "\r\n"
        for line in text.split("\r\n")[:-1]
        if line.partition(":")[0].lower() not in touched
    ]
    lines += [f"{name}: {value}\r\n" for name, value in after.items() if name in touched]
    return "".join(lines)


def _write_fixed(
    conn: Connection,
    req: Request,
    status: int,
    text: str,
    has_server: bool,
    body: bytes,
    keep_alive: bool,
) -> int:
    """Serialise and write a response with a known body; returns the body bytes sent."""
    if bodyless_status(status):
        framing = ""
        body = b""
    else:
        framing = f"Content-Length: {len(body)}\r\n"
        if req.method == "HEAD":
            body = b""
    head = _encode_head(status, text, has_server, framing, keep_alive, req.version == "1.0")
    transport = conn.transport
    if transport is None or conn._lost:
        raise PeerGone("connection lost before the response")
    state = conn.state
    if len(body) < JOIN_BODY_MAX_BYTES:
        if keep_alive and conn._parked and state.batch_writes:  # see ServerState.defer_write
            state.defer_write(transport, head + body)
            return len(body)
        conn.write_now(head + body)
    else:
        conn.write_now(head)
        transport.write(body)
    return len(body)


async def respond_slow(
    conn: Connection, state: ServerState, req: Request, slow: _Slow, started: float
) -> Action:
    """Stream an iterable, or compress a big body slice by slice, then write it."""
    status = slow.status
    try:
        content = slow.content
        text, lower, has_server, close = _fields(state, slow.headers, type(content) is str)
        keep_alive = slow.keep_alive and not close
        if is_stream(content):
            sent, keep_alive = await _respond_stream(
                conn, state, req, content, status, text, lower, has_server, keep_alive
            )
        else:
            body = content.encode("utf-8") if isinstance(content, str) else bytes(content)
            coding, text = _negotiate(state, req, status, lower, text, len(body))
            if coding is not None:
                out = await compression.compress_in_slices(
                    coding, state.policy.level, body, state.compress_turn
                )
                state.body_cache.put(coding, body, out)
                body = out
            sent = _write_fixed(conn, req, status, text, has_server, body, keep_alive)
    except _BadHeader as exc:
        app_logger.error("%s %s: %s", req.method, req.path, exc)
        return _send_500(conn, state, req, conn.client_ip, started)
    return _done(conn, state, req, status, sent, started, keep_alive)


# The text of a response's header fields, by the handler's (name, value)
# pairs: handlers return the same few header sets again and again, so the
# checks and the lower-casing run once per distinct set and worker.
FIELDS_CACHE_MAX_ENTRIES = 256
_DEFAULT_CONTENT_TYPE = "text/plain; charset=utf-8"
_NO_FIELDS: tuple[str, Mapping[str, str], bool, bool] = ("", {}, False, False)


def _fields(
    state: ServerState, headers: Mapping[str, Any] | None, text_body: bool
) -> tuple[str, Mapping[str, str], bool, bool]:
    """Handler headers -> (header text, lower-case map, has Server, asks to close).

    ``text_body``: a ``str`` body, which gets a text/plain content type when the
    handler set none. The map may be shared: never change it.
    """
    if not headers and not text_body:
        return _NO_FIELDS
    cache = state.fields_cache
    try:
        key = (text_body, *headers.items()) if headers else (text_body,)
        hit = cache.get(key)
    except TypeError:  # an unhashable value: work it out every time
        key, hit = None, None
    if hit is not None:
        return hit
    fields = _build_fields(headers, text_body)
    if key is not None:
        if len(cache) >= FIELDS_CACHE_MAX_ENTRIES:
            cache.clear()  # start over rather than keep stale sets forever
        cache[key] = fields
    return fields


def _build_fields(
    headers: Mapping[str, Any] | None, text_body: bool
) -> tuple[str, Mapping[str, str], bool, bool]:
    lines: list[str] = []
    lower: dict[str, str] = {}
    close = False
    for name, value in (headers or {}).items():
        if not isinstance(value, str):
            value = str(value)
        if not isinstance(name, str):
            raise _BadHeader(f"header name {name!r} is not a string")
        lname = name.lower()
        if lname in _FRAMING:
            if lname == "connection" and "close" in value.lower():
                close = True
            continue
        lower[lname] = value
        lines.append(f"{name}: {value}\r\n")
    if text_body and "content-type" not in lower:
        lower["content-type"] = _DEFAULT_CONTENT_TYPE
        lines.append(f"content-type: {_DEFAULT_CONTENT_TYPE}\r\n")
    text = "".join(lines)
    # A handler's CR, LF or NUL must never inject a header or split the
    # response: each line may hold exactly its own terminating CRLF.
    n = len(lines)
    if text.count("\n") != n or text.count("\r") != n or "\0" in text:
        raise _BadHeader("response header contains CR, LF or NUL")
    try:
        text.encode("latin-1")
    except UnicodeEncodeError:
        raise _BadHeader("response header is not latin-1 text") from None
    return text, lower, "server" in lower, close


def _encode_head(
    status: int,
    text: str,
    has_server: bool,
    framing: str,
    keep_alive: bool,
    http10: bool,
) -> bytes:
    if keep_alive:
        connection = "Connection: keep-alive\r\n" if http10 else ""
    else:
        connection = "Connection: close\r\n"
    server = "" if has_server else SERVER_HEADER
    return (f"{status_line(status)}{server}{DATE.line}{text}{framing}{connection}\r\n").encode(
        "latin-1"
    )


async def _iterate(content: Any) -> AsyncIterator[bytes]:
    if isinstance(content, AsyncIterable):
        async for chunk in content:
            yield _as_bytes(chunk)
    else:
        iterator: Iterator[Any] = iter(content)
        for chunk in iterator:
            yield _as_bytes(chunk)


def _as_bytes(chunk: Any) -> bytes:
    if isinstance(chunk, bytes):
        return chunk
    if isinstance(chunk, str):
        return chunk.encode("utf-8")
    if isinstance(chunk, bytearray | memoryview):
        return bytes(chunk)
    raise TypeError(f"stream yielded {type(chunk).__name__}, expected bytes")


async def _close_stream(content: Any) -> None:
    closer = getattr(content, "aclose", None)
    if closer is not None:
        await closer()
        return
    closer = getattr(content, "close", None)
    if closer is not None:
        closer()


async def _respond_stream(
    conn: Connection,
    state: ServerState,
    req: Request,
    content: AsyncIterable[Any] | Iterable[Any],
    status: int,
    text: str,
    lower: Mapping[str, str],
    has_server: bool,
    keep_alive: bool,
) -> tuple[int, bool]:
    """Stream an iterable: chunked on HTTP/1.1, close-delimited on HTTP/1.0."""
    http10 = req.version == "1.0"
    if req.method == "HEAD" or bodyless_status(status):
        await _close_stream(content)
        head = _encode_head(status, text, has_server, "", keep_alive, http10)
        conn._send(head)
        return 0, keep_alive
    encoder = None
    coding, text = _negotiate(state, req, status, lower, text, None)
    if coding is not None:
        encoder = compression.make_encoder(coding, state.policy.level)
    if http10:
        keep_alive = False
        framing = ""
    else:
        framing = "Transfer-Encoding: chunked\r\n"
    head = _encode_head(status, text, has_server, framing, keep_alive, http10)
    conn._send(head)
    sent = 0
    try:
        async for chunk in _iterate(content):
            if encoder is not None:
                chunk = encoder.compress(chunk) + encoder.flush()
            if not chunk:
                continue
            sent += len(chunk)
            if http10:
                conn._send(chunk)
            else:
                conn._send(b"%x\r\n%b\r\n" % (len(chunk), chunk))
            await conn.drain()
        if encoder is not None:
            tail = encoder.finish()
            if tail:
                sent += len(tail)
                conn._send(tail if http10 else b"%x\r\n%b\r\n" % (len(tail), tail))
        if not http10:
            conn._send(b"0\r\n\r\n")
        await conn.drain()
    except PreforkError:
        raise
    except Exception:
        # Headers are gone already: the only honest signal left is to cut the
        # connection so the client sees an incomplete body.
        app_logger.exception("stream raised on %s %s", req.method, req.path)
        conn.abort()
        raise PeerGone("stream failed mid-response") from None
    finally:
        await _close_stream(content)
    return sent, keep_alive
