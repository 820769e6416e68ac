"""TLS end to end: real ``prefork run`` processes, real sockets, trustme certificates."""

from __future__ import annotations

import gzip
import http.client
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time
import tomllib
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pytest
import trustme

from tests.conftest import wait_until
from tests.e2e.conftest import ServerProcess, StartServer

pytestmark = pytest.mark.e2e

DEFAULT_NAME = "default.example.org"
HOST_NAME = "one.example.net"
WILDCARD = "*.example.com"
ROTATED_NAME = "rotated.example.org"
BIG_BODY_BYTES = 20_000  # as in APP
STREAM_CHUNKS = 5  # as in APP

APP = """
import json


def handle(method, query, args, headers, body, ctx):
    if query == "/name":
        payload = {"server_name": ctx.client.server_name}
        return json.dumps(payload), 200, {"content-type": "application/json"}
    if query == "/big":
        return "x" * 20_000, 200, {"content-type": "text/plain"}
    if query == "/stream":
        chunks = (b"chunk %d\\n" % i for i in range(5))
        return chunks, 200, {"content-type": "application/octet-stream"}
    return "hello", 200, {"content-type": "text/plain"}
"""


@dataclass
class Identity:
    cert: Path
    key: Path

    def table(self) -> dict[str, str]:
        return {"cert": str(self.cert), "key": str(self.key)}


@dataclass
class Certs:
    ca: trustme.CA
    client_ca: trustme.CA
    dir: Path
    default: Identity
    hosts: dict[str, Identity] = field(default_factory=dict)

    def ssl_table(self, **extra: Any) -> dict[str, Any]:
        return {
            "default": self.default.table(),
            "hosts": {name: ident.table() for name, ident in self.hosts.items()},
            **extra,
        }


def write_identity(ca: trustme.CA, directory: Path, stem: str, san: str) -> Identity:
    leaf = ca.issue_cert(san)
    cert, key = directory / f"{stem}.crt", directory / f"{stem}.key"
    cert.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    key.write_bytes(leaf.private_key_pem.bytes())
    return Identity(cert, key)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    directory = tmp_path_factory.mktemp("tls")
    ca = trustme.CA()
    client_ca = trustme.CA()
    client_ca.cert_pem.write_to_path(str(directory / "client-ca.pem"))
    return Certs(
        ca=ca,
        client_ca=client_ca,
        dir=directory,
        default=write_identity(ca, directory, "default", DEFAULT_NAME),
        hosts={
            HOST_NAME: write_identity(ca, directory, "one", HOST_NAME),
            WILDCARD: write_identity(ca, directory, "wildcard", WILDCARD),
        },
    )


# --- config and client helpers ----------------------------------------------------------------


def _toml_key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else json.dumps(key)


def toml_text(cfg: dict[str, Any]) -> str:
    """TOML for a nested dict of strings and numbers (JSON scalars are valid TOML here)."""
    lines: list[str] = []

    def emit(prefix: str, table: dict[str, Any]) -> None:
        scalars = {k: v for k, v in table.items() if not isinstance(v, dict)}
        tables = {k: v for k, v in table.items() if isinstance(v, dict)}
        if prefix and (scalars or not tables):
            lines.append(f"[{prefix}]")
        lines.extend(f"{_toml_key(k)} = {json.dumps(v)}" for k, v in scalars.items())
        for k, v in tables.items():
            emit(f"{prefix}.{_toml_key(k)}" if prefix else _toml_key(k), v)

    emit("", cfg)
    text = "\n".join(lines) + "\n"
    assert tomllib.loads(text) == cfg
    return text


def write_config(directory: Path, ssl_table: dict[str, Any], **extra: Any) -> Path:
    path = directory / "prefork.toml"
    path.write_text(toml_text({**extra, "ssl": ssl_table}))
    return path


def start_tls(start_server: StartServer, config: Path, *args: str) -> ServerProcess:
    server = start_server(APP, "-c", str(config), "-w", "2", *args)
    assert server.scheme == "https", server.log()
    return server


