"""What the kernel knows about a connection's socket: bytes unread, bytes held back.

Asked only when a decision needs it (closing a connection that looks idle, the
rate rule in the sweeper), never per read or write. Linux; elsewhere the
answers are "unknown" (0 / None) and the callers fall back to their timeouts.
"""

from __future__ import annotations

import fcntl
import socket
import sys
import termios
from typing import Any

_TCP_INFO: int | None = getattr(socket, "TCP_INFO", None)  # Linux
# struct tcp_info up to tcpi_notsent_bytes (Linux >= 4.6).
_TCP_INFO_SIZE = 148
_BYTES_ACKED = slice(120, 128)  # tcpi_bytes_acked (u64)
_NOTSENT_BYTES = slice(144, 148)  # tcpi_notsent_bytes (u32)


def _socket(transport: Any) -> Any:
    return transport.get_extra_info("socket") if transport is not None else None


def unread_bytes(transport: Any) -> int:
    """Bytes in the kernel's receive queue that the loop has not read yet (FIONREAD)."""
    sock = _socket(transport)
    if sock is None:
        return 0
    try:
        raw = fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0\0\0\0")
    except (OSError, ValueError):
        return 0
    return int.from_bytes(raw, sys.byteorder)


def held_back(transport: Any) -> tuple[int, int] | None:
    """(bytes the client holds back, bytes it has acknowledged so far); None if unknown.

    Held back: the transport's write buffer plus what the kernel has not even
    sent because the client's window is full. What is in flight is not held
    back, so a server-paced stream to a healthy client holds nothing back.
    """
    sock = _socket(transport)
    if sock is None or _TCP_INFO is None:
        return None
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, _TCP_INFO, _TCP_INFO_SIZE)
    except (OSError, AttributeError):
        return None
    if len(info) < _TCP_INFO_SIZE:
        return None
    acked = int.from_bytes(info[_BYTES_ACKED], sys.byteorder)
    notsent = int.from_bytes(info[_NOTSENT_BYTES], sys.byteorder)
    return int(transport.get_write_buffer_size()) + notsent, acked
