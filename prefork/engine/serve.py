"""One accepted socket, served: the PROXY header, the TLS handshake, then the app's exchanges."""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl

from prefork import log
from prefork.engine.connection import Connection
from prefork.engine.proxy_header import read_proxy_header
from prefork.engine.shared import Shared
from prefork.errors import PreforkError
from prefork.http.proxy_protocol import ProxyHeaderError

logger = logging.getLogger(log.WORKER)


async def _proxied_peer(sock: socket.socket, shared: Shared, peer: object) -> object:
    """The client's address from the PROXY protocol header; None (socket closed) if invalid."""
    try:
        source = await read_proxy_header(sock, shared.cfg.tls_handshake_timeout)
    except (ProxyHeaderError, TimeoutError, OSError) as exc:
        what = "no PROXY protocol header in time" if isinstance(exc, TimeoutError) else exc
        logger.info("closing a connection from %s: %s", _address(peer), what)
        sock.close()
        return None
    return source if source is not None else peer


def _address(peer: object) -> str:
    return str(peer[0]) if isinstance(peer, tuple) and peer else "-"


async def serve_connection(sock: socket.socket, shared: Shared, peer: object) -> None:
    """Serve one accepted socket (``peer``: accept()'s address) until it closes; never raises."""
    loop = shared.loop or asyncio.get_running_loop()
    # (uvloop sets TCP_NODELAY on the transports it makes: no syscall here.)
    ssl_context = shared.ssl_context
    conn = Connection(shared)
    if shared.cfg.proxy_protocol:
        peer = await _proxied_peer(sock, shared, peer)
        if peer is None:
            return
    conn.set_peer(peer)
    try:
        if ssl_context is not None:
            await loop.connect_accepted_socket(
                lambda: conn,
                sock,
                ssl=ssl_context,
                ssl_handshake_timeout=shared.cfg.tls_handshake_timeout,
            )
        else:
            await loop.connect_accepted_socket(lambda: conn, sock)
    except (OSError, ssl.SSLError, TimeoutError) as exc:
        logger.debug("connection setup failed: %s", exc)
        if ssl_context is not None:
            shared.access.tls_handshake(False)
        sock.close()
        return
    if ssl_context is not None and conn.transport is not None:
        from prefork.tls import server_name_of

        shared.access.tls_handshake(True)
        conn.server_name = server_name_of(conn.transport.get_extra_info("ssl_object"))
    client_ip = conn.client_ip
    exchange = shared.app.exchange
    try:
        while True:
            action = await exchange(conn)
            if not isinstance(action, str):  # a session (engine.app.Session)
                action = await action
            if action != "keep-alive":
                break
    except PreforkError:
        pass
    except (OSError, RuntimeError) as exc:
        logger.debug("connection from %s ended: %s", client_ip, exc)
    except Exception:
        logger.exception("unexpected error on a connection from %s", client_ip)
    finally:
        if not conn.closing:
            conn.close()
        # ctx.client is the connection: without this the pair (and the transport,
        # reader and buffers hanging off it) would wait for the cyclic GC.
        conn.ctx = None
