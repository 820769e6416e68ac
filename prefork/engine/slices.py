"""Big bodies compressed on the event loop a slice per loop turn, one body at a time."""

from __future__ import annotations

import asyncio

from prefork.http.compression import SLICE_BYTES, make_encoder


async def compress_in_slices(coding: str, level: int, data: bytes, turn: asyncio.Lock) -> bytes:
    """``data`` compressed on the event loop, ``SLICE_BYTES`` per loop turn.

    The other connections are served between slices. ``turn`` (one per worker)
    lets one body at a time through, first come first served: bodies compressed
    side by side would each evict the other's zlib state from the CPU caches
    (measured: 377 req/s against 426 in turn).
    """
    async with turn:
        encoder = make_encoder(coding, level)
        view = memoryview(data)
        parts = [encoder.compress(view[:SLICE_BYTES])]
        for start in range(SLICE_BYTES, len(data), SLICE_BYTES):
            await asyncio.sleep(0)  # the other connections' turn
            parts.append(encoder.compress(view[start : start + SLICE_BYTES]))
        parts.append(encoder.finish())
        return b"".join(parts)
