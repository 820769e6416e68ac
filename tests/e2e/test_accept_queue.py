"""engine.accept.accept_queue_length on a real listening socket on 127.0.0.1 (TCP_INFO, Linux).

The accept loop that uses it runs against fakes in tests/unit/test_worker.py;
here the kernel's own count of a real listen queue is read, in this process.
"""

from __future__ import annotations

import socket
import time

import pytest

from prefork.engine.accept import accept_queue_length

pytestmark = pytest.mark.e2e


def test_accept_queue_length_of_a_real_listening_socket() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        assert accept_queue_length(listener) == 0
        clients = [socket.create_connection(listener.getsockname()) for _ in range(3)]
        try:
            deadline = time.monotonic() + 5
            while accept_queue_length(listener) != 3 and time.monotonic() < deadline:
                time.sleep(0.01)  # the handshakes complete in the kernel
            assert accept_queue_length(listener) == 3
            accepted, _ = listener.accept()
            accepted.close()
            assert accept_queue_length(listener) == 2
            assert accept_queue_length(clients[0]) is None  # not a listening socket
        finally:
            for client in clients:
                client.close()
