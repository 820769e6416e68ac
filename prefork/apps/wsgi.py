"""The WSGI interface (PEP 3333): ``app(environ, start_response)`` in a thread pool.

``WsgiApp`` is what the engine calls (``engine.app.AppInterface``). The event
loop keeps doing all the I/O: it reads and parses every connection's requests,
hands each whole request to a bounded pool of ``wsgi_threads`` threads, and
writes what they answer. (A large, chunked or 100-continue body is handed
over as it arrives: the thread asks the loop for each piece, ``wsgi_input``.)
A thread only runs the app and builds the response bytes
(``wsgi_call.Call``); while all threads are busy, requests wait in the pool's
queue (never a 503), and connections that are idle, slow to send or slow to
read cost no thread.

The hand-off is one ``SimpleQueue.put`` to the pool and, back, one loop
wake-up for however many calls finished meanwhile (``_deliver``), not one per
call: measured against ``loop.run_in_executor`` in docs/wsgi.md. A whole
response is written there and then, and the connection goes on from the
protocol callback (``Connection.resume_inline``): its coroutine is woken
only for what needs it (a streamed body or response, an error, bytes that
came while the app ran).
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any, Final

from prefork import log
from prefork._types import Action
from prefork.apps.wsgi_call import Call, Outcome
from prefork.apps.wsgi_environ import ConnectionEnviron, request_environ
from prefork.apps.wsgi_headers import Head
from prefork.apps.wsgi_input import (
    CHUNKED_WHOLE_UP_TO,
    STREAM_BODIES_OVER,
    ClientDisconnected,
    InputError,
    StreamedInput,
)
from prefork.config import Config
from prefork.engine.connection import Connection
from prefork.errors import PeerGone, ProtocolError
from prefork.http import compression
from prefork.http.forwarded import Trust, resolve
from prefork.http.protocol import streams_body
from prefork.http.request import Request
from prefork.http.response import CONTINUE_RESPONSE, NegotiatedCache, body_length, error_response

# Bound once: the compiled build keeps a Final name in a C static, where
# time.monotonic would be looked up on the module at every call.
monotonic: Final = time.monotonic

logger = logging.getLogger(log.WORKER)
app_logger = logging.getLogger(log.APP)

WsgiCallable = Callable[..., Any]

# How long shutdown waits for the pool's threads (they are idle after the drain
# unless an app call hangs; daemon threads do not keep the worker alive).
JOIN_TIMEOUT_S: Final = 5.0
# While the head of a file sent with sendfile waits in the transport's buffer.
_FLUSH_POLL_S: Final = 0.001


class _Job:
    """One request handed to the pool: its call, and what the loop needs once it is done."""

    __slots__ = ("call", "client", "future", "started")

    def __init__(
        self, call: Call, future: asyncio.Future[Outcome], client: str, started: float
    ) -> None:
        self.call = call
        self.future = future
        self.client = client  # for the access log (a trusted proxy's, or the peer's)
        self.started = started


class WsgiApp:
    """The engine's view of a WSGI application, with its thread pool (one per worker)."""

    # Whole requests go to the pool straight from the protocol callback
    # (``respond_inline``), and the connection's coroutine wakes once, when
    # the response is ready, not also to hand the request over.
    inline = True

    def __init__(self, app: WsgiCallable, cfg: Config, name: str) -> None:
        self.app = app
        # Large, chunked and 100-continue bodies reach the app as they arrive
        # (wsgi_input.StreamedInput), read from its thread with flow control.
        self.fields_as_list = False  # (the app is given the dict)
        self.stream_bodies_over: int | None = STREAM_BODIES_OVER
        # The loop bounds a body read (request_body_timeout: 408); this bounds
        # a thread's wait on a loop that stopped.
        self.body_wait_s = cfg.request_body_timeout + 5.0
        self.name = name
        self.threads = cfg.wsgi_threads
        self.script_name = cfg.root_path
        self.write_timeout = cfg.response_write_timeout
        # The pool threads compress bodies themselves (off the loop).
        self.policy = compression.Policy(cfg.compression)
        self.compress = self.policy.enabled
        self.negotiated_cache: NegotiatedCache = {}
        self.fields_cache: dict[Any, Head] = {}
        self.tls = False  # set from the first connection (the worker's listeners all agree)
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._done: collections.deque[tuple[_Job, Outcome]] = collections.deque()
        self._scheduled = False
        # Jobs from the protocol callback, handed to the pool at the end of
        # the loop turn (``_submit_held``): see ``_submit``.
        self._held: list[_Job] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._workers: list[threading.Thread] = []
        self._tasks: set[asyncio.Task[None]] = set()

    # -- AppInterface ---------------------------------------------------------

    async def startup(self) -> None:
        self._loop = asyncio.get_running_loop()
        for n in range(self.threads):
            thread = threading.Thread(target=self._work, name=f"prefork-wsgi-{n}", daemon=True)
            thread.start()
            self._workers.append(thread)

    async def shutdown(self) -> None:
        for _ in self._workers:
            self._jobs.put(None)
        # Joined from another thread: one finishing a response still needs the loop.
        await asyncio.to_thread(self._join, monotonic() + JOIN_TIMEOUT_S)
        busy = sum(thread.is_alive() for thread in self._workers)
        if busy:
            logger.warning("app %s: %d WSGI call(s) still running at shutdown", self.name, busy)
        self._workers = []

    def _join(self, deadline: float) -> None:
        for thread in self._workers:
            thread.join(max(0.0, deadline - monotonic()))

    def respond_inline(self, conn: Connection, req: Request) -> bool:
        """Hand a whole request to the pool from the protocol callback.

        The coroutine stays parked until ``_deliver`` resumes it with the
        outcome. A request whose body is streamed goes to the coroutine at
        once (``exchange`` reads it as the app asks).
        """
        if streams_body(req, STREAM_BODIES_OVER):
            conn.hand_off(req)
        else:
            conn.hand_off(self._submit(conn, req, None, monotonic(), True), wake=False)
        return False

    async def exchange(self, conn: Connection) -> Action:
        count = conn.count
        try:
            req = await conn.receive_request(count)
        except ProtocolError as exc:
            conn.reject(exc)
            raise
        job: _Job | None = None
        if req is None:
            handoff = conn.take_handoff()
            if handoff is None:
                return "close"
            if isinstance(handoff, _Job):  # in the pool since respond_inline
                job = handoff
            else:  # a request whose body is streamed (respond_inline)
                assert isinstance(handoff, Request)
                req = handoff
        if job is None:
            assert req is not None
            started = monotonic()
            body: StreamedInput | None = None
            # (Most requests have no body: one test before streams_body's three.)
            if streams_body(req, STREAM_BODIES_OVER):
                try:
                    body = await self._read_ahead(conn, req)
                except ProtocolError as exc:
                    self._refuse(conn, req, conn.client_ip, exc, started)
                    return "close"
                except PeerGone:
                    conn.close()
                    return "close"
            job = self._submit(conn, req, body, started)
        out = await job.future
        call = job.call
        req = call.req
        client = job.client
        started = job.started
        shared = conn.shared
        kind = out.kind
        if kind == Outcome.BUFFERED:
            keep_alive = out.keep_alive
            conn.write_response(out.head, out.body, keep_alive, False)
        elif kind == Outcome.STREAMED:
            keep_alive = out.keep_alive
        elif kind == Outcome.FAILED:
            return self._send_500(conn, req, client, started)
        elif kind == Outcome.BROKEN:
            # The head went out: cutting the connection is the only honest
            # signal left (the client sees an incomplete body, not a complete one).
            conn.abort()
            conn.shared.record(client, req, out.status, out.sent, started)
            return "close"
        elif kind == Outcome.CUT:
            return "close"  # the body failed: the loop answered (413...) or cut already
        else:  # GONE
            conn.close()
            return "close"
        shared.record(client, req, out.status, out.sent, started)
        if keep_alive:
            if conn.write_paused:
                await conn.drain()
            return "keep-alive"
        conn.close_after_response(asked=not req.keep_alive)
        return "close"

    def _submit(
        self,
        conn: Connection,
        req: Request,
        body: StreamedInput | None,
        started: float,
        hold: bool = False,
    ) -> _Job:
        """Build the environ of ``req`` and hand the call to the pool; counts the request.

        ``hold``: from the protocol callback, where the job waits for the end
        of the loop turn. uvloop lets go of the GIL between two sockets'
        callbacks: a thread woken from one would take it there and run the
        app between them, and the loop and the thread would pass the GIL back
        and forth for every request (measured: 3 context switches per request
        instead of 0.25). Handed over together, the calls run after the turn.
        """
        shared = conn.shared
        env: ConnectionEnviron | None = conn.ctx
        if env is None or env.client_ip is not conn.client_ip:
            env = conn.ctx = self._connection_environ(conn)
        environ = request_environ(env, req, body)
        client = conn.client_ip
        if conn.behind_proxy:  # a trusted proxy says who the client is
            client = _forwarded(environ, req, shared.trust) or client
        count = conn.count
        keep_alive = (
            req.keep_alive
            and count + 1 < shared.requests_per_connection
            and not shared.draining
            and not conn.closing
        )
        conn.count_request()
        assert self._loop is not None, "WsgiApp.startup was not run"
        job = _Job(
            Call(self, conn, req, environ, keep_alive, body),
            self._loop.create_future(),
            client,
            started,
        )
        if hold:
            held = self._held
            held.append(job)
            if len(held) == 1:
                self._loop.call_soon(self._submit_held)
        else:
            self._jobs.put(job)
        return job

    def _submit_held(self) -> None:
        held = self._held
        self._held = []
        put = self._jobs.put
        for job in held:
            put(job)

    # -- the loop's side ------------------------------------------------------

    async def _read_ahead(self, conn: Connection, req: Request) -> StreamedInput | None:
        """The input of a request whose body is streamed; None once it was read whole.

        A chunked body without ``Expect`` is read here up to
        ``CHUNKED_WHOLE_UP_TO`` first (``wsgi_input``): most end by then and go
        to the app whole, with their length. Raises ProtocolError or PeerGone.
        """
        if not req.chunked or req.expect_continue:
            return StreamedInput(self, conn, req)
        parts = []
        size = 0
        more = True
        while more and size <= CHUNKED_WHOLE_UP_TO:
            data, more = await conn.receive_body()
            parts.append(data)
            size += len(data)
        first = b"".join(parts)
        if more or size > CHUNKED_WHOLE_UP_TO:
            # (One read may bring more than the bound: by size, not by luck,
            # does a chunked body get its CONTENT_LENGTH.)
            return StreamedInput(self, conn, req, first, more)
        req.body = first
        return None

    async def _receive_piece(
        self,
        conn: Connection,
        body: StreamedInput,
        send_continue: bool,
        head_sent: bool,
        reply: concurrent.futures.Future[tuple[bytes, bool]],
    ) -> None:
        """For a pool thread: the next piece of ``body`` into ``reply``."""
        req = body.req
        if send_continue:
            # The app reads the body: now the client may send it (and never
            # when the app answers without reading).
            conn.send(CONTINUE_RESPONSE)
        try:
            piece = await conn.receive_body()
        except ProtocolError as exc:
            status = 0
            if conn.lost:
                pass
            elif head_sent:
                conn.abort()  # too late for a 413: cut, so the response reads as incomplete
            else:
                self._refuse(conn, req, conn.client_ip, exc, monotonic())
                status = exc.status
            # (A 400 "connection closed inside a request body" is the reader
            # seeing the client's EOF: a disconnect, however it is answered.)
            gone = conn.lost or (exc.status == 400 and "closed" in str(exc))
            kind = ClientDisconnected if gone else InputError
            reply.set_exception(kind(f"request body: {exc}", status))
        except PeerGone as exc:
            conn.close()
            reply.set_exception(ClientDisconnected(f"the client left inside the body: {exc}"))
        except BaseException as exc:  # cancelled at shutdown: the thread must not wait on
            reply.set_exception(ClientDisconnected(f"the body could not be read: {exc!r}"))
            raise
        else:
            reply.set_result(piece)

    def _refuse(
        self, conn: Connection, req: Request, client: str, exc: ProtocolError, started: float
    ) -> None:
        """Answer a request whose body broke a rule (413, 400, 408) and close."""
        logger.debug("refusing the body of %s %s: %d %s", req.method, req.path, exc.status, exc)
        sent = conn.reply_error_and_close(exc)
        conn.shared.record(client, req, exc.status, sent, started)

    def _connection_environ(self, conn: Connection) -> ConnectionEnviron:
        transport = conn.transport
        sockname = transport.get_extra_info("sockname") if transport is not None else None
        shared = conn.shared
        self.tls = shared.ssl_context is not None
        return ConnectionEnviron(
            self.script_name,
            shared.scheme,
            conn.client_ip,
            conn.peername,
            sockname,
        )

    def _send_500(self, conn: Connection, req: Request, client: str, started: float) -> Action:
        data = error_response(500, "Internal Server Error", req.method)
        conn.send(data)
        conn.shared.record(client, req, 500, body_length(data), started)
        conn.graceful_close()
        return "close"

    def _deliver(self) -> None:
        """Hand finished calls back to their connections (one wake-up for all of them)."""
        self._scheduled = False  # before draining: a call finishing now schedules again
        done = self._done
        while done:
            job, outcome = done.popleft()
            future = job.future
            if future.done():
                continue
            conn = job.call.conn
            if (
                outcome.kind == Outcome.BUFFERED
                and outcome.keep_alive
                and not conn.closing
                and not conn.lost
                and conn.take_handoff() is job
            ):
                # Handed over by respond_inline and the coroutine still parked
                # (nothing came meanwhile to wake it): answered from here, and
                # the connection goes on from the protocol callback.
                conn.write_response(outcome.head, outcome.body, True, True)
                conn.shared.record(
                    job.client, job.call.req, outcome.status, outcome.sent, job.started
                )
                conn.resume_inline()
                continue
            future.set_result(outcome)
            # (Parked since respond_inline: wake it. Awaiting the future
            # already, woken by bytes that came meanwhile: a no-op.)
            conn.resume()

    def _send_then_drain(
        self, conn: Connection, data: bytes, reply: concurrent.futures.Future[None]
    ) -> None:
        if conn.lost:
            reply.set_exception(PeerGone("connection lost"))
            return
        if data:
            conn.send(data)
        if conn.write_paused:
            self._spawn(self._drain(conn, reply))
        else:
            reply.set_result(None)

    async def _drain(self, conn: Connection, reply: concurrent.futures.Future[None]) -> None:
        try:
            await conn.drain()
        except PeerGone as exc:
            reply.set_exception(exc)
        else:
            reply.set_result(None)

    async def _flush(self, conn: Connection, reply: concurrent.futures.Future[None]) -> None:
        """Resolve ``reply`` once the transport's buffer is empty (for sendfile)."""
        transport = conn.transport
        deadline = monotonic() + self.write_timeout
        try:
            await conn.drain()
            while transport is not None and transport.get_write_buffer_size():
                if conn.lost or monotonic() > deadline:
                    raise PeerGone("the peer stopped reading")
                await asyncio.sleep(_FLUSH_POLL_S)
        except PeerGone as exc:
            reply.set_exception(exc)
        else:
            reply.set_result(None)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- what pool threads call -----------------------------------------------

    def _work(self) -> None:
        get = self._jobs.get
        done = self._done
        loop = self._loop
        assert loop is not None
        while True:
            job = get()
            if job is None:
                return
            try:
                outcome = job.call.run()
            except BaseException:  # the app's SystemExit, say: the thread stays
                app_logger.exception("app %s: the WSGI call failed", self.name)
                outcome = Outcome(Outcome.FAILED)
            done.append((job, outcome))
            if not self._scheduled:
                self._scheduled = True
                try:
                    loop.call_soon_threadsafe(self._deliver)
                except RuntimeError:  # the loop is closed: the worker is exiting
                    return

    def receive_piece(self, body: StreamedInput) -> tuple[bytes, bool]:
        """From a pool thread: the next piece of a streamed body (``wsgi_input.BodySource``).

        The loop sends 100 Continue first when the client waits for it and no
        response has started. Raises InputError.
        """
        send_continue = not body.continued and not body.head_sent
        body.continued = True
        reply: concurrent.futures.Future[tuple[bytes, bool]] = concurrent.futures.Future()
        assert self._loop is not None
        conn = body.conn
        coro = self._receive_piece(conn, body, send_continue, body.head_sent, reply)
        try:
            self._loop.call_soon_threadsafe(self._spawn, coro)
        except RuntimeError:  # the loop is closed: the worker is exiting
            coro.close()
            raise ClientDisconnected("the server is stopping") from None
        try:
            return reply.result(timeout=self.body_wait_s)
        except concurrent.futures.TimeoutError:
            raise ClientDisconnected("the loop did not answer") from None

    def send_soon(self, conn: Connection, data: bytes) -> None:
        """From a pool thread: the loop writes ``data`` (in order), no waiting."""
        assert self._loop is not None
        self._loop.call_soon_threadsafe(conn.send, data)

    def send_and_wait(self, conn: Connection, data: bytes) -> None:
        """From a pool thread: the loop writes ``data``; return once the peer keeps up.

        Raises PeerGone when the connection is lost or the peer stops reading
        (``response_write_timeout``, enforced by the loop).
        """
        reply: concurrent.futures.Future[None] = concurrent.futures.Future()
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._send_then_drain, conn, data, reply)
        self._wait(reply)

    def flush(self, conn: Connection) -> None:
        """From a pool thread: return once everything written on ``conn`` reached the kernel."""
        reply: concurrent.futures.Future[None] = concurrent.futures.Future()
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._spawn, self._flush(conn, reply))
        self._wait(reply)

    def _wait(self, reply: concurrent.futures.Future[None]) -> None:
        try:
            # The loop bounds the wait (the write deadline aborts the
            # connection); this bound is for a loop that stopped.
            reply.result(timeout=self.write_timeout + 5.0)
        except concurrent.futures.TimeoutError:
            raise PeerGone("the loop did not answer") from None


def _forwarded(environ: dict[str, Any], req: Request, trust: Trust) -> str | None:
    """Apply a trusted proxy's forwarded fields to ``environ``; the client address they name."""
    client, scheme, host = resolve(req.headers, trust)
    if client is not None:
        environ["REMOTE_ADDR"] = client
        environ.pop("REMOTE_PORT", None)  # the proxy's port, not the client's
    if scheme is not None:
        environ["wsgi.url_scheme"] = scheme
    if host is not None:
        environ["HTTP_HOST"] = host
    return client
