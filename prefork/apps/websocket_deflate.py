"""permessage-deflate (RFC 7692) whose idle connections hold no zlib state.

The ``websockets`` library's ``PerMessageDeflate`` keeps, with context
takeover, a zlib compressor (~33 KiB with 12-bit windows and memLevel 5) and
decompressor (~11 KiB) for the connection's whole life: ~45 KiB on every idle
connection, six times what the rest of one costs. ``ParkingDeflate`` keeps the
library's framing and negotiation and lets go of both when the connection has
been idle, without giving up context takeover.

Between two messages, all a compressor or decompressor carries into the next
one is its LZ77 window: the last ``2**window_bits`` bytes of uncompressed data
that went through it. Every message ends with a sync flush (the sender's
``Z_SYNC_FLUSH``; the receiver appends the same empty stored block), so the
stream stands at a byte-aligned block boundary: a compressor made again with
those bytes as its dictionary goes on where the old one stopped (its first
block starts on a byte boundary; its back-references reach only into bytes
the peer's inflater has in its window), and so does a decompressor made again
with its window. So each direction keeps a tail of its uncompressed data, at
most a window long, and ``park`` drops the zlib objects between messages; the
next message makes them again from the tail (~7 us for a compressor with a
4 KiB dictionary, ~0.1 us for a decompressor).

``park`` is done by a clock per event loop (``_Clock``) for the extensions
whose zlib state is live: every ``PARK_TICK_S`` it parks those that framed no
message since its last tick, so state goes 1-2 ticks after a connection's last
message, and a connection with a message at least every tick never makes
its zlib objects again. Not the sessions' 20 ms parser sweep: that visits a
session only after it received data (not after it sent), and a rebuild per
message for connections with a message every few tens of milliseconds would
cost several times the compression of a small message (~1.5 us).

Only the attributes the library's own ``__init__`` sets are used (``encoder``,
``decoder``, ``decode_cont_data``, the window bits, the no-context-takeover
flags, ``compress_settings``); tests/unit/test_websocket_deflate.py fails if
a websockets upgrade changes them.
"""

from __future__ import annotations

import asyncio
import weakref
import zlib
from collections.abc import Sequence
from typing import Any

from websockets.exceptions import NegotiationError
from websockets.extensions.base import Extension, ServerExtensionFactory
from websockets.extensions.permessage_deflate import (
    PerMessageDeflate,
    ServerPerMessageDeflateFactory,
    enable_server_permessage_deflate,
)
from websockets.frames import CONT, CTRL_OPCODES, Frame
from websockets.typing import ExtensionParameter

# How often the clock parks the extensions that framed no message since its
# last tick: state goes 1-2 ticks after the last message. A rebuild costs
# ~7 us (mostly hashing a 4 KiB dictionary into a new compressor), the
# compression of ~5 small messages: a connection with a message at least
# every second never pays it, and one that pauses longer pays it once when it
# resumes (< 0.001% of a core). Shorter would free memory sooner from
# connections that pause for a second or two, at that cost per message.
PARK_TICK_S = 1.0
# A tick that parked at least this many hands the freed memory back to the
# OS (glibc's malloc_trim). zlib's buffers (8 KiB each, ~45 KiB per
# connection) come from malloc's heap, between longer-lived objects: freed,
# they stay resident as holes (4,000 parked connections: ~140 MiB) until
# malloc reuses them. Trimming costs ~85 us per MiB given back (~12 ms for
# those 4,000 at once, in one tick) and ~0.5 ms when there is nothing to give
# back; at 64 connections (~2.8 MiB) it is rare and short.
TRIM_AFTER = 64


def _keep(tail: bytearray, data: Any, window: int) -> None:
    """Add ``data`` to ``tail``, the last ``window`` bytes (or up to 2x: trimmed in bulk)."""
    if len(data) >= window:
        tail[:] = data[-window:]
    else:
        tail += data
        if len(tail) > 2 * window:
            # (From the front of a bytearray: CPython moves its start, no copy.)
            del tail[:-window]


