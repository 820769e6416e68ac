"""systemd: socket activation (``LISTEN_FDS``) and readiness notification (``sd_notify``).

Both protocols are small and stable, so they are written here rather than
pulled in from libsystemd bindings:

* Socket activation (sd_listen_fds(3)): systemd passes ``LISTEN_FDS`` sockets
  starting at fd 3, with ``LISTEN_PID`` set to the pid they are meant for and
  optionally ``LISTEN_FDNAMES`` (colon-separated names).
* Notification (sd_notify(3)): newline-separated ``KEY=VALUE`` assignments in
  one datagram to the AF_UNIX socket named by ``NOTIFY_SOCKET`` (a leading
  ``@`` is the abstract namespace).

Only the master calls these. Both read their variables once and remove them
from the environment, so that workers and anything they start never take the
master's sockets or speak to systemd as if they were the main process.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import MutableMapping

from prefork import log
from prefork.errors import BindError

logger = logging.getLogger(log.MASTER)

SD_LISTEN_FDS_START = 3
ACTIVATION_VARS = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")
# A send waits at most this long: systemd reads its queue quickly, and a master
# blocked on a full queue would stop supervising its workers.
NOTIFY_TIMEOUT_S = 2.0


def listen_fds(
    environ: MutableMapping[str, str] | None = None, pid: int | None = None
) -> list[tuple[socket.socket, str]]:
    """The listening sockets systemd passed to this process, with their names.

    Empty when ``LISTEN_PID`` is unset or names another process (the variables
    were meant for a parent). The variables are removed from ``environ``
    either way. The sockets are made close-on-exec (systemd passes them
    inheritable; forked workers keep them, programs they exec do not). Raises
    BindError naming the fd when one is not a listening stream socket.
    """
    env = os.environ if environ is None else environ
    values = {name: env.pop(name, None) for name in ACTIVATION_VARS}
    listen_pid, count_text = values["LISTEN_PID"], values["LISTEN_FDS"]
    if listen_pid is None or count_text is None:
        return []
    if not listen_pid.isdigit() or int(listen_pid) != (os.getpid() if pid is None else pid):
        logger.debug("LISTEN_PID=%s is not this process; ignoring LISTEN_FDS", listen_pid)
        return []
    if not count_text.isdigit():
        raise BindError(f"LISTEN_FDS={count_text!r}: expected a number of sockets")
    count = int(count_text)
    names = (values["LISTEN_FDNAMES"] or "").split(":")
    names += [""] * (count - len(names))  # fewer names than sockets: the rest unnamed
    out: list[tuple[socket.socket, str]] = []
    try:
        for i in range(count):
            out.append((_adopt(SD_LISTEN_FDS_START + i, names[i]), names[i]))
    except BindError:
        for sock, _ in out:
            sock.close()
        raise
    return out


def _adopt(fd: int, name: str) -> socket.socket:
    label = f"systemd socket fd {fd}" + (f" ({name})" if name else "")
    try:
        sock = socket.socket(fileno=fd)
    except OSError as exc:  # EBADF: not open; ENOTSOCK: a file or pipe
        raise BindError(f"{label}: not a socket ({exc.strerror})") from None
    try:
        listening = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
    except OSError:
        listening = 0
    if sock.type != socket.SOCK_STREAM or not listening:
        sock.detach()  # not ours to close: leave the fd as systemd passed it
        raise BindError(f"{label}: not a listening stream socket (Accept=no, ListenStream=)")
    sock.set_inheritable(False)
    return sock


class Notifier:
    """Sends sd_notify messages to systemd; does nothing when ``NOTIFY_SOCKET`` is unset.

    A send never raises: a lost notification is logged, and the server keeps
    serving (systemd's own start/reload timeouts then decide).
    """

    def __init__(self, address: str | None) -> None:
        self.address = address
        self._warned = False

    @classmethod
    def from_environ(cls, environ: MutableMapping[str, str] | None = None) -> Notifier:
        """Take ``NOTIFY_SOCKET`` out of the environment (see the module's docstring)."""
        env = os.environ if environ is None else environ
        return cls(env.pop("NOTIFY_SOCKET", None) or None)

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def ready(self, status: str) -> None:
        self.send(message(READY="1", STATUS=status))

    def reloading(self, status: str) -> None:
        self.send(message(RELOADING="1", MONOTONIC_USEC=str(monotonic_usec()), STATUS=status))

    def stopping(self, status: str) -> None:
        self.send(message(STOPPING="1", STATUS=status))

    def status(self, status: str) -> None:
        self.send(message(STATUS=status))

    def send(self, data: bytes) -> bool:
        """One datagram to the notify socket; False (logged) if it could not be sent."""
        if self.address is None:
            return False
        try:
            target = socket_address(self.address)
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.settimeout(NOTIFY_TIMEOUT_S)
                sock.sendto(data, target)
        except (OSError, ValueError) as exc:
            # Once at warning level: a socket that is gone stays gone, and a
            # line per message would flood the journal.
            level = logging.DEBUG if self._warned else logging.WARNING
            self._warned = True
            logger.log(level, "sd_notify to %s failed: %s", self.address, exc)
            return False
        return True


def socket_address(address: str) -> str | bytes:
    """``NOTIFY_SOCKET`` as ``sendto`` takes it: ``@name`` is the abstract ``\\0name``."""
    if address.startswith("@"):
        return b"\0" + address[1:].encode()
    if not address.startswith("/"):
        # systemd also allows vsock:CID:PORT (virtual machines); prefork does not.
        raise ValueError(f"unsupported NOTIFY_SOCKET {address!r} (expected a path or @name)")
    return address


def message(**fields: str) -> bytes:
    """Newline-separated ``KEY=VALUE`` lines; a value's own newlines become spaces."""
    return "\n".join(
        f"{key}={' '.join(value.splitlines())}" for key, value in fields.items()
    ).encode()


def monotonic_usec() -> int:
    """CLOCK_MONOTONIC in microseconds, the clock systemd compares MONOTONIC_USEC with."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
