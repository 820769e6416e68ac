"""What an ASGI app's ``receive``/``send`` do on a WebSocket (``websocket_asgi``'s events).

Apart from ``websocket_asgi`` so that it is compiled (setup.py): ``send`` and
``receive`` run once per message (as does the app's run around them,
``websocket_run.AppRun``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Coroutine, MutableMapping
from dataclasses import dataclass
from typing import Any

from prefork._types import ConnectionLike
from prefork.apps.websocket import WebSocket, WebSocketClosed
from prefork.errors import PreforkError
from prefork.http.response import encode_head, error_response

Message = MutableMapping[str, Any]


@dataclass(slots=True)
class Outcome:
    """For the access log: the status answered (101 when accepted) and body bytes sent."""

    status: int
    sent: int = 0


class Exchange:
    """The receive/send pair one app call gets, and what they did."""

    # Lives as long as the connection: no per-instance __dict__.
    __slots__ = (
        "accepted",
        "answered",
        "body",
        "closing",
        "conn",
        "connect_sent",
        "response",
        "ws",
    )

    def __init__(self, conn: ConnectionLike, ws: WebSocket) -> None:
        self.conn = conn
        self.ws = ws
        self.connect_sent = False
        self.accepted = False
        self.answered: Outcome | None = None  # an HTTP answer instead of the 101
        self.response: tuple[int, list[tuple[bytes, bytes]]] | None = None
        self.body: list[bytes] | None = None  # of a websocket.http.response
        self.closing = False

    def receive(self) -> Coroutine[Any, Any, Message]:
        # Once open, the WebSocket's own coroutine, not one of ours around
        # it: an app parked in ``receive()`` keeps one frame less.
        if self.accepted and self.connect_sent:
            return self.ws.receive_event()
        return self._receive_unopened()

    async def _receive_unopened(self) -> Message:
        if not self.connect_sent:
            self.connect_sent = True
            return {"type": "websocket.connect"}
        # Denied (or not yet answered): nothing will ever arrive.
        return {"type": "websocket.disconnect", "code": 1006, "reason": ""}

    def outcome(self) -> Outcome:
        """For the access log, once the app is done: its HTTP answer, or the 101."""
        answered = self.answered
        return answered if answered is not None else Outcome(101, 0)

    async def send(self, message: Message) -> None:
        # A dict (ASGI's messages are) is read by the compiled dict operations
        # (which leave a subclass's methods to it); another mapping is read
        # once, into one.
        if isinstance(message, dict):
            fields: dict[str, Any] = message
        else:
            fields = dict(message)
        kind = fields["type"]
        if kind == "websocket.send" and self.accepted:
            text, data = fields.get("text"), fields.get("bytes")
            if text is not None and data is None:
                # The object itself (str() of a str is the same object): the
                # same message sent to many connections is framed once.
                paused = self.ws.send_nowait(str(text))
            elif data is not None and text is None:
                paused = self.ws.send_nowait(data if type(data) is bytes else bytes(data))
            else:
                raise RuntimeError("websocket.send needs exactly one of 'text' and 'bytes'")
            if paused:
                await self.ws.wait_sent()
            return
        if self.answered is not None:
            raise WebSocketClosed(1006, "the handshake was answered with HTTP")
        if not self.accepted:
            await self._before_accept(kind, message)
            return
        if kind == "websocket.close":
            self.closing = True
            await self.ws.start_close(message.get("code") or 1000, message.get("reason") or "")
        else:
            raise RuntimeError(f"unexpected ASGI message {kind!r} after websocket.accept")

    async def _before_accept(self, kind: str, message: Message) -> None:
        if self.response is not None:
            if kind != "websocket.http.response.body":
                raise RuntimeError(f"expected websocket.http.response.body, got {kind!r}")
            body = self.body
            if body is None:
                body = self.body = []
            body.append(bytes(message.get("body", b"")))
            if not message.get("more_body", False):
                status, headers = self.response
                await self._answer_http(status, headers, b"".join(body))
            return
        if kind == "websocket.accept":
            await self.ws.accept(message.get("subprotocol"), message.get("headers") or [])
            self.accepted = True
        elif kind == "websocket.close":
            await self.answer(403, "Forbidden")
        elif kind == "websocket.http.response.start":
            status = int(message["status"])
            if not 200 <= status <= 599:
                raise RuntimeError(f"websocket.http.response.start: invalid status {status}")
            self.response = (status, list(message.get("headers") or []))
        else:
            raise RuntimeError(f"unexpected ASGI message {kind!r} before websocket.accept")

    async def answer(self, status: int, text: str) -> None:
        data = error_response(status, text)
        self.answered = Outcome(status, len(text) + 1)
        await write_and_close(self.conn, data)

    async def _answer_http(
        self, status: int, headers: list[tuple[bytes, bytes]], body: bytes
    ) -> None:
        lines = []
        has_server = False
        for name, value in headers:
            n, v = bytes(name).decode("latin-1"), bytes(value).decode("latin-1")
            if any(c in n + v for c in "\r\n\0"):
                raise RuntimeError(f"response header {n!r} contains CR, LF or NUL")
            lower = n.lower()
            if lower in ("content-length", "connection", "transfer-encoding"):
                continue  # the server frames the response
            has_server = has_server or lower == "server"
            lines.append(f"{n}: {v}\r\n")
        framing = f"Content-Length: {len(body)}\r\n"
        head = encode_head(status, "".join(lines), has_server, framing, False, False)
        self.answered = Outcome(status, len(body))
        await write_and_close(self.conn, head + body)


async def write_and_close(conn: ConnectionLike, data: bytes) -> None:
    with contextlib.suppress(OSError, PreforkError):
        await conn.write(data)
    conn.close()
