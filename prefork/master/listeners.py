"""The listen sockets: ``HOST:PORT`` addresses, what a config asks for, binding.

The master binds them once, before the first fork, or takes the ones systemd
passed it (socket activation, systemd.py); every worker inherits the same
sockets and accepts from their shared listen queues. A reload keeps them, so a
config whose ``bind_spec`` differs needs a restart. Failures are ``BindError``.
"""

from __future__ import annotations

import logging
import socket

from prefork import log
from prefork.config import Config, parse_host_port
from prefork.errors import BindError, ConfigError
from prefork.master import systemd

logger = logging.getLogger(log.MASTER)


def parse_address(text: str) -> tuple[str, int]:
    """``"HOST:PORT"`` (``"[::1]:80"`` for IPv6) -> ``(host, port)``, as config reads it."""
    try:
        return parse_host_port(text, "bind")
    except ConfigError as exc:
        raise BindError(str(exc)) from None


def bind_spec(cfg: Config) -> tuple[tuple[tuple[str, int], ...], int]:
    """What the listen sockets are made from: the requested addresses and the backlog."""
    return ((cfg.ip, cfg.port), *(parse_address(b) for b in cfg.binds)), cfg.backlog


def listen(host: str, port: int, backlog: int) -> socket.socket:
    """A listening TCP socket (SO_REUSEADDR; IPv6 sockets are IPv6-only); raises BindError."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host, port), family=family, backlog=backlog)
    except (OSError, OverflowError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise BindError(f"cannot bind {format_host(host)}:{port}: {reason}") from None


def listen_all(addrs: tuple[tuple[str, int], ...], backlog: int) -> list[socket.socket]:
    """One socket per address (a repeated one binds once); all closed if one fails."""
    listeners: list[socket.socket] = []
    try:
        for i, (host, port) in enumerate(addrs):
            if port == 0 or (host, port) not in addrs[:i]:  # the same address binds once
                listeners.append(listen(host, port, backlog))
    except BindError:
        for sock in listeners:
            sock.close()
        raise
    return listeners


def open_listeners(
    spec: tuple[tuple[tuple[str, int], ...], int], scheme: str
) -> tuple[list[socket.socket], bool]:
    """The sockets systemd passed (socket activation), else ``spec`` bound; each logged.

    Returns the sockets and whether they came from systemd: then the
    addresses and backlog are the .socket unit's, and ``spec`` is not used.
    """
    inherited = systemd.listen_fds()
    for sock, name in inherited:
        origin = f"fd {sock.fileno()}" + (f", {name}" if name else "")
        logger.info("listening on %s (from systemd, %s)", describe(sock, scheme), origin)
    if inherited:
        return [sock for sock, _ in inherited], True
    listeners = listen_all(*spec)
    for sock in listeners:
        logger.info("listening on %s", describe(sock, scheme))
    return listeners, False


def format_host(host: str) -> str:
    """``host`` as it goes before ``:PORT``: an IPv6 address in brackets."""
    return f"[{host}]" if ":" in host else host


def describe(sock: socket.socket, scheme: str) -> str:
    """Where ``sock`` listens, for the log: ``http://127.0.0.1:8080`` or ``http+unix:/x.sock``."""
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        host, port = sock.getsockname()[:2]
        return f"{scheme}://{format_host(host)}:{port}"
    name = sock.getsockname()
    if isinstance(name, bytes):  # an abstract unix socket: a leading NUL
        name = "@" + name[1:].decode(errors="replace")
    return f"{scheme}+unix:{name}"


def port_of(sock: socket.socket) -> int:
    """The TCP port ``sock`` listens on; 0 for a unix socket."""
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        return int(sock.getsockname()[1])
    return 0
