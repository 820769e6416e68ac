"""Client frames of whole small messages read without the library: the same
messages, and the library's answer for everything else.

``take_messages`` reads the frames it takes and stops at the first it does
not; ``WebSocket`` hands the rest to the library's parser. Both are checked
against the library alone, on random frame streams cut at random places.
"""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from websockets.frames import Frame, Opcode
from websockets.protocol import OPEN, Protocol, Side

from prefork.apps.websocket import Handshake, Options, WebSocket, WebSocketClosed
from prefork.apps.websocket_frames import take_messages

LIMIT = 300
OPTS = Options(
    max_message_size=LIMIT, ping_interval=None, ping_timeout=None, per_message_deflate=False
)
HANDSHAKE = [
    ("host", "test"),
    ("upgrade", "websocket"),
    ("connection", "upgrade"),
    ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ("sec-websocket-version", "13"),
]
TEXT, BINARY, CONT = Opcode.TEXT, Opcode.BINARY, Opcode.CONT

payloads = st.one_of(
    st.binary(max_size=140),
    st.text(max_size=70).map(str.encode),
    st.sampled_from([b"\xff", b"ok\xc3", b"x" * 126, b"y" * 200, b"z" * 400]),
)


@st.composite
def frames(draw: Any) -> bytes:
    """One client frame: mostly what take_messages takes, and everything else."""
    kind = draw(
        st.sampled_from(
            ["text", "binary", "text", "binary", "first", "open", "ping", "pong", "raw"]
        )
    )
    data = draw(payloads)
    if kind == "text":
        return Frame(TEXT, data).serialize(mask=True)
    if kind == "binary":
        return Frame(BINARY, data).serialize(mask=True)
    if kind == "first":  # a fragmented message: two frames
        return Frame(TEXT, data, fin=False).serialize(mask=True) + Frame(CONT, data[:3]).serialize(
            mask=True
        )
    if kind == "open":  # a first fragment alone: what follows must be its CONT
        return Frame(BINARY, data, fin=False).serialize(mask=True)
    if kind in ("ping", "pong"):
        return Frame(Opcode.PING if kind == "ping" else Opcode.PONG, data[:125]).serialize(
            mask=True
        )
    # A frame with its first two bytes as drawn: reserved bits, bad opcodes,
    # no mask, the 8-byte length form...
    head = draw(st.binary(min_size=2, max_size=2))
    return head + bytes(4) + data[:20]


frame_lists = st.lists(frames(), max_size=12)
streams = frame_lists.map(b"".join)


def library_frames(data: bytes, limit: int | None) -> tuple[list[tuple[Any, bytes]], Any]:
    """The frames the library's server protocol parses from ``data``, and its error."""
    proto = Protocol(Side.SERVER, state=OPEN, max_size=limit)
    proto.receive_data(data)
    return [(f.opcode, bytes(f.data)) for f in proto.events_received()], proto.parser_exc


def as_message(opcode: Any, data: bytes) -> str | bytes | None:
    if opcode is BINARY:
        return data
    try:
        return data.decode()
    except UnicodeDecodeError:
        return None


@settings(deadline=None)
@given(streams, st.integers(0, 400))
def test_takes_what_the_library_parses_first_and_stops_where_it_must(data: bytes, cut: int) -> None:
    data = data[:cut]
    messages: list[str | bytes] = []
    taken = take_messages(data, LIMIT, messages)
    assert 0 <= taken <= len(data)
    # What was taken is what the library makes of those bytes: whole
    # messages, each one final text or binary frame, and nothing left over.
    parsed, exc = library_frames(data[:taken], LIMIT)
    assert exc is None
    assert [as_message(*frame) for frame in parsed] == messages
    # And the library makes the same of the rest as it would have at that
    # point of the whole stream: the first frame left is one take_messages
    # may not take (or is not all there).
    rest, _ = library_frames(data[taken:], LIMIT)
    whole, _ = library_frames(data, LIMIT)
    assert whole[: len(parsed)] == parsed
    assert whole[len(parsed) :] == rest
    if rest:
        opcode, payload = rest[0]
        first = data[taken]
        assert not (
            first in (0x81, 0x82)
            and len(payload) <= min(LIMIT, 65535)
            and as_message(opcode, payload) is not None
        )


def test_every_length_form_up_to_the_limits() -> None:
    for length in (0, 1, 125, 126, 127, 65535):
        for opcode in (TEXT, BINARY):
            payload = b"a" * length
            frame = Frame(opcode, payload).serialize(mask=True)
            messages: list[str | bytes] = []
            assert take_messages(frame + frame, 1 << 20, messages) == 2 * len(frame)
            want = payload.decode() if opcode is TEXT else payload
            assert messages == [want, want]
            # One byte short: the last frame is left for the library.
            messages = []
            assert take_messages(frame + frame[:-1], 1 << 20, messages) == len(frame)
            # Over the session's limit: left for the library (its 1009).
            assert take_messages(frame, length - 1, []) == 0
    # The 8-byte length form is left to the library.
    big = Frame(BINARY, bytes(65536)).serialize(mask=True)
    assert take_messages(big, 1 << 20, []) == 0


class ScriptedPeer:
    """A ``ConnectionLike`` whose peer sends the given chunks, then ends the
    stream; it keeps what it was sent and whether it was closed."""

    peername = None
    server_name = None
    write_paused = False
    lost = False

    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks
        self.sent = b""
        self.closed = False

    async def read(self, n: int) -> bytes:
        await asyncio.sleep(0)
        return self.chunks.pop(0) if self.chunks else b""

    async def write(self, data: bytes) -> None:
        self.sent += data

    def send(self, data: bytes) -> None:
        self.sent += data

    async def drain(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True

    def on_drain(self, callback: Any) -> None:
        pass


async def session_messages(chunks: list[bytes]) -> tuple[list[str | bytes], int | None, bytes]:
    """What a session gives the app for a peer that sends ``chunks``, how it
    closed, and what it sent back."""
    conn = ScriptedPeer(list(chunks))
    session = WebSocket(conn, Handshake("GET", "/", HANDSHAKE, OPTS), OPTS)
    await session.accept()
    got: list[str | bytes] = []
    try:
        while True:
            got.append(await session.receive())
    except WebSocketClosed as exc:
        # (After the 101, whose Date may differ from one run to the next.)
        return got, exc.code, conn.sent.partition(b"\r\n\r\n")[2]


def cut_into(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({min(c, len(data)) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points) if b > a]


@settings(max_examples=60, deadline=None)
@given(frame_lists, st.lists(st.integers(0, 3000), max_size=6))
def test_a_session_gives_the_same_messages_however_the_stream_is_cut(
    frames: list[bytes], cuts: list[int]
) -> None:
    """The same messages, close code and bytes sent back (pongs, the close
    frame) as the library alone gives: in chunks of 5 bytes no frame is ever
    whole in one read, so take_messages takes none, and the library parses
    one frame per read. Cut anywhere, in one piece, or one read per frame."""
    data = b"".join(frames)
    library_only = asyncio.run(session_messages(cut_into(data, list(range(5, len(data), 5)))))
    for chunks in ([data], cut_into(data, cuts), frames):
        got = asyncio.run(session_messages(chunks))
        assert got[0] == library_only[0]
        if 1007 not in (got[1], library_only[1]):
            assert got[1:] == library_only[1:]
        else:
            # A text that is not UTF-8 is found once the library has parsed
            # the whole read: it may have answered a ping after it, or met a
            # fault of its own (1002, 1009) further on first. No message
            # after it is delivered either way.
            assert {got[1], library_only[1]} <= {1007, 1002, 1009}
