"""wss:// through an ASGI app: a real ``prefork run`` over TLS with two SNI hosts.

trustme issues a default certificate and one per host; the ``websockets``
client asks for each name in its handshake (SNI), checks the chain against
the CA, and talks to a Starlette endpoint that reports what its scope says.
"""

from __future__ import annotations

import asyncio
import json
import ssl
from pathlib import Path

import pytest
import trustme
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from tests.e2e.conftest import ServerProcess, StartServer

pytestmark = pytest.mark.e2e

DEFAULT_NAME = "default.example.org"
HOSTS = ("chat.example.net", "live.example.com")

APP = """
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect


async def chat(websocket: WebSocket) -> None:
    await websocket.accept()
    tls = websocket.scope["extensions"].get("tls")
    await websocket.send_json({
        "scheme": websocket.url.scheme,
        "scope_scheme": websocket.scope["scheme"],
        "tls_version": tls and tls.get("tls_version"),
        "has_server_cert": bool(tls and tls.get("server_cert")),
    })
    try:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            if message.get("bytes") is not None:
                await websocket.send_bytes(message["bytes"][::-1])
            else:
                await websocket.send_text(message["text"].upper())
    except WebSocketDisconnect:
        pass


app = Starlette(routes=[WebSocketRoute("/chat", chat)])
"""


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def server(start_server: StartServer, ca: trustme.CA, tmp_path: Path) -> ServerProcess:
    lines = []
    for stem, name in (("default", DEFAULT_NAME), *((f"host{i}", h) for i, h in enumerate(HOSTS))):
        leaf = ca.issue_cert(name)
        cert, key = tmp_path / f"{stem}.crt", tmp_path / f"{stem}.key"
        cert.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
        key.write_bytes(leaf.private_key_pem.bytes())
        table = "[ssl.default]" if stem == "default" else f'[ssl.hosts."{name}"]'
        lines += [table, f'cert = "{cert}"', f'key = "{key}"']
    (tmp_path / "tls.toml").write_text("\n".join(lines) + "\n")
    server = start_server(APP, "-w", "1", "-c", "tls.toml", target="app:app")
    assert server.scheme == "https", server.log()
    return server


def client_context(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)  # the chain is checked; so is the name asked for
    return context


def served_name(ws: ClientConnection) -> str:
    ssl_object = ws.transport.get_extra_info("ssl_object")
    cert = ssl_object.getpeercert()
    return str(dict(cert["subjectAltName"])["DNS"])


@pytest.mark.parametrize("host", HOSTS)
async def test_wss_echo_with_the_certificate_of_the_sni_host(
    server: ServerProcess, ca: trustme.CA, host: str
) -> None:
    url = f"wss://127.0.0.1:{server.port}/chat"
    async with connect(url, ssl=client_context(ca), server_hostname=host) as ws:
        assert served_name(ws) == host
        scope = json.loads(await asyncio.wait_for(ws.recv(), 5))
        assert scope == {
            "scheme": "wss",
            "scope_scheme": "wss",
            "tls_version": scope["tls_version"],
            "has_server_cert": True,
        }
        assert scope["tls_version"] in (0x0303, 0x0304)  # TLS 1.2 or 1.3
        await ws.send("over tls")
        assert await asyncio.wait_for(ws.recv(), 5) == "OVER TLS"
        payload = bytes(range(256)) * 300  # several TLS records each way
        await ws.send(payload)
        assert await asyncio.wait_for(ws.recv(), 5) == payload[::-1]
        await ws.close(4001, "done")
    server.wait_log(r'"GET /chat HTTP/1\.1" 101 ')


async def test_unknown_name_gets_the_default_certificate(
    server: ServerProcess, ca: trustme.CA
) -> None:
    url = f"wss://127.0.0.1:{server.port}/chat"
    async with connect(url, ssl=client_context(ca), server_hostname=DEFAULT_NAME) as ws:
        assert served_name(ws) == DEFAULT_NAME
        await asyncio.wait_for(ws.recv(), 5)
        await ws.send("x")
        assert await asyncio.wait_for(ws.recv(), 5) == "X"
    # A name the server has no certificate for: the default one is sent, so a
    # client that checks the name refuses it.
    with pytest.raises(ssl.SSLCertVerificationError):
        async with connect(url, ssl=client_context(ca), server_hostname="other.example.net"):
            pass


async def test_a_client_that_leaves_without_a_close_frame_ends_the_session(
    server: ServerProcess, ca: trustme.CA
) -> None:
    url = f"wss://127.0.0.1:{server.port}/chat"
    async with connect(url, ssl=client_context(ca), server_hostname=HOSTS[0]) as ws:
        await asyncio.wait_for(ws.recv(), 5)
        ws.transport.abort()  # TCP reset: no close frame, no TLS close_notify
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 5)
    # The app saw websocket.disconnect and returned: the session is logged.
    server.wait_log(r'"GET /chat HTTP/1\.1" 101 ')
    # And the worker still serves new sessions.
    async with connect(url, ssl=client_context(ca), server_hostname=HOSTS[1]) as ws:
        await asyncio.wait_for(ws.recv(), 5)
        await ws.send("again")
        assert await asyncio.wait_for(ws.recv(), 5) == "AGAIN"
