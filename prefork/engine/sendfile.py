"""A file sent straight to a connection's socket with ``os.sendfile``, from a thread.

For app interfaces whose app runs in a pool thread (WSGI's ``wsgi.file_wrapper``):
uvloop has no ``loop.sendfile``, so the thread that would otherwise copy the
file through Python sends it with the kernel. Only on plain TCP, and only
once the transport's own buffer is empty (the caller waits for that), so the
bytes cannot overtake what was written before.
"""

from __future__ import annotations

import os
import select

from prefork.engine.connection import Connection
from prefork.errors import PeerGone


def sendfile_blocking(conn: Connection, fd: int, offset: int, count: int, timeout: float) -> int:
    """Send up to ``count`` bytes of ``fd`` from ``offset``; the bytes sent (fewer if
    the file ended). Blocks the calling thread (never the event loop's).

    Raises PeerGone when the peer left or stopped reading for ``timeout`` seconds.
    """
    transport = conn.transport
    if transport is None or conn.lost:
        raise PeerGone("the peer left before a file was sent")
    out = transport.get_extra_info("socket").fileno()
    sent = 0
    while sent < count:
        if conn.lost:
            raise PeerGone("the peer left while a file was sent")
        try:
            n = os.sendfile(out, fd, offset + sent, count - sent)
        except BlockingIOError:
            _, writable, _ = select.select([], [out], [], timeout)
            if not writable:
                raise PeerGone("the peer stopped reading a file") from None
            continue
        if n == 0:
            break  # the file ended
        sent += n
    return sent
