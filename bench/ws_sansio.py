"""In-process echo cost of the two sans-I/O WebSocket libraries (no sockets).

A client-masked 32-byte text frame is fed to the server side, the message is
taken out and echoed back (serialised). Prints echoes per second for each.
Run: python bench/ws_sansio.py
"""

from __future__ import annotations

import time

from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.server import ServerProtocol
from websockets.uri import parse_uri
from wsproto.connection import Connection, ConnectionType
from wsproto.events import Message, TextMessage

N = 100_000
PAYLOAD = "x" * 32
WIRE = Frame(Opcode.TEXT, PAYLOAD.encode()).serialize(mask=True, extensions=[])


def bench_websockets() -> float:
    proto = ServerProtocol()
    client = ClientProtocol(parse_uri("ws://127.0.0.1/"))
    client.send_request(client.connect())
    proto.receive_data(client.data_to_send()[0])
    (request,) = proto.events_received()
    proto.send_response(proto.accept(request))
    proto.data_to_send()
    started = time.perf_counter()
    for _ in range(N):
        proto.receive_data(WIRE)
        for event in proto.events_received():
            assert event.opcode is Opcode.TEXT
            proto.send_text(event.data)
        proto.data_to_send()
    return N / (time.perf_counter() - started)


def bench_wsproto() -> float:
    conn = Connection(ConnectionType.SERVER)
    started = time.perf_counter()
    for _ in range(N):
        conn.receive_data(WIRE)
        for event in conn.events():
            assert isinstance(event, TextMessage)
            conn.send(Message(data=event.data))
    return N / (time.perf_counter() - started)


if __name__ == "__main__":
    for name, fn in (("websockets", bench_websockets), ("wsproto", bench_wsproto)):
        best = max(fn() for _ in range(3))
        print(f"{name:11s} {best:10,.0f} echoes/s")
