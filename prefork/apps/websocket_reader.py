"""The byte buffer an open WebSocket session's frame parser reads from, compiled.

The ``websockets`` library parses frames with generators (``Protocol.parse``
and ``Frame.parse``) that pull bytes from a ``StreamReader``: ``at_eof``
before each frame, ``read_exact`` two to four times within it. The library's
reader is plain Python; this one has the same methods and attributes, as a
class the compiled build compiles, so those generators cost less: 30.0k ->
25.7k instructions per 16-byte message parsed (callgrind, ``receive_data``
and ``events_received`` on a session). The frames themselves are still read
by the library's ``Frame.parse``.

Only what an open session's protocol calls is here (``Protocol.parse``,
``receive_data``, ``receive_eof``, ``discard``), not ``read_line`` and
``read_to_eof``, which only the library's handshake parsers use.
"""

from __future__ import annotations

from collections.abc import Generator


class Reader:
    """``websockets.streams.StreamReader`` for an open session, plus ``idle``.

    ``idle`` is True while ``at_eof`` waits for data with nothing buffered:
    the session's parser then sits between two frames, where it holds no
    state of its own (``Session.park`` lets go of it then).
    """

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.eof = False
        self.idle = False

    def read_exact(self, n: int) -> Generator[None, None, bytearray]:
        """``n`` bytes, once they have come; EOFError if the stream ends first."""
        buffer = self.buffer
        while len(buffer) < n:
            if self.eof:
                raise EOFError(f"stream ends after {len(buffer)} bytes, expected {n} bytes")
            yield
        data = buffer[:n]
        del buffer[:n]
        return data

    def at_eof(self) -> Generator[None, None, bool]:
        """Whether the stream ended with nothing left to read (waits until it knows)."""
        while True:
            if self.buffer:
                return False
            if self.eof:
                return True
            self.idle = True
            yield
            self.idle = False

    def feed_data(self, data: bytes | bytearray) -> None:
        if self.eof:
            raise EOFError("stream ended")
        self.buffer += data

    def feed_eof(self) -> None:
        if self.eof:
            raise EOFError("stream ended")
        self.eof = True

    def discard(self) -> None:
        """Drop what is buffered (the stream goes on)."""
        del self.buffer[:]
