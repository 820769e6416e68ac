"""The rate rule (min_transfer_rate) and the quiet rule for closing, on the connection layer."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from prefork.engine.lifecycle import QUIET_S
from prefork.engine.shared import below_min_rate
from prefork.errors import ProtocolError
from tests.unit.test_connection import hello, lose, make, parked

RATE = 500
GRACE = 3.0


@pytest.mark.parametrize(
    ("elapsed", "transferred", "cut"),
    [
        (0.5, 0, False),  # within the grace, nothing yet: early, not slow
        (2.99, 0, False),
        (3.01, 0, True),  # a stall past the grace
        (3.3, 200, False),  # a slowloris first packet buys 0.4 s...
        (3.5, 200, True),  # ...and no more
        (60.0, 30_000, False),  # 500 B/s exactly, for a minute
        (60.0, 28_000, True),  # below it
        (0.1, 10**9, False),
    ],
)
def test_each_byte_buys_one_over_rate_seconds_after_the_grace(
    elapsed: float, transferred: int, cut: bool
) -> None:
    assert below_min_rate(elapsed, transferred, RATE, GRACE) is cut


async def test_a_trickled_head_gets_408_once_its_credit_runs_out() -> None:
    conn, transport = make(hello)
    task = await parked(conn)
    conn.data_received(b"GET / HTTP/1.1\r\nHost: x\r\n")  # 26 bytes: 0.052 s of credit
    now = asyncio.get_running_loop().time()
    conn.check_rate(now + GRACE, RATE, GRACE)
    assert transport.written == []
    conn.check_rate(now + GRACE + 0.2, RATE, GRACE)
    with pytest.raises(ProtocolError):
        await task  # the coroutine answered it (and logged it), then ended
    assert transport.data().startswith(b"HTTP/1.1 408 Request Timeout\r\n")
    assert b"request head too slow" in transport.data()
    assert transport.eof_written  # half-closed, lingering: the client reads the 408


async def test_a_body_arriving_fast_enough_is_never_cut() -> None:
    conn, transport = make(hello)
    task = await parked(conn)
    head = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n"
    conn.data_received(head + b"x" * 10_000)  # 20 s of credit
    now = asyncio.get_running_loop().time()
    conn.check_rate(now + GRACE + 15, RATE, GRACE)
    assert transport.written == []
    conn.check_rate(now + GRACE + 25, RATE, GRACE)
    with pytest.raises(ProtocolError):
        await task
    assert b"request body too slow" in transport.data()


async def test_a_new_request_is_timed_afresh_after_a_slow_one_was_answered() -> None:
    conn, transport = make(hello)
    task = await parked(conn)
    conn.data_received(b"GET / HTTP/1.1\r\n")
    conn.data_received(b"Host: x\r\n\r\n")  # answered (inline)
    await asyncio.sleep(0)  # the write batch goes out at the end of the loop turn
    assert transport.data().startswith(b"HTTP/1.1 200 OK")
    answered = len(transport.data())
    later = asyncio.get_running_loop().time() + 100
    conn.data_received(b"GET /next HTTP/1.1\r\n")  # the next one begins now, not then
    conn.check_rate(later - 100 + GRACE - 0.5, RATE, GRACE)
    assert len(transport.data()) == answered
    await lose(conn, task)


async def test_only_connections_at_work_count_towards_the_limit() -> None:
    release = asyncio.Event()

    async def slow(method: str, query: str, args: Any, headers: Any, body: bytes, ctx: Any) -> Any:
        await release.wait()
        return "done", 200, {}

    conn, transport = make(slow)
    shared = conn.shared
    task = await parked(conn)
    assert shared.waiting_connections() == 1  # fresh, waiting for its request
    conn.data_received(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    for _ in range(3):
        await asyncio.sleep(0)
    assert shared.waiting_connections() == 0  # its handler runs: it costs
    release.set()
    assert await asyncio.wait_for(task, 1) == "keep-alive"
    task = await parked(conn)  # the next exchange, as serve_connection loops
    assert transport.data().startswith(b"HTTP/1.1 200 OK")
    assert shared.waiting_connections() == 1  # answered, idle keep-alive: cheap again
    await lose(conn, task)


async def test_drain_closes_an_idle_connection_only_once_it_has_been_quiet() -> None:
    conn, transport = make(hello)
    task = await parked(conn)
    conn.data_received(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    now = asyncio.get_running_loop().time()
    conn.shared.begin_drain()
    assert not transport.eof_written  # answered a moment ago: its client may be sending
    assert not conn.close_if_quiet(now + QUIET_S / 2)
    assert conn.close_if_quiet(now + QUIET_S + 0.05)
    assert transport.eof_written
    await task


async def test_a_request_sent_as_the_drain_begins_is_answered_with_close() -> None:
    conn, transport = make(hello)
    task = await parked(conn)
    conn.data_received(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    conn.shared.begin_drain()
    answered = len(transport.data())
    conn.data_received(b"GET /again HTTP/1.1\r\nHost: x\r\n\r\n")
    second = transport.data()[answered:]
    assert second.startswith(b"HTTP/1.1 200 OK")
    assert b"Connection: close\r\n" in second
    await task
