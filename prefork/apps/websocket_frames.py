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

The other way, ``take_messages`` reads the client's frames of whole small
messages (final, text or binary, no reserved bit, masked: RFC 6455 §5.2)
itself, and stops at the first frame that is anything else, for the library
to parse from there. The library's generators (``Protocol.parse``,
``Frame.parse``, ``recv_frame``) cost ~26k instructions per such frame in
plain Python, most of an echo's whole path; a frame taken here changes none
of the protocol's state (only fragments, control frames and errors do), so
skipping it leaves the library where it would have been.
"""

from __future__ import annotations

from typing import Final

from websockets.frames import Frame, Opcode

try:  # The library's C unmasking, as its own frames module takes it.
    from websockets.speedups import apply_mask
except ImportError:  # pragma: no cover (a build of the library without it)
    from websockets.utils import apply_mask

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


# The first byte of a frame ``take_messages`` takes: FIN, no reserved bit,
# text or binary (RFC 6455 §5.2).
_FIN_TEXT: Final = 0x81
_FIN_BINARY: Final = 0x82
# The second byte's MASK bit; a client's frames all have it (§5.1).
_MASKED: Final = 0x80


def take_messages(data: bytes, limit: int, messages: list[str | bytes]) -> int:
    """Append to ``messages`` the whole messages that ``data`` starts with, each
    one client frame of at most ``limit`` payload bytes (and at most 64 KiB);
    return how many bytes of ``data`` they took.

    It stops at the first frame it does not take: a fragment, a control frame,
    a reserved bit (a compressed message), an unmasked frame, a longer one, a
    text that is not UTF-8, or a frame not all in ``data``. The library parses
    the rest, and answers each of those as it does. Only call it with the
    session's parser between two frames and no fragmented message begun.
    """
    pos = 0
    end = len(data)
    while end - pos >= 6:
        first = data[pos]
        if first != _FIN_TEXT and first != _FIN_BINARY:
            break
        length = data[pos + 1]
        if length < _MASKED:
            break
        length -= _MASKED
        start = pos + 6
        if length == 126:
            start = pos + 8
            if start > end:
                break
            length = (data[pos + 2] << 8) | data[pos + 3]
        elif length == 127:
            break
        stop = start + length
        if length > limit or stop > end:
            break
        payload = apply_mask(data[start:stop], data[start - 4 : start])
        if first == _FIN_TEXT:
            try:
                messages.append(payload.decode())
            except UnicodeDecodeError:
                break  # the library's frame, and its 1007
        else:
            messages.append(payload)
        pos = stop
    return pos