def client_context(certs: Certs, client_cert: trustme.CA | None = None) -> ssl.SSLContext:
    """Trusts the server CA; checks the chain but not the name (the tests inspect the cert)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    certs.ca.configure_trust(ctx)
    ctx.set_alpn_protocols(["http/1.1"])
    if client_cert is not None:
        client_cert.issue_cert("client@example.net").configure_cert(ctx)
    return ctx


class TLSConnection(http.client.HTTPSConnection):
    """An HTTPS connection to 127.0.0.1 that sends ``sni`` (or no SNI) in its handshake."""

    def __init__(self, port: int, context: ssl.SSLContext, sni: str | None) -> None:
        super().__init__("127.0.0.1", port, context=context, timeout=10)
        self.tls_context = context
        self.sni = sni

    def connect(self) -> None:
        http.client.HTTPConnection.connect(self)
        self.sock = self.tls_context.wrap_socket(self.sock, server_hostname=self.sni)

    @property
    def tls(self) -> ssl.SSLSocket:
        assert isinstance(self.sock, ssl.SSLSocket)
        return self.sock


def peer_san(sock: ssl.SSLSocket) -> str:
    cert = sock.getpeercert()
    assert cert
    names = [value for kind, value in cert["subjectAltName"] if kind == "DNS"]
    assert len(names) == 1
    return str(names[0])


def get(
    port: int,
    ctx: ssl.SSLContext,
    sni: str | None = None,
    path: str = "/",
    headers: dict[str, str] | None = None,
) -> tuple[http.client.HTTPResponse, bytes, str]:
    """One GET on a new connection: (response, body, SAN of the certificate served)."""
    conn = TLSConnection(port, ctx, sni)
    try:
        conn.connect()
        # Read the certificate now: http.client drops the socket after a
        # "Connection: close" response.
        san = peer_san(conn.tls)
        conn.request("GET", path, headers=headers or {})
        response = conn.getresponse()
        return response, response.read(), san
    finally:
        conn.close()


def read_until_closed(sock: socket.socket, timeout: float) -> tuple[bytes, bool]:
    """Everything the server sends until it closes: (bytes, closed within ``timeout``)."""
    sock.settimeout(timeout)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return b"".join(chunks), True
        except TimeoutError:
            break
        if not chunk:
            return b"".join(chunks), True
        chunks.append(chunk)
    return b"".join(chunks), False


def request_is_refused(port: int, ctx: ssl.SSLContext, sni: str | None = None) -> bool:
    """True when the handshake or the first exchange fails instead of giving a response.

    With TLS 1.3 a refused client certificate shows only after the client's
    handshake has finished, as an alert (or a close) on the first read.
    """
    try:
        get(port, ctx, sni)
    except (ssl.SSLError, ConnectionError, http.client.RemoteDisconnected):
        return True
    return False


# --- certificate selection --------------------------------------------------------------------


@pytest.fixture
def sni_server(start_server: StartServer, certs: Certs, tmp_path: Path) -> ServerProcess:
    return start_tls(start_server, write_config(tmp_path, certs.ssl_table()))


@pytest.mark.parametrize(
    ("sni", "served"),
    [
        (None, DEFAULT_NAME),
        (HOST_NAME, HOST_NAME),
        (HOST_NAME.upper(), HOST_NAME),
        ("a.example.com", WILDCARD),
        ("a.b.example.com", DEFAULT_NAME),
        ("example.com", DEFAULT_NAME),
        ("unknown.test", DEFAULT_NAME),
    ],
    ids=[
        "no-sni-default",
        "host",
        "host-other-case",
        "wildcard-one-label",
        "wildcard-not-two-labels",
        "wildcard-not-bare-parent",
        "unknown-name-default",
    ],
)
def test_certificate_chosen_by_sni_and_handler_sees_name(
    sni_server: ServerProcess, certs: Certs, sni: str | None, served: str
) -> None:
    response, body, san = get(sni_server.port, client_context(certs), sni, "/name")
    assert san == served
    assert response.status == 200
    assert json.loads(body) == {"server_name": sni.lower() if sni else None}


def test_alpn_negotiates_http11(sni_server: ServerProcess, certs: Certs) -> None:
    ctx = client_context(certs)
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    conn = TLSConnection(sni_server.port, ctx, HOST_NAME)
    try:
        conn.connect()
        assert conn.tls.selected_alpn_protocol() == "http/1.1"
    finally:
        conn.close()


# --- HTTP features over TLS -------------------------------------------------------------------


def test_keep_alive_reuses_the_tls_connection(sni_server: ServerProcess, certs: Certs) -> None:
    conn = TLSConnection(sni_server.port, client_context(certs), HOST_NAME)
    try:
        conn.connect()
        first_socket = conn.sock
        for _ in range(5):
            conn.request("GET", "/")
            response = conn.getresponse()
            assert response.status == 200
            assert response.read() == b"hello"
            assert not response.will_close
        assert conn.sock is first_socket
    finally:
        conn.close()


def test_chunked_response_over_tls(sni_server: ServerProcess, certs: Certs) -> None:
    response, body, _ = get(sni_server.port, client_context(certs), HOST_NAME, "/stream")
    assert response.status == 200
    assert response.getheader("transfer-encoding") == "chunked"
    assert body == b"".join(b"chunk %d\n" % i for i in range(STREAM_CHUNKS))


def test_gzip_response_over_tls(sni_server: ServerProcess, certs: Certs) -> None:
    response, body, _ = get(
        sni_server.port, client_context(certs), HOST_NAME, "/big", {"accept-encoding": "gzip"}
    )
    assert response.status == 200
    assert response.getheader("content-encoding") == "gzip"
    assert gzip.decompress(body) == b"x" * BIG_BODY_BYTES


# --- misbehaving clients ----------------------------------------------------------------------


def test_silent_client_is_closed_after_handshake_timeout(
    start_server: StartServer, certs: Certs, tmp_path: Path
) -> None:
    config = write_config(tmp_path, certs.ssl_table(), tls_handshake_timeout=1)
    server = start_tls(start_server, config)
    with server.connect() as sock:
        started = time.monotonic()
        _, closed = read_until_closed(sock, timeout=10)
        elapsed = time.monotonic() - started
    assert closed, "a client that never starts the handshake must be dropped"
    assert 0.8 <= elapsed < 5, f"closed after {elapsed:.2f}s, tls_handshake_timeout is 1s"
    assert get(server.port, client_context(certs))[0].status == 200
    assert "Traceback" not in server.log()


def test_plain_http_on_tls_port_is_closed_and_server_keeps_serving(
    sni_server: ServerProcess, certs: Certs
) -> None:
    with sni_server.connect() as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        data, closed = read_until_closed(sock, timeout=5)
    assert closed, "a plain-HTTP request on the TLS port must get the connection closed"
    assert not data.startswith(b"HTTP/1.1 200")
    assert get(sni_server.port, client_context(certs))[0].status == 200
    assert sni_server.proc.poll() is None
    assert "Traceback" not in sni_server.log()


def legacy_client(certs: Certs, version: ssl.TLSVersion) -> ssl.SSLContext:
    ctx = client_context(certs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx.minimum_version = version
        ctx.maximum_version = version
    # OpenSSL 3 needs security level 0 for the SHA-1/MD5 signatures of TLS < 1.2.
    ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    return ctx


def legacy_client_works(certs: Certs, version: ssl.TLSVersion) -> bool:
    """Control: can this OpenSSL complete a handshake at ``version`` at all (in memory)?"""
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        server_ctx.minimum_version = ssl.TLSVersion.TLSv1
    server_ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    server_ctx.load_cert_chain(certs.default.cert, certs.default.key)
    s_in, s_out, c_in, c_out = (ssl.MemoryBIO() for _ in range(4))
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    client = legacy_client(certs, version).wrap_bio(c_in, c_out)
    for _ in range(10):
        for side in (client, server):
            try:
                side.do_handshake()
            except ssl.SSLWantReadError:
                pass
            except ssl.SSLError:
                return False
            s_in.write(c_out.read())
            c_in.write(s_out.read())
    return client.version() == version.name.replace("_", ".")


@pytest.mark.parametrize(
    "version", [ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1], ids=["tls1.0", "tls1.1"]
)
def test_legacy_tls_versions_are_refused(
    sni_server: ServerProcess, certs: Certs, version: ssl.TLSVersion
) -> None:
    if not legacy_client_works(certs, version):
        pytest.skip(f"local OpenSSL cannot make a {version.name} client")
    with pytest.raises(ssl.SSLError):
        get(sni_server.port, legacy_client(certs, version))
    assert get(sni_server.port, client_context(certs))[0].status == 200
    assert "Traceback" not in sni_server.log()


# --- mutual TLS -------------------------------------------------------------------------------


def mtls_config(certs: Certs, directory: Path, verify: str) -> Path:
    table = certs.ssl_table(client_ca=str(certs.dir / "client-ca.pem"), verify_client=verify)
    return write_config(directory, table)


@pytest.mark.parametrize("sni", [None, HOST_NAME], ids=["default", "host"])
def test_mtls_required(
    start_server: StartServer, certs: Certs, tmp_path: Path, sni: str | None
) -> None:
    server = start_tls(start_server, mtls_config(certs, tmp_path, "required"))
    assert request_is_refused(server.port, client_context(certs), sni)
    assert request_is_refused(server.port, client_context(certs, client_cert=trustme.CA()), sni)
    response, _, _ = get(server.port, client_context(certs, client_cert=certs.client_ca), sni)
    assert response.status == 200
    assert "Traceback" not in server.log()


def test_mtls_optional(start_server: StartServer, certs: Certs, tmp_path: Path) -> None:
    server = start_tls(start_server, mtls_config(certs, tmp_path, "optional"))
    assert get(server.port, client_context(certs), HOST_NAME)[0].status == 200
    with_cert = client_context(certs, client_cert=certs.client_ca)
    assert get(server.port, with_cert, HOST_NAME)[0].status == 200
    assert request_is_refused(server.port, client_context(certs, client_cert=trustme.CA()))


# --- bad files at startup ---------------------------------------------------------------------


def _mismatched_key(certs: Certs, path: Path) -> None:
    shutil.copy(certs.hosts[WILDCARD].key, path)


def _encrypted_key(certs: Certs, path: Path) -> None:
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_private_key(certs.default.key.read_bytes(), None)
    encryption = serialization.BestAvailableEncryption(b"secret")
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)
    )


def _not_a_certificate(certs: Certs, path: Path) -> None:
    path.write_text("this is not a certificate\n")


@pytest.mark.parametrize(
    ("field_name", "make", "reason"),
    [
        ("cert", None, "file not found"),
        ("key", _mismatched_key, "key does not match certificate"),
        ("key", _encrypted_key, "key is encrypted"),
        ("cert", _not_a_certificate, "not a certificate"),
    ],
    ids=["missing-cert", "mismatched-key", "encrypted-key", "not-a-certificate"],
)
def test_bad_host_file_exits_with_one_line_naming_the_key(
    start_server: StartServer,
    certs: Certs,
    tmp_path: Path,
    field_name: str,
    make: Any,
    reason: str,
) -> None:
    bad = tmp_path / "bad.pem"
    if make is not None:
        make(certs, bad)
    table = certs.ssl_table()
    table["hosts"][HOST_NAME][field_name] = str(bad)
    server = start_server(APP, "-c", str(write_config(tmp_path, table)), wait=False)
    assert_exits_with_one_line(server, f"ssl.hosts.{HOST_NAME}.{field_name}: {bad}: ", reason)


def test_bad_certfile_flag_exits_naming_ssl_default(
    start_server: StartServer, certs: Certs, tmp_path: Path
) -> None:
    missing = tmp_path / "missing.crt"
    server = start_server(
        APP, "--certfile", str(missing), "--keyfile", str(certs.default.key), wait=False
    )
    assert_exits_with_one_line(server, f"ssl.default.cert: {missing}: ", "file not found")


def assert_exits_with_one_line(server: ServerProcess, prefix: str, reason: str) -> None:
    try:
        code = server.proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        pytest.fail(f"server did not exit on a bad TLS file:\n{server.log()}")
    server.stop()  # joins the stderr reader
    lines = [line for line in server.lines if line.strip()]
    assert code != 0
    assert len(lines) == 1, server.log()
    assert prefix in lines[0], lines[0]
    assert reason in lines[0], lines[0]


def test_certfile_and_keyfile_flags_serve_https(start_server: StartServer, certs: Certs) -> None:
    server = start_server(
        APP, "--certfile", str(certs.default.cert), "--keyfile", str(certs.default.key)
    )
    assert server.scheme == "https"
    response, body, san = get(server.port, client_context(certs), HOST_NAME)
    assert (response.status, body, san) == (200, b"hello", DEFAULT_NAME)


# --- rotation on SIGHUP -----------------------------------------------------------------------


@dataclass
class RequestLoop:
    """GETs on new connections from a thread until stopped, or ~5 s, or a few hundred requests."""

    port: int
    ctx: ssl.SSLContext
    max_requests: int = 400
    max_seconds: float = 5.0
    done: int = 0
    failures: list[str] = field(default_factory=list)
    sans: set[str] = field(default_factory=set)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> RequestLoop:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join(timeout=30)

    def _run(self) -> None:
        deadline = time.monotonic() + self.max_seconds
        while not self._stop.is_set() and time.monotonic() < deadline:
            if self.done >= self.max_requests:
                break
            try:
                response, body, san = get(self.port, self.ctx)
                if response.status != 200 or body != b"hello":
                    self.failures.append(f"status {response.status} body {body[:40]!r}")
                self.sans.add(san)
            except Exception as exc:  # any failure counts; the test lists them
                self.failures.append(repr(exc))
            self.done += 1


def worker_pids(server: ServerProcess) -> set[int]:
    return {child.pid for child in psutil.Process(server.pid).children()}


def replace_atomically(source: Identity, target: Identity) -> None:
    for src, dst in ((source.cert, target.cert), (source.key, target.key)):
        tmp = dst.with_suffix(".new")
        shutil.copy(src, tmp)
        os.replace(tmp, dst)


@pytest.fixture
def live_identity(certs: Certs, tmp_path: Path) -> Identity:
    live = Identity(tmp_path / "live.crt", tmp_path / "live.key")
    shutil.copy(certs.default.cert, live.cert)
    shutil.copy(certs.default.key, live.key)
    return live


def test_sighup_rotates_certificate_without_failed_requests(
    start_server: StartServer, certs: Certs, tmp_path: Path, live_identity: Identity
) -> None:
    table = certs.ssl_table()
    table["default"] = live_identity.table()
    server = start_tls(start_server, write_config(tmp_path, table))
    ctx = client_context(certs)
    assert get(server.port, ctx)[2] == DEFAULT_NAME
    rotated = write_identity(certs.ca, tmp_path, "rotated", ROTATED_NAME)

    old_workers = worker_pids(server)
    with RequestLoop(server.port, ctx) as loop:
        wait_until(lambda: loop.done >= 5, timeout=10)
        replace_atomically(rotated, live_identity)
        os.kill(server.pid, signal.SIGHUP)
        wait_until(lambda: not (worker_pids(server) & old_workers), timeout=20)

    assert loop.failures == [], f"{len(loop.failures)} of {loop.done}: {loop.failures[:5]}"
    assert loop.done > 0
    # Once the old generation is gone, every new connection gets the new certificate,
    # and hosts keep their own.
    for _ in range(5):
        assert get(server.port, ctx)[2] == ROTATED_NAME
    assert get(server.port, ctx, HOST_NAME)[2] == HOST_NAME


def test_sighup_with_bad_key_keeps_serving_old_certificate(
    start_server: StartServer, certs: Certs, tmp_path: Path, live_identity: Identity
) -> None:
    table = certs.ssl_table()
    table["default"] = live_identity.table()
    server = start_tls(start_server, write_config(tmp_path, table))
    ctx = client_context(certs)
    live_identity.key.write_text("not a key\n")
    os.kill(server.pid, signal.SIGHUP)
    server.wait_log(r"ssl\.default\.key: .*live\.key: not a private key", timeout=15)
    response, _, san = get(server.port, ctx)
    assert (response.status, san) == (200, DEFAULT_NAME)
    assert server.proc.poll() is None
