"""The compiled reader behaves as the library's StreamReader, step by step."""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from websockets.frames import Frame, Opcode
from websockets.protocol import OPEN, Protocol, Side
from websockets.streams import StreamReader

from prefork.apps.websocket_reader import Reader

# Operations: feed bytes, feed EOF, discard, or start a read (exact n / at_eof)
# and step it once per later operation until it ends.
OPS = st.lists(
    st.one_of(
        st.tuples(st.just("feed"), st.binary(max_size=12)),
        st.tuples(st.just("eof"), st.none()),
        st.tuples(st.just("discard"), st.none()),
        st.tuples(st.just("exact"), st.integers(0, 16)),
        st.tuples(st.just("at_eof"), st.none()),
    ),
    max_size=30,
)


def outcome(call: Any, *args: Any) -> tuple[str, Any]:
    try:
        return ("ok", call(*args))
    except StopIteration as stop:
        return ("done", bytes(stop.value) if isinstance(stop.value, bytearray) else stop.value)
    except EOFError as exc:
        return ("EOFError", str(exc))


def trace(reader: Any, ops: list[tuple[str, Any]]) -> list[Any]:
    seen: list[Any] = []
    pending: Generator[None, None, Any] | None = None
    for op, arg in ops:
        if op == "feed":
            seen.append(outcome(reader.feed_data, arg))
        elif op == "eof":
            seen.append(outcome(reader.feed_eof))
        elif op == "discard":
            seen.append(outcome(reader.discard))
        elif pending is None:
            pending = reader.read_exact(arg) if op == "exact" else reader.at_eof()
        if pending is not None:
            step = outcome(next, pending)
            seen.append(step)
            if step[0] != "ok":
                pending = None
        seen.append((bytes(reader.buffer), reader.eof))
    return seen


@given(OPS)
def test_same_steps_as_the_library(ops: list[tuple[str, Any]]) -> None:
    assert trace(Reader(), ops) == trace(StreamReader(), ops)


def test_idle_only_while_at_eof_waits() -> None:
    reader = Reader()
    waiting = reader.at_eof()
    next(waiting)
    assert reader.idle
    reader.feed_data(b"x")
    assert outcome(next, waiting) == ("done", False)
    assert not reader.idle
    reading = reader.read_exact(3)
    next(reading)
    assert not reader.idle  # waits inside a frame: not between two


def test_the_library_parses_frames_from_it() -> None:
    proto = Protocol(Side.SERVER, state=OPEN, max_size=2**20)
    proto.reader = Reader()  # type: ignore[assignment]
    proto.parser = proto.parse()
    next(proto.parser)
    wire = b"".join(
        Frame(op, data, fin=fin).serialize(mask=True)
        for op, data, fin in [
            (Opcode.TEXT, b"hello", True),
            (Opcode.BINARY, b"\x00" * 300, False),
            (Opcode.CONT, b"\x01" * 70_000, True),
            (Opcode.PING, b"p", True),
        ]
    )
    for i in range(0, len(wire), 997):  # in pieces, as reads come
        proto.receive_data(wire[i : i + 997])
    got = [(f.opcode, len(f.data), f.fin) for f in proto.events_received()]
    assert got == [
        (Opcode.TEXT, 5, True),
        (Opcode.BINARY, 300, False),
        (Opcode.CONT, 70_000, True),
        (Opcode.PING, 1, True),
    ]
    proto.receive_eof()
    assert proto.reader.eof
