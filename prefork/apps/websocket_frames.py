"""A server's frame of one message without extensions: the library's bytes, remembered.

Server frames are not masked (RFC 6455 §5.1), so without an extension
(permessage-deflate keeps per-connection state) the frame of a whole message
is a head that depends only on the opcode and the payload's length, then the
payload as it is (§5.2). The ``websockets`` library's ``Frame.serialize``
builds each frame in plain Python: ~1.2 us for a 16-byte text, about 7 % of
an echo round trip's whole time in the worker (bench/ws_instructions.py).
Here the library still makes every head, once per opcode and length; later
messages of that length reuse it. Chat lines, dashboard updates and LLM
token streams are many small messages of few distinct lengths, so nearly
every send finds its head.
"""

from __future__ import annotations

from typing import Final

from websockets.frames import Frame, Opcode

# The opcodes, bound once: each ``Opcode.X`` is a lookup on the enum class
# (~0.9k instructions compiled).
TEXT: Final = Opcode.TEXT
BINARY: Final = Opcode.BINARY

# Messages up to this size keep their frame for the next send of the same
# object (see ``FrameCache``), and their head for the next message of the
# same length; a bigger one goes to the library whole and is not held.
CACHE_MAX_BYTES: Final = 64 * 1024
# Heads remembered, at most (~0.1 KiB each): past it they are all dropped and
# made again as messages come. Lengths up to 125 alone are 252 heads.
HEADS_MAX: Final = 1024


def library_head(opcode: Opcode, length: int) -> bytes:
    """The head the library gives an unmasked, final frame of ``length`` payload bytes."""
    whole = Frame(opcode, bytes(length)).serialize(mask=False)
    return whole[: len(whole) - length]


class FrameCache:
    """Frames of messages without extensions: by message identity, and heads by length.

    The last message framed is kept with its frame (a broadcast sends one
    object to many connections): the message object itself is held, so its
    ``id`` cannot be reused while it is the key. One per process: a worker
    runs one loop.
    """

    __slots__ = ("frame", "heads", "message")

    def __init__(self) -> None:
        self.message: object = None
        self.frame = b""
        # Key: length * 2, + 1 for text.
        self.heads: dict[int, bytes] = {}

    def frame_of(self, data: str | bytes) -> bytes:
        if data is self.message:
            return self.frame
        if isinstance(data, str):
            payload = data.encode()
            key = len(payload) * 2 + 1
        else:
            payload = data
            key = len(payload) * 2
        if len(payload) > CACHE_MAX_BYTES:  # (the copy is most of its cost)
            return Frame(TEXT if key & 1 else BINARY, payload).serialize(mask=False)
        head = self.heads.get(key)
        if head is None:
            head = library_head(TEXT if key & 1 else BINARY, len(payload))
            heads = self.heads
            if len(heads) >= HEADS_MAX:
                heads.clear()
            heads[key] = head
        frame = head + payload
        self.message, self.frame = data, frame
        return frame