class ParkingDeflate(PerMessageDeflate):
    """The library's permessage-deflate, whose zlib objects ``park`` drops between messages.

    ``sent`` / ``received``: the uncompressed data's tail while the
    compressor / decompressor is live (None when it is parked or was never
    made); ``sent_window`` / ``received_window``: the tail while parked, cut
    to one window (bytes). ``sending`` is True inside a fragmented message
    being sent (the library keeps no such flag: it compresses every frame).
    ``used``: a message went through since the clock's last tick.
    """

    def __init__(
        self,
        remote_no_context_takeover: bool,
        local_no_context_takeover: bool,
        remote_max_window_bits: int,
        local_max_window_bits: int,
        compress_settings: dict[Any, Any] | None = None,
    ) -> None:
        # Asked for no context takeover, the library's __init__ makes no zlib
        # object (it would be dropped unused); the real flags are set after.
        super().__init__(
            True, True, remote_max_window_bits, local_max_window_bits, compress_settings
        )
        assert "zdict" not in self.compress_settings
        self.remote_no_context_takeover = remote_no_context_takeover
        self.local_no_context_takeover = local_no_context_takeover
        self.sent: bytearray | None = None
        self.received: bytearray | None = None
        self.sent_window = b""
        self.received_window = b""
        self.sending = False
        self.used = False

    def encode(self, frame: Frame) -> Frame:
        if self.local_no_context_takeover or frame.opcode in CTRL_OPCODES:
            return super().encode(frame)  # (no state between messages)
        sent = self.sent
        if sent is None:
            sent = self._make_encoder()
        self.sending = not frame.fin
        self.used = True
        # (The library compresses every data frame: all of it is in the window.)
        _keep(sent, frame.data, 1 << self.local_max_window_bits)
        return super().encode(frame)

    def decode(self, frame: Frame, *, max_size: int | None = None) -> Frame:
        if (
            self.remote_no_context_takeover
            or frame.opcode in CTRL_OPCODES
            # An uncompressed message does not go through the decompressor.
            or not (self.decode_cont_data if frame.opcode is CONT else frame.rsv1)
        ):
            return super().decode(frame, max_size=max_size)
        received = self.received
        if received is None:
            received = self._make_decoder()
        self.used = True
        frame = super().decode(frame, max_size=max_size)
        _keep(received, frame.data, 1 << self.remote_max_window_bits)
        return frame

    def _make_encoder(self) -> bytearray:
        # The library's compressor, with the window it had as its dictionary.
        window = self.sent_window
        settings = self.compress_settings
        if window:
            settings = {**settings, "zdict": window}
        self.encoder = zlib.compressobj(wbits=-self.local_max_window_bits, **settings)
        self.sent_window = b""
        sent = self.sent = bytearray(window)
        _watch(self)
        return sent

    def _make_decoder(self) -> bytearray:
        window = self.received_window
        bits = -self.remote_max_window_bits
        self.decoder = zlib.decompressobj(bits, window) if window else zlib.decompressobj(bits)
        self.received_window = b""
        received = self.received = bytearray(window)
        _watch(self)
        return received

    @property
    def parked(self) -> bool:
        """No zlib object is kept between messages."""
        return self.sent is None and self.received is None

    def park(self) -> bool:
        """Drop the zlib objects that are between two messages; True if none is left."""
        sent = self.sent
        if sent is not None and not self.sending:
            # (bytes: exact size; the bytearray over-allocates and keeps up
            # to 2x. Through a memoryview: one copy, not two.)
            self.sent_window = bytes(memoryview(sent)[-(1 << self.local_max_window_bits) :])
            self.sent = None
            del self.encoder
        received = self.received
        if received is not None and not self.decode_cont_data:
            window = memoryview(received)[-(1 << self.remote_max_window_bits) :]
            self.received_window = bytes(window)
            self.received = None
            del self.decoder
        return self.parked


class ParkingDeflateFactory(ServerPerMessageDeflateFactory):
    """The library's server factory, negotiating the same, making ``ParkingDeflate``."""

    @classmethod
    def like(cls, factory: ServerPerMessageDeflateFactory) -> ParkingDeflateFactory:
        """One with the same parameters as ``factory`` (e.g. the library's default one)."""
        return cls(
            factory.server_no_context_takeover,
            factory.client_no_context_takeover,
            factory.server_max_window_bits,
            factory.client_max_window_bits,
            factory.compress_settings,
            factory.require_client_max_window_bits,
        )

    def process_request_params(
        self,
        params: Sequence[ExtensionParameter],
        accepted_extensions: Sequence[Extension],
    ) -> tuple[list[ExtensionParameter], PerMessageDeflate]:
        response, made = super().process_request_params(params, accepted_extensions)
        if not isinstance(made, PerMessageDeflate):  # pragma: no cover (a library change)
            raise NegotiationError(f"unexpected permessage-deflate extension {made!r}")
        # The library's, with its zlib objects, is dropped at once: the
        # negotiation stays the library's alone.
        return response, ParkingDeflate(
            made.remote_no_context_takeover,
            made.local_no_context_takeover,
            made.remote_max_window_bits,
            made.local_max_window_bits,
            made.compress_settings,
        )


def server_factories() -> list[ServerExtensionFactory]:
    """The library's default server permessage-deflate (12-bit windows, memLevel 5), parking."""
    (default,) = enable_server_permessage_deflate(None)
    assert isinstance(default, ServerPerMessageDeflateFactory)
    return [ParkingDeflateFactory.like(default)]


class _Clock:
    """One loop's extensions with live zlib state; one timer, while there are any.

    Weak references: a connection that ends in the middle of a fragmented
    message never becomes parkable, and the clock must not keep its
    extension (and zlib state) after the connection is gone.
    """

    __slots__ = ("live", "loop")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.live: weakref.WeakSet[ParkingDeflate] = weakref.WeakSet()

    def add(self, ext: ParkingDeflate) -> None:
        if not self.live:
            self.loop.call_later(PARK_TICK_S, self.tick)
        self.live.add(ext)

    def tick(self) -> None:
        parked = []
        for ext in self.live:
            if ext.used:
                ext.used = False
            elif ext.park():
                parked.append(ext)
        self.live.difference_update(parked)
        if self.live:
            self.loop.call_later(PARK_TICK_S, self.tick)
        if len(parked) >= TRIM_AFTER:
            _trim()


_malloc_trim: Any = None


def _trim() -> None:
    """glibc's ``malloc_trim(0)``: the heap's free pages go back to the OS (elsewhere: nothing)."""
    global _malloc_trim
    if _malloc_trim is None:
        import ctypes  # (only in a worker that parks this much)

        try:
            _malloc_trim = ctypes.CDLL(None).malloc_trim
        except (OSError, AttributeError):  # not glibc
            _malloc_trim = False
    if _malloc_trim:
        _malloc_trim(0)


_last_clock: _Clock | None = None


def _watch(ext: ParkingDeflate) -> None:
    """Have the running loop's clock park ``ext``; without a loop, its owner calls ``park``."""
    global _last_clock
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return
    if _last_clock is None or _last_clock.loop is not loop:
        _last_clock = _Clock(loop)
    _last_clock.add(ext)
