"""prefork.tls: contexts per identity, SNI selection, file checks, versions, mTLS.

Handshakes run in memory (``ssl.MemoryBIO`` pairs); certificates come from trustme.
"""

from __future__ import annotations

import datetime
import os
import shutil
import ssl
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from prefork import tls
from prefork.config import Config
from prefork.errors import ConfigError, TLSError

HANDSHAKE_ROUNDS = 20

DEFAULT_NAME = "default.example.org"
HOST_NAMES = {
    "one.example.net": "one.example.net",
    "Two.Example.Org": "two.example.org",  # the config key's case must not matter
    "*.example.com": "*.example.com",
    "exact.example.com": "exact.example.com",
    "xn--bcher-kva.example": "xn--bcher-kva.example",
}


@dataclass
class Identity:
    cert: Path
    key: Path
    san: str


@dataclass
class Files:
    ca: trustme.CA
    default: Identity
    hosts: dict[str, Identity]
    dir: Path

    def config(self, **extra: Any) -> dict[str, Any]:
        return {
            "default": {"cert": str(self.default.cert), "key": str(self.default.key)},
            "hosts": {
                name: {"cert": str(ident.cert), "key": str(ident.key)}
                for name, ident in self.hosts.items()
            },
            **extra,
        }


def write_identity(ca: trustme.CA, directory: Path, stem: str, san: str) -> Identity:
    leaf = ca.issue_cert(san)
    cert, key = directory / f"{stem}.crt", directory / f"{stem}.key"
    cert.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    key.write_bytes(leaf.private_key_pem.bytes())
    return Identity(cert, key, san)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Files:
    directory = tmp_path_factory.mktemp("certs")
    ca = trustme.CA()
    default = write_identity(ca, directory, "default", DEFAULT_NAME)
    hosts = {
        name: write_identity(ca, directory, f"host{i}", san)
        for i, (name, san) in enumerate(HOST_NAMES.items())
    }
    ca.cert_pem.write_to_path(str(directory / "ca.pem"))
    return Files(ca, default, hosts, directory)


@pytest.fixture(scope="module")
def server_ctx(files: Files) -> ssl.SSLContext:
    ctx = tls.load_tls(files.config())
    assert ctx is not None
    return ctx


