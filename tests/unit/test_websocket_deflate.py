"""permessage-deflate whose zlib state is dropped between messages (``websocket_deflate``).

The peer's view is a plain zlib object that is never dropped: what the server
sends, compressed by ``ParkingDeflate`` parked between random messages, must
decompress there exactly (RFC 7692: each message's payload plus the empty
stored block ``00 00 ff ff``), and what a never-parked compressor sends must
decode exactly through a ``ParkingDeflate`` parked between random messages.
Negotiation goes through the factory the server uses (``server_factories``).
"""

from __future__ import annotations

import asyncio
import random
import weakref
import zlib
from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from websockets.extensions.permessage_deflate import PerMessageDeflate
from websockets.frames import Frame, Opcode
from websockets.typing import ExtensionParameter

from prefork.apps import websocket_deflate
from prefork.apps.websocket_deflate import ParkingDeflate, server_factories

TAIL = b"\x00\x00\xff\xff"
# Messages that refer back to earlier ones (a small alphabet, repeats), sizes
# from empty to beyond a 4 KiB window.
MESSAGES = st.lists(
    st.tuples(
        st.one_of(
            st.binary(max_size=64).map(lambda b: b * 3),
            st.text(alphabet='abcde {}":,', max_size=300).map(str.encode),
            st.integers(0, 9000).map(lambda n: b"0123456789chat"[: n % 14 + 1] * (n // 14 + 1)),
        ),
        st.booleans(),  # park after this message
    ),
    min_size=1,
    max_size=40,
)


# What browsers and the websockets client offer.
OFFER = ("client_max_window_bits", None)


def negotiate(*params: ExtensionParameter) -> ParkingDeflate:
    (factory,) = server_factories()
    _, ext = factory.process_request_params(list(params or [OFFER]), [])
    assert isinstance(ext, ParkingDeflate)
    return ext


def peer_compressor(bits: int) -> zlib._Compress:
    return zlib.compressobj(wbits=-max(bits, 9), memLevel=5)


def compress(encoder: zlib._Compress, data: bytes, fin: bool = True) -> bytes:
    out = encoder.compress(data) + encoder.flush(zlib.Z_SYNC_FLUSH)
    assert out.endswith(TAIL)
    return out[:-4] if fin else out


def test_the_library_sets_the_attributes_parking_uses() -> None:
    # If a websockets upgrade renames or drops any of them, parking would
    # silently keep (or break) zlib state: fail here, loudly.
    ext = PerMessageDeflate(False, False, 12, 12, {"memLevel": 5})
    assert set(vars(ext)) == {
        "remote_no_context_takeover",
        "local_no_context_takeover",
        "remote_max_window_bits",
        "local_max_window_bits",
        "compress_settings",
        "decoder",
        "encoder",
        "decode_cont_data",
    }
    assert isinstance(ext.encoder, type(zlib.compressobj()))
    assert isinstance(ext.decoder, type(zlib.decompressobj()))
    # Without context takeover its __init__ makes neither (ParkingDeflate relies on it).
    assert not {"encoder", "decoder"} & set(vars(PerMessageDeflate(True, True, 12, 12)))


def test_the_server_negotiates_what_the_library_does() -> None:
    ext = negotiate()
    assert (ext.local_max_window_bits, ext.remote_max_window_bits) == (12, 12)
    # A client that does not offer client_max_window_bits compresses with 15.
    assert negotiate(("server_no_context_takeover", None)).remote_max_window_bits == 15
    assert ext.compress_settings == {"memLevel": 5}
    assert not ext.local_no_context_takeover
    assert not ext.remote_no_context_takeover
    assert ext.parked  # no zlib object before the first message
    assert not {"encoder", "decoder"} & set(vars(ext))


@settings(max_examples=60, deadline=None)
@given(MESSAGES)
def test_sent_messages_decompress_at_a_peer_that_never_parks(
    messages: list[tuple[bytes, bool]],
) -> None:
    ext = negotiate()
    plain = PerMessageDeflate(False, False, 12, 12, {"memLevel": 5})  # the library's own
    peer = zlib.decompressobj(wbits=-12)
    for data, park in messages:
        frame = ext.encode(Frame(Opcode.BINARY, data))
        assert frame.rsv1
        assert peer.decompress(bytes(frame.data) + TAIL) == data
        # Compressed as well as by the library's never-parked extension
        # (a few bytes of slack: a rebuilt compressor's hash chains differ).
        assert len(frame.data) <= len(plain.encode(Frame(Opcode.BINARY, data)).data) + 8
        if park:
            assert ext.park()
            assert "encoder" not in vars(ext)
            assert len(ext.sent_window) <= 4096
    assert peer.unused_data == b""


@settings(max_examples=60, deadline=None)
@given(MESSAGES, st.sampled_from([[OFFER], []]))
def test_received_messages_from_a_peer_that_never_parks_decode(
    messages: list[tuple[bytes, bool]], offer: list[ExtensionParameter]
) -> None:
    (factory,) = server_factories()
    _, ext = factory.process_request_params(offer, [])
    assert isinstance(ext, ParkingDeflate)
    bits = ext.remote_max_window_bits
    assert bits == (12 if offer else 15)
    peer = peer_compressor(bits)
    for data, park in messages:
        frame = ext.decode(Frame(Opcode.BINARY, compress(peer, data), rsv1=True), max_size=None)
        assert bytes(frame.data) == data
        assert not frame.rsv1
        if park:
            assert ext.park()
            assert "decoder" not in vars(ext)
            assert len(ext.received_window) <= 1 << bits


def test_a_parked_window_keeps_compressing_a_repeated_message_small() -> None:
    # What context takeover is for: the second copy of a message is a few
    # bytes, after parking as before (a fresh compressor, or one that kept
    # less than the whole window, would need ~all of it). Random bytes, most
    # of a window: only the first copy can shorten the second.
    message = random.Random(17).randbytes(3500)
    ext = negotiate()
    first = bytes(ext.encode(Frame(Opcode.BINARY, message)).data)
    assert ext.park()
    again = ext.encode(Frame(Opcode.BINARY, message)).data
    assert len(again) < 64
    assert len(first) > 3500
    peer = zlib.decompressobj(wbits=-12)
    assert peer.decompress(first + TAIL) + peer.decompress(bytes(again) + TAIL) == message * 2


def test_an_uncompressed_message_is_not_part_of_the_window() -> None:
    ext = negotiate()
    peer = peer_compressor(12)
    assert ext.decode(Frame(Opcode.TEXT, b"plain"), max_size=None).data == b"plain"
    assert ext.parked  # nothing went through a decompressor
    for data in (b"hello hello", b"plain", b"hello plain"):
        got = ext.decode(Frame(Opcode.TEXT, compress(peer, data), rsv1=True), max_size=None)
        assert got.data == data
        ext.park()
    assert ext.received_window == b"hello hello" + b"plain" + b"hello plain"


@pytest.mark.parametrize("cut", [1, 3, 17, 200])
def test_fragmented_messages_are_not_parked_in_the_middle(cut: int) -> None:
    ext = negotiate()
    peer_in = zlib.decompressobj(wbits=-12)
    peer_out = peer_compressor(12)
    for round_ in range(3):
        message = b"fragment %d of a chat line, " % round_ * 20
        # Sent: three frames; a park attempt after each keeps the compressor
        # until the last frame.
        pieces = [message[:cut], message[cut : 2 * cut], message[2 * cut :]]
        got = b""
        for i, piece in enumerate(pieces):
            fin = i == len(pieces) - 1
            frame = ext.encode(Frame(Opcode.TEXT if i == 0 else Opcode.CONT, piece, fin=fin))
            assert frame.rsv1 == (i == 0)
            got += peer_in.decompress(bytes(frame.data) + (TAIL if fin else b""))
            assert ext.park() == fin
            assert ("encoder" in vars(ext)) != fin
        assert got == message
        # Received: the peer's compressed message cut at arbitrary bytes
        # (inside deflate blocks); parking between its frames would lose the
        # decompressor's bit state.
        payload = compress(peer_out, message)
        chunks = [payload[:cut], payload[cut : 2 * cut], payload[2 * cut :]]
        got = b""
        for i, chunk in enumerate(chunks):
            fin = i == len(chunks) - 1
            opcode = Opcode.BINARY if i == 0 else Opcode.CONT
            frame = ext.decode(Frame(opcode, chunk, fin=fin, rsv1=i == 0), max_size=None)
            got += frame.data
            assert ext.park() == fin
            assert ("decoder" in vars(ext)) != fin
        assert got == message


@pytest.mark.parametrize(
    "params",
    [
        [("server_no_context_takeover", None), ("client_no_context_takeover", None)],
        [("server_no_context_takeover", None)],
        [("client_no_context_takeover", None)],
    ],
)
def test_no_context_takeover_keeps_no_state_between_messages(
    params: Sequence[ExtensionParameter],
) -> None:
    ext = negotiate(*params)
    server_fresh = ("server_no_context_takeover", None) in params
    client_fresh = ("client_no_context_takeover", None) in params
    assert (ext.local_no_context_takeover, ext.remote_no_context_takeover) == (
        server_fresh,
        client_fresh,
    )
    peer_in = zlib.decompressobj(wbits=-12)
    peer_out = peer_compressor(12)
    message = b"the same words again and again " * 4
    sizes = []
    for _ in range(3):
        if server_fresh:
            peer_in = zlib.decompressobj(wbits=-12)
        if client_fresh:
            peer_out = peer_compressor(12)
        sent = ext.encode(Frame(Opcode.TEXT, message)).data
        sizes.append(len(sent))
        assert peer_in.decompress(bytes(sent) + TAIL) == message
        assert ext.decode(Frame(Opcode.TEXT, compress(peer_out, message), rsv1=True)).data == (
            message
        )
        # A direction without context takeover has nothing left between
        # messages (the library drops it); one with it is parked.
        assert ("encoder" in vars(ext)) == (not server_fresh)
        assert ("decoder" in vars(ext)) == (not client_fresh)
        assert ext.park()
        assert not {"encoder", "decoder"} & set(vars(ext))
    # Without takeover every copy costs the same; with it, the later ones shrink.
    assert (sizes[0] == sizes[2]) == server_fresh


@settings(max_examples=30, deadline=None)
@given(MESSAGES)
def test_the_smallest_windows_round_trip(messages: list[tuple[bytes, bool]]) -> None:
    # The client may ask for server_max_window_bits 9 (8 the library refuses)
    # and offer client_max_window_bits 8 (zlib compresses with 9 bits then,
    # reaching back at most 250 bytes: within an 8-bit window).
    ext = negotiate(("server_max_window_bits", "9"), ("client_max_window_bits", "8"))
    assert (ext.local_max_window_bits, ext.remote_max_window_bits) == (9, 8)
    peer_in = zlib.decompressobj(wbits=-9)
    peer_out = peer_compressor(8)
    reference = zlib.decompressobj(wbits=-8)  # the library's decoder, never parked
    for data, park in messages:
        assert peer_in.decompress(bytes(ext.encode(Frame(Opcode.BINARY, data)).data) + TAIL) == data
        payload = compress(peer_out, data)
        assert reference.decompress(payload + TAIL) == data
        got = ext.decode(Frame(Opcode.BINARY, payload, rsv1=True), max_size=None)
        assert got.data == data
        if park:
            assert ext.park()
            assert len(ext.sent_window) <= 512
            assert len(ext.received_window) <= 256


def test_the_loop_clock_parks_an_idle_extension_and_spares_a_busy_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(websocket_deflate, "PARK_TICK_S", 0.05)

    async def main() -> None:
        idle, busy = negotiate(), negotiate()
        peer = zlib.decompressobj(wbits=-12)
        first = idle.encode(Frame(Opcode.TEXT, b"hello"))
        assert peer.decompress(bytes(first.data) + TAIL) == b"hello"
        busy.encode(Frame(Opcode.TEXT, b"hello"))
        assert not idle.parked
        assert not busy.parked
        # busy sends every 20 ms for 0.3 s: never parked, one compressor all along.
        encoder = busy.encoder
        for i in range(15):
            await asyncio.sleep(0.02)
            busy.encode(Frame(Opcode.TEXT, b"tick %d" % i))
            assert busy.encoder is encoder
        assert idle.parked
        # Left alone, busy goes too, within two ticks.
        for _ in range(50):
            if busy.parked:
                break
            await asyncio.sleep(0.01)
        assert busy.parked
        frame = idle.encode(Frame(Opcode.TEXT, b"hello"))
        assert peer.decompress(frame.data + TAIL) == b"hello"
        assert len(frame.data) < 6  # the window survived

    asyncio.run(main())


def test_the_clock_does_not_keep_an_extension_left_in_the_middle_of_a_message(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(websocket_deflate, "PARK_TICK_S", 0.02)

    async def main() -> None:
        ext = negotiate()
        ext.encode(Frame(Opcode.TEXT, b"first of two", fin=False))
        await asyncio.sleep(0.1)  # ticks: never parkable
        assert not ext.parked
        gone = weakref.ref(ext)
        del ext  # the connection ended there
        assert gone() is None

    asyncio.run(main())


def test_a_tick_that_parks_many_gives_the_memory_back(monkeypatch: pytest.MonkeyPatch) -> None:
    # zlib's buffers are malloc chunks; between longer-lived ones (here: a
    # kilobyte buffer made after each connection's, as a server's objects
    # would be) they stay resident when freed unless the heap is trimmed.
    psutil = pytest.importorskip("psutil")
    monkeypatch.setattr(websocket_deflate, "PARK_TICK_S", 0.02)
    process = psutil.Process()

    async def main() -> tuple[int, int]:
        exts, others = [], []
        for _ in range(1000):
            ext = negotiate()
            peer = peer_compressor(12)
            ext.encode(Frame(Opcode.TEXT, b"hello"))
            ext.decode(Frame(Opcode.TEXT, compress(peer, b"hello"), rsv1=True))
            exts.append(ext)
            others.append(bytearray(1000))
        live = process.memory_info().rss
        for _ in range(100):
            await asyncio.sleep(0.02)
            if all(ext.parked for ext in exts):
                break
        assert all(ext.parked for ext in exts)
        return live, process.memory_info().rss

    live, parked = asyncio.run(main())
    assert live - parked > 30 * 1024 * 1024  # of ~45 MiB of zlib state
