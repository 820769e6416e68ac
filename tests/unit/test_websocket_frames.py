"""A server frame from remembered heads is the library's frame, byte for byte."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.server import ServerProtocol
from websockets.uri import parse_uri

from prefork.apps.websocket_frames import CACHE_MAX_BYTES, HEADS_MAX, FrameCache


def library_frame(message: str | bytes) -> bytes:
    if isinstance(message, str):
        return Frame(Opcode.TEXT, message.encode()).serialize(mask=False)
    return Frame(Opcode.BINARY, message).serialize(mask=False)


# Every length of the one-byte form, both edges of the two- and eight-byte forms.
LENGTHS = [*range(0, 130), 65535, 65536, CACHE_MAX_BYTES - 4, CACHE_MAX_BYTES + 1, 200_000]


@pytest.mark.parametrize("length", LENGTHS)
def test_every_length_form_matches_the_library(length: int) -> None:
    cache = FrameCache()
    text = "é" * (length // 2) + "a" * (length % 2)  # (two UTF-8 bytes each)
    data = bytes(range(256)) * (length // 256) + bytes(length % 256)
    for message in (text, data, text + "", bytes(data)):
        assert cache.frame_of(message) == library_frame(message)
    # The head made for this length serves the next message of the same length.
    other = b"z" * len(data)
    assert cache.frame_of(other) == library_frame(other)


@given(st.lists(st.one_of(st.text(max_size=300), st.binary(max_size=300)), max_size=40))
def test_any_messages_in_any_order_match_the_library(messages: list[str | bytes]) -> None:
    cache = FrameCache()
    for message in messages:
        assert cache.frame_of(message) == library_frame(message)


def test_a_client_reads_back_each_message() -> None:
    server = ServerProtocol()
    client = ClientProtocol(parse_uri("ws://127.0.0.1/"))
    client.send_request(client.connect())
    server.receive_data(client.data_to_send()[0])
    (request,) = server.events_received()
    server.send_response(server.accept(request))
    client.receive_data(b"".join(server.data_to_send()))
    client.events_received()
    cache = FrameCache()
    messages: list[str | bytes] = ["hi", "", b"\x00\xff", "x" * 126, b"y" * 70_000, "ok"]
    for message in messages:
        client.receive_data(cache.frame_of(message))
    got = [(f.opcode, f.data) for f in client.events_received()]
    want = [
        (Opcode.TEXT, m.encode()) if isinstance(m, str) else (Opcode.BINARY, m) for m in messages
    ]
    assert got == want


def test_the_same_object_gets_the_same_frame_object() -> None:
    cache = FrameCache()
    message = "broadcast to all"
    first = cache.frame_of(message)
    assert cache.frame_of(message) is first
    equal = "".join(["broadcast", " to all"])  # equal, another object
    assert equal is not message
    again = cache.frame_of(equal)
    assert again == first
    assert again is not first


def test_a_big_message_is_not_held() -> None:
    cache = FrameCache()
    big = b"b" * (CACHE_MAX_BYTES + 1)
    cache.frame_of(big)
    assert cache.message is not big
    assert not cache.heads


def test_heads_stay_bounded() -> None:
    cache = FrameCache()
    for length in range(3 * HEADS_MAX):
        message = b"m" * length
        assert cache.frame_of(message) == library_frame(message)
        assert len(cache.heads) <= HEADS_MAX