def client_context(ca: trustme.CA, **settings: Any) -> ssl.SSLContext:
    """A client that trusts ``ca`` and does not check the host name (we inspect the cert)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ca.configure_trust(ctx)
    for name, value in settings.items():
        setattr(ctx, name, value)
    return ctx


def handshake(
    server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext, server_hostname: str | None = None
) -> tuple[ssl.SSLObject, ssl.SSLObject]:
    """Drive a server/client handshake over memory BIOs; SSLError propagates from either side."""
    s_in, s_out, c_in, c_out = (ssl.MemoryBIO() for _ in range(4))
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    client = client_ctx.wrap_bio(c_in, c_out, server_hostname=server_hostname)
    server_done = client_done = False
    for _ in range(HANDSHAKE_ROUNDS):
        if not client_done:
            try:
                client.do_handshake()
                client_done = True
            except ssl.SSLWantReadError:
                pass
        s_in.write(c_out.read())
        if not server_done:
            try:
                server.do_handshake()
                server_done = True
            except ssl.SSLWantReadError:
                pass
        c_in.write(s_out.read())
        if client_done and server_done:
            return server, client
    raise AssertionError("handshake did not finish")


def peer_san(client: ssl.SSLObject) -> str:
    cert = client.getpeercert()
    assert cert
    names = [value for kind, value in cert["subjectAltName"] if kind == "DNS"]
    assert len(names) == 1
    return str(names[0])


# --- defaults ---------------------------------------------------------------------------------


def test_no_ssl_table_gives_no_context() -> None:
    assert tls.load_tls(None) is None


def test_context_has_safe_defaults(server_ctx: ssl.SSLContext) -> None:
    assert server_ctx.minimum_version == ssl.TLSVersion.TLSv1_2
    assert server_ctx.options & ssl.OP_NO_COMPRESSION
    assert server_ctx.options & ssl.OP_NO_RENEGOTIATION
    assert server_ctx.options & ssl.OP_CIPHER_SERVER_PREFERENCE
    assert server_ctx.verify_mode == ssl.CERT_NONE


def test_tls12_suites_are_forward_secret_aead_only(server_ctx: ssl.SSLContext) -> None:
    tls12 = [c for c in server_ctx.get_ciphers() if c["protocol"] == "TLSv1.2"]
    assert tls12
    for cipher in tls12:
        assert cipher["aead"], cipher["name"]
        assert cipher["kea"] == "kx-ecdhe", cipher["name"]


@pytest.mark.parametrize("sni", [None, "one.example.net"], ids=["default", "host"])
def test_alpn_selects_http11(files: Files, server_ctx: ssl.SSLContext, sni: str | None) -> None:
    client_ctx = client_context(files.ca)
    client_ctx.set_alpn_protocols(["h2", "http/1.1"])
    server, client = handshake(server_ctx, client_ctx, sni)
    assert client.selected_alpn_protocol() == "http/1.1"
    assert server.selected_alpn_protocol() == "http/1.1"


def test_config_build_output_loads(files: Files) -> None:
    cfg = Config.build({"ssl": files.config()})
    ctx = tls.load_tls(cfg.ssl)
    assert ctx is not None
    _, client = handshake(ctx, client_context(files.ca), "one.example.net")
    assert peer_san(client) == "one.example.net"


# --- SNI --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sent", "served"),
    [
        ("one.example.net", "one.example.net"),
        ("ONE.Example.NET", "one.example.net"),
        ("two.example.org", "two.example.org"),
        ("a.example.com", "*.example.com"),
        ("A.EXAMPLE.COM", "*.example.com"),
        ("exact.example.com", "exact.example.com"),
        ("xn--bcher-kva.example", "xn--bcher-kva.example"),
        ("a.b.example.com", DEFAULT_NAME),
        ("example.com", DEFAULT_NAME),
        ("unknown.test", DEFAULT_NAME),
        ("one.example.net.evil.test", DEFAULT_NAME),
        (None, DEFAULT_NAME),
    ],
    ids=[
        "exact",
        "exact-other-case",
        "config-key-case-ignored",
        "wildcard-one-label",
        "wildcard-other-case",
        "exact-beats-wildcard",
        "idn-a-label",
        "wildcard-not-two-labels",
        "wildcard-not-bare-parent",
        "unknown-name",
        "suffix-is-not-a-match",
        "no-sni",
    ],
)
def test_sni_selects_certificate(
    files: Files, server_ctx: ssl.SSLContext, sent: str | None, served: str
) -> None:
    server, client = handshake(server_ctx, client_context(files.ca), sent)
    assert peer_san(client) == served
    assert tls.server_name_of(server) == (sent.lower() if sent else None)


def test_server_name_of_plain_connection_is_none() -> None:
    assert tls.server_name_of(None) is None
    assert tls.server_name_of(object()) is None


def test_default_context_is_not_replaced_by_host_selection(
    files: Files, server_ctx: ssl.SSLContext
) -> None:
    handshake(server_ctx, client_context(files.ca), "one.example.net")
    _, client = handshake(server_ctx, client_context(files.ca), None)
    assert peer_san(client) == DEFAULT_NAME


def test_built_context_keeps_old_certificate_after_files_change(
    files: Files, tmp_path: Path
) -> None:
    cert, key = tmp_path / "d.crt", tmp_path / "d.key"
    shutil.copy(files.default.cert, cert)
    shutil.copy(files.default.key, key)
    old = tls.load_tls({"default": {"cert": str(cert), "key": str(key)}})
    assert old is not None
    write_identity(files.ca, tmp_path, "d", "rotated.example.org")
    new = tls.load_tls({"default": {"cert": str(cert), "key": str(key)}})
    assert new is not None
    assert peer_san(handshake(old, client_context(files.ca))[1]) == DEFAULT_NAME
    assert peer_san(handshake(new, client_context(files.ca))[1]) == "rotated.example.org"


# --- protocol versions ------------------------------------------------------------------------


def legacy_client(ca: trustme.CA, version: ssl.TLSVersion) -> ssl.SSLContext:
    ctx = client_context(ca)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx.minimum_version = version
        ctx.maximum_version = version
    # OpenSSL 3 needs security level 0 for the SHA-1/MD5 signatures of TLS < 1.2.
    ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    return ctx


def permissive_server(files: Files) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx.minimum_version = ssl.TLSVersion.TLSv1
    ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    ctx.load_cert_chain(files.default.cert, files.default.key)
    return ctx


@pytest.mark.parametrize(
    "version",
    [ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1],
    ids=["tls1.0", "tls1.1"],
)
def test_legacy_tls_client_is_refused(
    files: Files, server_ctx: ssl.SSLContext, version: ssl.TLSVersion
) -> None:
    client = legacy_client(files.ca, version)
    # Control: this OpenSSL must be able to speak the old version at all, or the
    # refusal below would prove nothing.
    try:
        _, control = handshake(permissive_server(files), client)
    except ssl.SSLError as exc:
        pytest.skip(f"local OpenSSL cannot make a {version.name} client: {exc}")
    assert control.version() == version.name.replace("_", ".")
    with pytest.raises(ssl.SSLError):
        handshake(server_ctx, legacy_client(files.ca, version))


def test_min_version_tls13_refuses_tls12(files: Files) -> None:
    ctx = tls.load_tls(files.config(min_version="TLSv1.3"))
    assert ctx is not None
    with pytest.raises(ssl.SSLError):
        handshake(ctx, client_context(files.ca, maximum_version=ssl.TLSVersion.TLSv1_2))
    _, client = handshake(ctx, client_context(files.ca), "one.example.net")
    assert client.version() == "TLSv1.3"
    assert peer_san(client) == "one.example.net"


def test_tls12_client_is_served_by_default(files: Files, server_ctx: ssl.SSLContext) -> None:
    client_ctx = client_context(files.ca, maximum_version=ssl.TLSVersion.TLSv1_2)
    _, client = handshake(server_ctx, client_ctx, "a.example.com")
    assert client.version() == "TLSv1.2"
    assert peer_san(client) == "*.example.com"


def test_custom_ciphers_apply_to_tls12(files: Files) -> None:
    ctx = tls.load_tls(files.config(ciphers="ECDHE+CHACHA20"))
    assert ctx is not None
    client_ctx = client_context(files.ca, maximum_version=ssl.TLSVersion.TLSv1_2)
    _, client = handshake(ctx, client_ctx, "one.example.net")
    cipher = client.cipher()
    assert cipher is not None
    assert "CHACHA20" in cipher[0]


# --- client certificates (mTLS) ---------------------------------------------------------------


def mtls_config(files: Files, verify: str, **extra: Any) -> dict[str, Any]:
    return files.config(client_ca=str(files.dir / "ca.pem"), verify_client=verify, **extra)


def with_client_cert(ctx: ssl.SSLContext, ca: trustme.CA) -> ssl.SSLContext:
    ca.issue_cert("client@example.net").configure_cert(ctx)
    return ctx


@pytest.mark.parametrize("sni", [None, "one.example.net"], ids=["default", "host"])
def test_mtls_required_refuses_client_without_certificate(files: Files, sni: str | None) -> None:
    ctx = tls.load_tls(mtls_config(files, "required"))
    assert ctx is not None
    with pytest.raises(ssl.SSLError, match=r"PEER_DID_NOT_RETURN_A_CERTIFICATE"):
        handshake(ctx, client_context(files.ca), sni)


@pytest.mark.parametrize("sni", [None, "one.example.net"], ids=["default", "host"])
def test_mtls_required_accepts_certificate_from_ca(files: Files, sni: str | None) -> None:
    ctx = tls.load_tls(mtls_config(files, "required"))
    assert ctx is not None
    server, _ = handshake(ctx, with_client_cert(client_context(files.ca), files.ca), sni)
    peer = server.getpeercert()
    assert peer
    assert ("email", "client@example.net") in peer["subjectAltName"]


@pytest.mark.parametrize("verify", ["required", "optional"])
def test_mtls_refuses_certificate_from_another_ca(files: Files, verify: str) -> None:
    ctx = tls.load_tls(mtls_config(files, verify))
    assert ctx is not None
    stranger = with_client_cert(client_context(files.ca), trustme.CA())
    with pytest.raises(ssl.SSLError):
        handshake(ctx, stranger)


def test_mtls_optional_accepts_client_without_certificate(files: Files) -> None:
    ctx = tls.load_tls(mtls_config(files, "optional"))
    assert ctx is not None
    server, _ = handshake(ctx, client_context(files.ca), "one.example.net")
    assert not server.getpeercert()


def test_mtls_optional_accepts_certificate_from_ca(files: Files) -> None:
    ctx = tls.load_tls(mtls_config(files, "optional"))
    assert ctx is not None
    server, _ = handshake(ctx, with_client_cert(client_context(files.ca), files.ca))
    assert server.getpeercert()


# --- bad values -------------------------------------------------------------------------------


def _set(path: tuple[str, ...], value: Any) -> Callable[[dict[str, Any]], None]:
    def apply(cfg: dict[str, Any]) -> None:
        node = cfg
        for part in path[:-1]:
            node = node[part]
        node[path[-1]] = value

    return apply


def _drop(path: tuple[str, ...]) -> Callable[[dict[str, Any]], None]:
    def apply(cfg: dict[str, Any]) -> None:
        node = cfg
        for part in path[:-1]:
            node = node[part]
        del node[path[-1]]

    return apply


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (_set(("foo",), 1), "ssl.foo: unknown key"),
        (_drop(("default",)), "ssl.default: required"),
        (_set(("default",), "cert.pem"), "ssl.default: expected a table"),
        (_set(("default", "crt"), "x"), "ssl.default.crt: unknown key"),
        (
            _set(("hosts", "one.example.net", "crt"), "x"),
            "ssl.hosts.one.example.net.crt: unknown key",
        ),
        (_drop(("hosts", "one.example.net", "key")), "ssl.hosts.one.example.net.key: required"),
        (_set(("default", "cert"), 5), "ssl.default.cert: expected a file path"),
        (_set(("default", "key"), ""), "ssl.default.key: empty path"),
        (_set(("hosts",), ["a"]), "ssl.hosts: expected a table"),
        (_set(("hosts", "bad name!"), {}), "ssl.hosts.bad name!: not a valid host name"),
        (
            _set(("hosts", "a.*.example.com"), {}),
            "ssl.hosts.a.*.example.com: not a valid host name",
        ),
        (_set(("hosts", "ONE.example.net"), {}), "ssl.hosts.ONE.example.net: the same host name"),
        (_set(("min_version",), "TLSv1.1"), "ssl.min_version: must be one of TLSv1.2, TLSv1.3"),
        (_set(("min_version",), ["TLSv1.2"]), "ssl.min_version: must be one of"),
        (_set(("ciphers",), "NO-SUCH-CIPHER"), "ssl.ciphers: no cipher matches 'NO-SUCH-CIPHER'"),
        (_set(("ciphers",), ""), "ssl.ciphers: expected an OpenSSL cipher string"),
        (_set(("verify_client",), "sometimes"), "ssl.verify_client: must be one of none, optional"),
        (_set(("verify_client",), "required"), "ssl.verify_client: 'required' needs ssl.client_ca"),
        (_set(("verify_client",), "optional"), "ssl.verify_client: 'optional' needs ssl.client_ca"),
        (_set(("client_ca",), "ca.pem"), "ssl.client_ca: set, but ssl.verify_client is 'none'"),
    ],
    ids=[
        "unknown-top-key",
        "no-default",
        "default-not-table",
        "unknown-default-key",
        "unknown-host-key",
        "missing-host-key",
        "path-not-string",
        "empty-path",
        "hosts-not-table",
        "bad-host-name",
        "wildcard-not-leftmost",
        "duplicate-host-other-case",
        "min-version-too-old",
        "min-version-not-string",
        "ciphers-match-nothing",
        "ciphers-empty",
        "verify-client-unknown",
        "required-without-ca",
        "optional-without-ca",
        "ca-without-verification",
    ],
)
def test_bad_value_names_the_key(
    files: Files, change: Callable[[dict[str, Any]], None], message: str
) -> None:
    cfg = files.config()
    change(cfg)
    with pytest.raises(TLSError) as info:
        tls.load_tls(cfg)
    assert str(info.value).startswith(message)


def test_tls_error_is_a_config_error() -> None:
    assert issubclass(TLSError, ConfigError)


# --- bad files --------------------------------------------------------------------------------


def _der_certificate(files: Files, path: Path) -> None:
    pem = files.default.cert.read_text()
    first = pem[: pem.index("-----END CERTIFICATE-----") + len("-----END CERTIFICATE-----")]
    path.write_bytes(ssl.PEM_cert_to_DER_cert(first))


def _corrupt_certificate(files: Files, path: Path) -> None:
    path.write_text(
        "-----BEGIN CERTIFICATE-----\nMIIBbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n"
    )


def _encrypted_key(fmt: serialization.PrivateFormat) -> Callable[[Files, Path], None]:
    def write(files: Files, path: Path) -> None:
        key = serialization.load_pem_private_key(files.default.key.read_bytes(), None)
        encryption = serialization.BestAvailableEncryption(b"secret")
        path.write_bytes(key.private_bytes(serialization.Encoding.PEM, fmt, encryption))

    return write


def _weak_certificate(files: Files, path: Path) -> None:
    """A self-signed certificate with a 1024-bit RSA key (below OpenSSL's security level 2)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "weak.example")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    path.with_suffix(".weakkey").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


def _write(data: bytes) -> Callable[[Files, Path], None]:
    def write(files: Files, path: Path) -> None:
        path.write_bytes(data)

    return write


def _copy_of(attr: str) -> Callable[[Files, Path], None]:
    def write(files: Files, path: Path) -> None:
        shutil.copy(getattr(files.hosts["one.example.net"], attr), path)

    return write


# (config key, how to make the file at that key's path, expected reason)
BAD_FILES: list[tuple[tuple[str, ...], Callable[[Files, Path], None] | None, str]] = [
    (("default", "cert"), None, "file not found"),
    (("hosts", "one.example.net", "key"), None, "file not found"),
    (("default", "cert"), lambda f, p: p.mkdir(), "is a directory"),
    (("default", "key"), lambda f, p: os.mkfifo(p), "not a regular file"),
    (("default", "cert"), _write(b""), "file is empty"),
    (("default", "cert"), _write(b"hello\n"), "not a certificate: no PEM certificate found"),
    (("default", "cert"), _copy_of("key"), "not a certificate: it holds a private key"),
    (("default", "cert"), _der_certificate, "not a certificate: it looks like DER"),
    (("default", "cert"), _corrupt_certificate, "not a certificate: corrupt or truncated"),
    (("default", "cert"), _weak_certificate, "certificate refused by OpenSSL's security level"),
    (("hosts", "*.example.com", "key"), _write(b"hello\n"), "not a private key: no PEM private"),
    (("default", "key"), _copy_of("cert"), "not a private key: it holds a certificate"),
    (("default", "key"), _copy_of("key"), "key does not match certificate"),
    (
        ("hosts", "one.example.net", "key"),
        _encrypted_key(serialization.PrivateFormat.PKCS8),
        "key is encrypted (passphrases are not supported)",
    ),
    (
        ("default", "key"),
        _encrypted_key(serialization.PrivateFormat.TraditionalOpenSSL),
        "key is encrypted (passphrases are not supported)",
    ),
    (
        ("default", "key"),
        _write(b"-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----\n"),
        "not a usable private key",
    ),
]


@pytest.mark.parametrize(
    ("path", "make", "reason"),
    BAD_FILES,
    ids=[
        "cert-missing",
        "host-key-missing",
        "cert-is-directory",
        "key-is-fifo",
        "cert-empty",
        "cert-garbage",
        "cert-is-a-key",
        "cert-is-der",
        "cert-corrupt-pem",
        "cert-too-weak",
        "wildcard-key-garbage",
        "key-is-a-cert",
        "key-mismatch",
        "key-encrypted-pkcs8",
        "key-encrypted-traditional",
        "key-corrupt-pem",
    ],
)
def test_bad_file_names_key_and_path(
    files: Files,
    tmp_path: Path,
    path: tuple[str, ...],
    make: Callable[[Files, Path], None] | None,
    reason: str,
) -> None:
    cfg = files.config()
    bad = tmp_path / "bad.pem"
    if make is not None:
        make(files, bad)
    _set(path, str(bad))(cfg)
    if make is _weak_certificate:
        # Give the weak certificate its own key, so only the key size is wrong.
        _set((*path[:-1], "key"), str(bad.with_suffix(".weakkey")))(cfg)
    with pytest.raises(TLSError) as info:
        tls.load_tls(cfg)
    key = "ssl." + ".".join(path)
    assert str(info.value).startswith(f"{key}: {bad}: ")
    assert reason in str(info.value)


@pytest.mark.skipif(os.geteuid() == 0, reason="root can read a mode-000 file")
def test_unreadable_file_names_key_and_path(files: Files, tmp_path: Path) -> None:
    key = tmp_path / "locked.key"
    shutil.copy(files.default.key, key)
    key.chmod(0)
    with pytest.raises(TLSError, match=r"^ssl\.default\.key: .*locked\.key: permission denied"):
        tls.load_tls(files.config(default={"cert": str(files.default.cert), "key": str(key)}))


def test_read_permission_error_names_key_and_path(
    files: Files, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tls, "open", refuse, raising=False)
    with pytest.raises(TLSError) as info:
        tls.load_tls(files.config())
    assert str(info.value) == f"ssl.default.cert: {files.default.cert}: permission denied"


def test_encrypted_key_is_caught_by_the_passphrase_callback_too(
    files: Files, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # If the PEM text check ever missed an encrypted form, OpenSSL asks for a
    # passphrase; that request must become the same clear message.
    key = tmp_path / "enc.key"
    _encrypted_key(serialization.PrivateFormat.PKCS8)(files, key)
    monkeypatch.setattr(tls, "_check_key_pem", lambda *args: None)
    with pytest.raises(TLSError) as info:
        tls.load_tls(files.config(default={"cert": str(files.default.cert), "key": str(key)}))
    assert str(info.value) == (
        f"ssl.default.key: {key}: key is encrypted (passphrases are not supported)"
    )


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (None, "file not found"),
        (_write(b"hello\n"), "not a certificate: no PEM certificate found"),
        (_copy_of("key"), "not a certificate: it holds a private key"),
    ],
    ids=["missing", "garbage", "a-key"],
)
def test_bad_client_ca_names_key_and_path(
    files: Files, tmp_path: Path, make: Callable[[Files, Path], None] | None, reason: str
) -> None:
    bad = tmp_path / "ca.pem"
    if make is not None:
        make(files, bad)
    with pytest.raises(TLSError) as info:
        tls.load_tls(files.config(client_ca=str(bad), verify_client="required"))
    assert str(info.value).startswith(f"ssl.client_ca: {bad}: {reason}")


def test_certificate_chain_with_key_in_same_file_loads(files: Files, tmp_path: Path) -> None:
    combined = tmp_path / "combined.pem"
    combined.write_bytes(files.default.key.read_bytes() + files.default.cert.read_bytes())
    ctx = tls.load_tls({"default": {"cert": str(combined), "key": str(combined)}})
    assert ctx is not None
    assert peer_san(handshake(ctx, client_context(files.ca))[1]) == DEFAULT_NAME


def test_pathlike_paths_are_accepted(files: Files) -> None:
    ctx = tls.load_tls({"default": {"cert": files.default.cert, "key": files.default.key}})
    assert ctx is not None


def test_unicode_host_key_matches_its_a_label(files: Files) -> None:
    ident = files.hosts["xn--bcher-kva.example"]
    ctx = tls.load_tls(
        {
            "default": {"cert": str(files.default.cert), "key": str(files.default.key)},
            "hosts": {"bücher.example": {"cert": str(ident.cert), "key": str(ident.key)}},
        }
    )
    assert ctx is not None
    server, client = handshake(ctx, client_context(files.ca), "bücher.example")
    assert peer_san(client) == "xn--bcher-kva.example"
    assert tls.server_name_of(server) == "xn--bcher-kva.example"
