"""Behind proxies, over real sockets: forwarded fields from trusted peers, the PROXY protocol."""

from __future__ import annotations

import contextlib
import ipaddress
import json
import socket
import struct
import time

import pytest

from tests.conftest import wait_until
from tests.e2e.conftest import ServerProcess, StartServer

pytestmark = pytest.mark.e2e

APP = """
import json

def handle(method, query, args, headers, body, ctx):
    seen = {"client": ctx.client_ip, "scheme": ctx.scheme, "host": headers.get("host")}
    return json.dumps(seen), 200, {"content-type": "application/json"}
"""

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"


def ask(port: int, head: bytes, *, source: str = "127.0.0.1", prefix: bytes = b"") -> bytes:
    """One request (``prefix`` sent first, e.g. a PROXY header) from ``source``; the reply."""
    with socket.socket() as s:
        s.settimeout(10)
        s.bind((source, 0))
        s.connect(("127.0.0.1", port))
        s.sendall(prefix + head)
        chunks = []
        while True:
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)


def seen(reply: bytes) -> dict[str, str]:
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), reply
    result: dict[str, str] = json.loads(body)
    return result


def request(*fields: str) -> bytes:
    lines = ["GET / HTTP/1.1", "Host: app.internal", *fields, "Connection: close", "", ""]
    return "\r\n".join(lines).encode()


FORWARDED = (
    "X-Forwarded-For: 198.51.100.7",
    "X-Forwarded-Proto: https",
    "X-Forwarded-Host: shop.example",
)


def test_a_trusted_proxy_sets_client_scheme_and_host(start_server: StartServer) -> None:
    server = start_server(APP)
    assert seen(ask(server.port, request(*FORWARDED))) == {
        "client": "198.51.100.7",
        "scheme": "https",
        "host": "shop.example",
    }
    rfc7239 = 'Forwarded: for="198.51.100.9:4711";proto=https;host=rfc.example'
    assert seen(ask(server.port, request(rfc7239))) == {
        "client": "198.51.100.9",
        "scheme": "https",
        "host": "rfc.example",
    }
    # The access log names the client the proxy reported.
    server.wait_log(r"198\.51\.100\.7 .*GET /")


def test_an_untrusted_peer_changes_nothing(start_server: StartServer) -> None:
    server = start_server(APP)  # trusts 127.0.0.1 and ::1 only
    assert seen(ask(server.port, request(*FORWARDED), source="127.0.0.2")) == {
        "client": "127.0.0.2",
        "scheme": "http",
        "host": "app.internal",
    }


def test_trusted_ranges_and_the_rightmost_untrusted_hop(start_server: StartServer) -> None:
    server = start_server_with(start_server, 'forwarded_allow_ips = ["127.0.0.0/8"]')
    xff = "X-Forwarded-For: 1.1.1.1, 203.0.113.5, 127.0.0.9"
    assert seen(ask(server.port, request(xff), source="127.0.0.2"))["client"] == "203.0.113.5"


def test_malformed_fields_are_ignored_never_an_error(start_server: StartServer) -> None:
    server = start_server(APP)
    reply = ask(server.port, request("X-Forwarded-For: not an address", "X-Forwarded-Proto: ftp"))
    assert seen(reply) == {"client": "127.0.0.1", "scheme": "http", "host": "app.internal"}


def start_server_with(start_server: StartServer, toml: str, *args: str) -> ServerProcess:
    import pathlib
    import tempfile

    path = pathlib.Path(tempfile.mkdtemp()) / "prefork.toml"
    path.write_text(toml + "\n")
    return start_server(APP, "-c", str(path), *args)


# --- the PROXY protocol ---------------------------------------------------------


def proxy_server(start_server: StartServer) -> ServerProcess:
    import pathlib
    import tempfile

    path = pathlib.Path(tempfile.mkdtemp()) / "prefork.toml"
    path.write_text("proxy_protocol = true\ntls_handshake_timeout = 1\n")
    server = start_server(APP, "-c", str(path), wait=False)
    wait_until(lambda: server.port, timeout=20)
    v1 = b"PROXY TCP4 192.0.2.1 198.51.100.2 5 6\r\n"
    wait_until(lambda: _answers(server.port, v1), timeout=20)
    return server


def _answers(port: int, prefix: bytes) -> bool:
    try:
        return ask(port, request(), prefix=prefix).startswith(b"HTTP/1.1 200")
    except OSError:
        return False


def v2_header(src: str, sport: int, command: int = 1, tlvs: bytes = b"") -> bytes:
    block = (
        ipaddress.IPv4Address(src).packed
        + ipaddress.IPv4Address("198.51.100.2").packed
        + struct.pack("!HH", sport, 443)
        + tlvs
    )
    return V2_SIGNATURE + struct.pack("!BBH", 0x20 | command, 0x11, len(block)) + block


def test_proxy_protocol_v1_and_v2_name_the_client(start_server: StartServer) -> None:
    server = proxy_server(start_server)
    v1 = b"PROXY TCP4 192.0.2.77 198.51.100.2 40000 443\r\n"
    assert seen(ask(server.port, request(), prefix=v1))["client"] == "192.0.2.77"
    v2 = v2_header("192.0.2.88", 40001, tlvs=b"\x04\x00\x02xy")
    assert seen(ask(server.port, request(), prefix=v2))["client"] == "192.0.2.88"
    # LOCAL (the balancer's own health check): the peer's address stands.
    local = V2_SIGNATURE + struct.pack("!BBH", 0x20, 0x00, 0)
    assert seen(ask(server.port, request(), prefix=local))["client"] == "127.0.0.1"
    # The header's client is not a trusted proxy: its X-Forwarded-For changes nothing.
    reply = ask(server.port, request("X-Forwarded-For: 6.6.6.6"), prefix=v1)
    assert seen(reply)["client"] == "192.0.2.77"


@pytest.mark.parametrize(
    "prefix",
    [
        b"",  # plain HTTP where a header must come first
        b"PROXY TCP4 192.0.2.1 198.51.100.2 99999 443\r\n",  # bad port
        b"\r\n\r\n\x00\r\nQUIX\n\x21\x11\x00\x0c" + bytes(12),  # bad v2 signature
        V2_SIGNATURE + b"\x21\x51\x00\x0c" + bytes(12),  # unknown v2 family
    ],
    ids=["none", "v1-bad-port", "v2-bad-signature", "v2-unknown-family"],
)
def test_a_connection_without_a_valid_header_is_closed_without_a_response(
    start_server: StartServer, prefix: bytes
) -> None:
    server = proxy_server(start_server)
    assert ask(server.port, request(), prefix=prefix) == b""
    server.wait_log(r"closing a connection from 127\.0\.0\.1")
    # ... and only that connection: the next one is served.
    v1 = b"PROXY TCP4 192.0.2.5 198.51.100.2 1 2\r\n"
    assert seen(ask(server.port, request(), prefix=v1))["client"] == "192.0.2.5"


def test_a_trickled_header_loses_its_slot_at_the_handshake_deadline(
    start_server: StartServer,
) -> None:
    server = proxy_server(start_server)  # tls_handshake_timeout = 1
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(b"PROXY TCP4 192.0")
        started = time.monotonic()
        # Closed with no response (a reset when the trickle is left unread).
        with contextlib.suppress(ConnectionResetError):
            assert s.recv(100) == b""
        assert time.monotonic() - started < 5
    server.wait_log(r"closing a connection from 127\.0\.0\.1: no PROXY protocol header in time")
