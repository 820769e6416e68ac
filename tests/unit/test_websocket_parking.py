"""An idle WebSocket session lets go of its frame parser (``websocket_handshake.Session``).

The parser is dropped only where a new one is in the same state (between two
frames, nothing buffered), so a session parked after every chunk of input
must parse exactly what the library's own ``Protocol`` parses, answer the same
pings and closes, and enforce the same limits. Then the same under the real
``websockets`` client, with the parking done by the loop's own sweep.
"""

from __future__ import annotations

import asyncio
import gc
import types
from typing import Any

import pytest
from websockets.frames import Close, CloseCode, Frame, Opcode
from websockets.protocol import CLOSED, OPEN, Protocol, Side

from prefork.apps.websocket_handshake import PARK_AFTER_S, Session
from tests.unit.test_websocket import asgi_pair, echo_app


def masked(*frames: Frame) -> bytes:
    return b"".join(frame.serialize(mask=True, extensions=[]) for frame in frames)


# Every kind of frame boundary: 7-bit, 16-bit and 64-bit lengths, a fragmented
# message with a ping between its fragments, a pong, then the close.
STREAM = masked(
    Frame(Opcode.TEXT, "héllo".encode()),
    Frame(Opcode.BINARY, bytes(range(256)) + b"x" * 44),
    Frame(Opcode.BINARY, b"y" * 70_000),
    Frame(Opcode.TEXT, b"frag", fin=False),
    Frame(Opcode.PING, b"p1"),
    Frame(Opcode.CONT, b"ment", fin=True),
    Frame(Opcode.PONG, b"p2"),
    Frame(Opcode.CLOSE, Close(CloseCode.NORMAL_CLOSURE, "bye").serialize()),
)
ENDS = []  # the offset where each frame of STREAM ends
_offset = 0
for _size in (2 + 4 + 6, 2 + 2 + 4 + 300, 2 + 8 + 4 + 70_000, 10, 8, 10, 8, 2 + 4 + 5):
    _offset += _size
    ENDS.append(_offset)
assert ENDS[-1] == len(STREAM)


def feed(proto: Protocol, chunk: int, park: bool) -> tuple[list[Any], list[bytes], list[bool]]:
    """STREAM in ``chunk``-byte pieces: the events, what was sent, and (parking)
    whether the parser was gone after each piece that ended a frame."""
    events: list[Any] = []
    sent: list[bytes] = []
    parked_at_ends = []
    for start in range(0, len(STREAM), chunk):
        end = min(start + chunk, len(STREAM))
        proto.receive_data(STREAM[start:end])
        events += [(e.opcode, bytes(e.data), e.fin) for e in proto.events_received()]
        sent += proto.data_to_send()
        if park:
            assert isinstance(proto, Session)
            proto.park()
            if end in ENDS[:-1]:  # (after the close the library discards)
                parked_at_ends.append(proto.parser is None)
            elif end not in ENDS:
                assert proto.parser is not None, f"parked inside a frame, at {end}"
    return events, sent, parked_at_ends


@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 14, 320, 70_014, len(STREAM)])
def test_a_session_parked_after_every_chunk_parses_as_the_library_does(chunk: int) -> None:
    plain = Protocol(Side.SERVER, state=OPEN, max_size=None)
    session = Session(Side.SERVER, state=OPEN, max_size=None)
    assert session.parser is None  # nothing received yet
    expected = feed(plain, chunk, park=False)
    got = feed(session, chunk, park=True)
    assert got[:2] == expected[:2]
    assert len(got[0]) == 8
    assert got[0][-1][0] is Opcode.CLOSE
    # The pong to the ping, the close answer, then the end of the stream.
    assert len(got[1]) == 3
    assert got[1][-1] == b""
    # Every piece that ended a frame (chunk 14 and up end few) left it parked.
    assert all(got[2])
    assert session.close_rcvd == plain.close_rcvd


def test_a_parked_session_still_fails_a_message_over_the_size_limit() -> None:
    session = Session(Side.SERVER, state=OPEN, max_size=100)
    session.receive_data(masked(Frame(Opcode.TEXT, b"a" * 50)))
    assert [e.data for e in session.events_received()] == [b"a" * 50]
    session.park()
    assert session.parser is None
    session.receive_data(masked(Frame(Opcode.TEXT, b"b" * 200)))
    assert session.events_received() == []
    assert session.close_sent is not None
    assert session.close_sent.code == CloseCode.MESSAGE_TOO_BIG
    assert session.data_to_send()[-1] == b""  # the server closes the TCP connection


def test_a_parked_session_fails_and_reads_eof_as_the_library_does() -> None:
    failing = Session(Side.SERVER, state=OPEN)
    failing.fail(CloseCode.INTERNAL_ERROR, "keepalive ping timeout")  # while parked
    sent = failing.data_to_send()
    assert sent[-1] == b""
    assert failing.close_sent is not None
    failing.receive_data(b"ignored after the failure")  # discarded, no error
    assert failing.events_received() == []
    failing.receive_eof()
    # The failed session had a reader of its own: another one, parked, fails
    # and discards alike (a shared reader fed, or at EOF, would break it).
    other = Session(Side.SERVER, state=OPEN)
    other.fail(CloseCode.INTERNAL_ERROR)
    assert other.state is not CLOSED  # discarding until the peer's EOF
    other.receive_data(b"ignored too")
    other.receive_eof()
    assert other.state is CLOSED

    ending = Session(Side.SERVER, state=OPEN)
    ending.receive_eof()  # while parked: abrupt end, 1006
    assert ending.data_to_send() == [b""]
    assert ending.close_rcvd is None
    assert ending.close_sent is None


def server_parsers() -> int:
    """Frame parsers alive in this process (the client's own included)."""
    code = Protocol.parse.__code__
    return sum(
        1
        for obj in gc.get_objects()
        if type(obj) is types.GeneratorType and obj.gi_code is code  # (type(): no weak proxies)
    )


async def test_the_loop_parks_an_idle_session_and_the_next_messages_arrive_whole() -> None:
    async with asgi_pair(echo_app) as (ws, task, _):
        await ws.send("first")
        assert await ws.recv() == "first"
        with_parser = server_parsers()  # the client's and (just used) the server's
        for _ in range(50):  # bounded: the sweep comes PARK_AFTER_S after the data
            await asyncio.sleep(PARK_AFTER_S)
            if server_parsers() < with_parser:
                break
        assert server_parsers() == with_parser - 1
        # A fragmented message, a ping between the fragments, a large one.
        await ws.send(iter(["frag", "ment"]))
        assert await ws.recv() == "fragment"
        pong = await ws.ping(b"alive")
        await asyncio.wait_for(pong, 5)
        await ws.send(b"z" * 100_000)
        assert await ws.recv() == b"z" * 100_000
        await ws.close(4000, "bye")
    outcome = await task
    assert outcome.status == 101
