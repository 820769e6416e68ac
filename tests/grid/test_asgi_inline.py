"""An ASGI app's first step runs from the protocol callback, as part of the connection's task.

``AsgiApp.respond_inline`` calls the app as soon as a request is read and
runs it until it first waits (most requests: to the end); an app that waits
goes on in the connection's task. These tests hold that to what an app sees
in a task of its own: ``asyncio.current_task()``, sniffio's answer (anyio
relies on it), cancellation, errors, and the order of pipelined responses.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import ServerProcess, launch_server
from tests.e2e.helpers import Wire, request

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    proc = launch_server(
        REPO, "-w", "1", target="tests.grid.inline_app:app", env={"PYTHONPATH": path}
    )
    try:
        yield proc
    finally:
        proc.stop()


def _post(body: bytes) -> bytes:
    return request("/echo", f"Content-Length: {len(body)}", method="POST") + body


def test_the_app_runs_in_the_connections_task(server: ServerProcess) -> None:
    with Wire(server.port) as wire:
        wire.send(request("/task"))
        seen = json.loads(wire.read_response().body)
        wire.send(request("/task-no-wait"))
        no_wait = wire.read_response().body
    assert seen == {"task": True, "same": True, "library": "asyncio"}
    assert no_wait == b"True"


def test_a_timeout_that_runs_out_at_once_reaches_the_app(server: ServerProcess) -> None:
    """asyncio.timeout(0) cancels the task before the connection's coroutine
    takes the app over: the cancellation must still land in the app."""
    with Wire(server.port) as wire:
        started = time.monotonic()
        wire.send(request("/timeout-now"))
        assert wire.read_response().body == b"timed out"
        assert time.monotonic() - started < 4
        # The connection goes on as before.
        wire.send(_post(b"next"))
        assert wire.read_response().body == b"echo:next"


def test_an_app_that_cancels_its_own_task(server: ServerProcess) -> None:
    with Wire(server.port) as wire:
        wire.send(request("/cancel-self"))
        assert wire.read_response().body == b"cancelled"
        wire.send(request("/task-no-wait"))
        assert wire.read_response().body == b"True"


def test_a_failure_before_any_await_is_a_500(server: ServerProcess) -> None:
    with Wire(server.port) as wire:
        wire.send(request("/fail-now"))
        response = wire.read_response()
    assert response.status == 500
    server.wait_log("failed before any await")


def test_pipelined_responses_keep_their_order(server: ServerProcess) -> None:
    """One request that waits between two that do not: the answers come in order."""
    with Wire(server.port) as wire:
        wire.send(_post(b"one") + request("/wait") + _post(b"three") + request("/task-no-wait"))
        bodies = [wire.read_response().body for _ in range(4)]
    assert bodies == [b"echo:one", b"waited", b"echo:three", b"True"]


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    config = tmp_path_factory.mktemp("limited") / "prefork.toml"
    config.write_text("requests_per_connection = 3\n")
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    proc = launch_server(
        REPO,
        "-w",
        "1",
        "-c",
        str(config),
        target="tests.grid.inline_app:app",
        env={"PYTHONPATH": path},
    )
    try:
        yield proc
    finally:
        proc.stop()


def test_requests_answered_inline_count_toward_the_limit(limited: ServerProcess) -> None:
    """Two requests answered from the protocol callback, then one the connection's
    coroutine takes over (a chunked body): it is the third, and says close."""
    chunked = (
        request("/echo", "Transfer-Encoding: chunked", method="POST") + b"2\r\nhi\r\n0\r\n\r\n"
    )
    with Wire(limited.port) as wire:
        for _ in range(2):
            wire.send(request("/task-no-wait"))
            assert not wire.read_response().closes
        wire.send(chunked)
        third = wire.read_response()
        assert third.body == b"echo:hi"
        assert third.closes
        assert wire.read_until_close() == b""
