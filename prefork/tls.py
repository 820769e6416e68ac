"""TLS: one SSLContext per identity, the SNI callback, load errors -> TLSError.

The master calls :func:`load_tls` before forking (and again on SIGHUP); the
workers hand the returned context to ``loop.connect_accepted_socket``. The
returned context serves ``ssl.default``; its SNI callback switches the
connection to the context of the host the client named (exact name first,
then a ``*.example.com`` wildcard covering exactly one label) and records the
name, which :func:`server_name_of` reads back after the handshake.

Every file is checked here, in the master, so a bad certificate fails
``new()``, ``configure()`` or a reload with a message naming the config key
and the path, instead of a worker failing handshakes later.
"""

from __future__ import annotations

import dataclasses
import os
import re
import ssl
import stat
from collections.abc import Callable, Mapping
from typing import Any

from prefork.errors import TLSError

MIN_VERSIONS: Mapping[str, ssl.TLSVersion] = {
    "TLSv1.2": ssl.TLSVersion.TLSv1_2,
    "TLSv1.3": ssl.TLSVersion.TLSv1_3,
}
VERIFY_MODES: Mapping[str, ssl.VerifyMode] = {
    "none": ssl.CERT_NONE,
    "optional": ssl.CERT_OPTIONAL,
    "required": ssl.CERT_REQUIRED,
}
DEFAULT_MIN_VERSION = "TLSv1.2"
DEFAULT_VERIFY_CLIENT = "none"
# TLS 1.2 suites: forward secrecy and AEAD only (ECDHE with AES-GCM or
# ChaCha20-Poly1305, for RSA and ECDSA certificates). TLS 1.3 suites are
# OpenSSL's own and are not affected by this string.
DEFAULT_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:!aNULL:!eNULL"
ALPN_PROTOCOLS = ("http/1.1",)
# No TLS compression (CRIME), no client-initiated renegotiation (a cheap way
# to make the server do expensive handshakes), the server's cipher order.
CONTEXT_OPTIONS = ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION | ssl.OP_CIPHER_SERVER_PREFERENCE

SSL_KEYS = frozenset({"default", "hosts", "min_version", "ciphers", "client_ca", "verify_client"})
IDENTITY_KEYS = ("cert", "key")

# Set on the SSLObject by the SNI callback; read by server_name_of().
_SERVER_NAME_ATTR = "_prefork_server_name"

_PEM_CERT_RE = re.compile(
    rb"-----BEGIN (?:X509 )?CERTIFICATE-----.+?-----END (?:X509 )?CERTIFICATE-----", re.DOTALL
)
_PEM_KEY_RE = re.compile(rb"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----")
_PEM_ENCRYPTED_RE = re.compile(rb"-----BEGIN ENCRYPTED PRIVATE KEY-----|Proc-Type: *4, *ENCRYPTED")
_LABEL = r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?"
_HOST_RE = re.compile(rf"(?:\*\.)?(?:{_LABEL}\.)*{_LABEL}")
# OpenSSL refuses these certificates at its security level; the fault is the
# certificate's, not the key file's.
_CERT_REASONS = frozenset({"EE_KEY_TOO_SMALL", "CA_KEY_TOO_SMALL", "CA_MD_TOO_WEAK"})


@dataclasses.dataclass(frozen=True, slots=True)
class _Settings:
    """The ssl sub-options shared by every identity's context."""

    min_version: ssl.TLSVersion
    ciphers: str
    verify_mode: ssl.VerifyMode
    client_ca: str | None


class _PassphraseRequested(Exception):
    """Raised by the password callback: the key file is encrypted."""


def load_tls(ssl_cfg: Mapping[str, Any] | None) -> ssl.SSLContext | None:
    """Validate the ``ssl`` table and build one server context per identity.

    Args:
        ssl_cfg: the ``ssl`` config value (``None`` when TLS is off).

    Returns:
        ``None`` for ``None``; otherwise the context of ``ssl.default``, whose
        SNI callback switches to a host's context when the client names it.

    Raises:
        TLSError: a bad key or value, or a file that is missing, unreadable, not
            a PEM certificate or key, encrypted, or a key that does not match
            its certificate; the message starts with the config key.
    """
    if ssl_cfg is None:
        return None
    if not isinstance(ssl_cfg, Mapping):
        raise TLSError(f"ssl: expected a table, got {ssl_cfg!r}")
    for key in ssl_cfg:
        if key not in SSL_KEYS:
            raise TLSError(f"ssl.{key}: unknown key")
    settings = _check_settings(ssl_cfg)
    if "default" not in ssl_cfg:
        raise TLSError("ssl.default: required (the certificate used when no host name matches)")
    hosts = ssl_cfg.get("hosts") or {}
    if not isinstance(hosts, Mapping):
        raise TLSError(f"ssl.hosts: expected a table of host names, got {hosts!r}")

    default = _build_context("ssl.default", ssl_cfg["default"], settings)
    exact: dict[str, ssl.SSLContext] = {}
    wildcard: dict[str, ssl.SSLContext] = {}
    seen: dict[str, str] = {}
    for name, identity in hosts.items():
        host = _check_host_name(name)
        if host in seen:
            raise TLSError(f"ssl.hosts.{name}: the same host name as ssl.hosts.{seen[host]}")
        seen[host] = name
        ctx = _build_context(f"ssl.hosts.{name}", identity, settings)
        if host.startswith("*."):
            wildcard[host[2:]] = ctx
        else:
            exact[host] = ctx
    default.sni_callback = _make_sni_callback(exact, wildcard)
    return default


def server_name_of(ssl_object: object | None) -> str | None:
    """The SNI name (lower-case) the client sent in its handshake, or ``None``.

    ``ssl_object`` is the connection's ``ssl.SSLObject`` (or ``SSLSocket``);
    ``None`` (plain TCP), no SNI, or an object not made from a context of
    :func:`load_tls` all give ``None``.
    """
    name = getattr(ssl_object, _SERVER_NAME_ATTR, None)
    return name if isinstance(name, str) else None


def _make_sni_callback(
    exact: Mapping[str, ssl.SSLContext], wildcard: Mapping[str, ssl.SSLContext]
) -> Callable[[Any, str | None, ssl.SSLContext], None]:
    """The callback picking a context by name; it must never raise (that aborts the handshake)."""

    def select(ssl_object: Any, server_name: str | None, _ctx: ssl.SSLContext) -> None:
        if not server_name:
            setattr(ssl_object, _SERVER_NAME_ATTR, None)
            return
        # RFC 6066 §3: the name carries no trailing dot; DNS names are case-insensitive.
        name = server_name.lower().rstrip(".")
        setattr(ssl_object, _SERVER_NAME_ATTR, name)
        ctx = exact.get(name)
        if ctx is None:
            # RFC 6125 §6.4.3: "*" covers exactly one whole, non-empty label.
            label, dot, parent = name.partition(".")
            if label and dot:
                ctx = wildcard.get(parent)
        if ctx is not None:
            ssl_object.context = ctx

    return select


def _check_settings(ssl_cfg: Mapping[str, Any]) -> _Settings:
    min_name = ssl_cfg.get("min_version", DEFAULT_MIN_VERSION)
    if not isinstance(min_name, str) or min_name not in MIN_VERSIONS:
        raise TLSError(
            f"ssl.min_version: must be one of {', '.join(MIN_VERSIONS)}; got {min_name!r}"
        )

    ciphers = ssl_cfg.get("ciphers", DEFAULT_CIPHERS)
    if not isinstance(ciphers, str) or not ciphers.strip():
        raise TLSError(f"ssl.ciphers: expected an OpenSSL cipher string, got {ciphers!r}")
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).set_ciphers(ciphers)
    except ssl.SSLError:
        raise TLSError(f"ssl.ciphers: no cipher matches {ciphers!r}") from None

    verify_name = ssl_cfg.get("verify_client", DEFAULT_VERIFY_CLIENT)
    if not isinstance(verify_name, str) or verify_name not in VERIFY_MODES:
        raise TLSError(
            f"ssl.verify_client: must be one of {', '.join(VERIFY_MODES)}; got {verify_name!r}"
        )

    client_ca = ssl_cfg.get("client_ca")
    if client_ca is None:
        if verify_name != "none":
            raise TLSError(
                f"ssl.verify_client: {verify_name!r} needs ssl.client_ca "
                "(the CA file that signs client certificates)"
            )
    else:
        # Fail closed: a CA file with verification off would look like mTLS but not be.
        if verify_name == "none":
            raise TLSError(
                "ssl.client_ca: set, but ssl.verify_client is 'none'; "
                "set verify_client to 'optional' or 'required'"
            )
        client_ca = _check_path("ssl.client_ca", client_ca)
        _check_cert_pem("ssl.client_ca", client_ca, _read_file("ssl.client_ca", client_ca))

    return _Settings(
        min_version=MIN_VERSIONS[min_name],
        ciphers=ciphers,
        verify_mode=VERIFY_MODES[verify_name],
        client_ca=client_ca,
    )


def _check_host_name(name: object) -> str:
    """The normalised (lower-case, ASCII) form of a ``ssl.hosts`` key."""
    if not isinstance(name, str):
        raise TLSError(f"ssl.hosts.{name!r}: expected a host name string")
    host = name.strip().lower().rstrip(".")
    if not host.isascii():
        # Clients send internationalised names as A-labels ("xn--...").
        try:
            host = host.encode("idna").decode("ascii")
        except UnicodeError:
            raise TLSError(f"ssl.hosts.{name}: not a valid host name") from None
    if len(host) > 253 or not _HOST_RE.fullmatch(host):
        raise TLSError(
            f"ssl.hosts.{name}: not a valid host name "
            "(use an exact name like example.com or a wildcard like *.example.com)"
        )
    return host


def _build_context(key: str, identity: object, settings: _Settings) -> ssl.SSLContext:
    """Check one ``{cert, key}`` table and its files; return its configured context."""
    if not isinstance(identity, Mapping):
        raise TLSError(f"{key}: expected a table with cert and key, got {identity!r}")
    for sub in identity:
        if sub not in IDENTITY_KEYS:
            raise TLSError(f"{key}.{sub}: unknown key")
    for sub in IDENTITY_KEYS:
        if sub not in identity:
            raise TLSError(f"{key}.{sub}: required")
    cert_key, key_key = f"{key}.cert", f"{key}.key"
    cert_path = _check_path(cert_key, identity["cert"])
    key_path = _check_path(key_key, identity["key"])
    _check_cert_pem(cert_key, cert_path, _read_file(cert_key, cert_path))
    _check_key_pem(key_key, key_path, _read_file(key_key, key_path))

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = settings.min_version
    ctx.options |= CONTEXT_OPTIONS
    ctx.set_ciphers(settings.ciphers)
    ctx.set_alpn_protocols(list(ALPN_PROTOCOLS))
    try:
        ctx.load_cert_chain(cert_path, key_path, password=_refuse_passphrase)
    except _PassphraseRequested:
        raise TLSError(
            f"{key_key}: {key_path}: key is encrypted (passphrases are not supported)"
        ) from None
    except ssl.SSLError as exc:
        raise _chain_error(cert_key, cert_path, key_key, key_path, exc) from None
    if settings.client_ca is not None:
        try:
            ctx.load_verify_locations(cafile=settings.client_ca)
        except ssl.SSLError as exc:
            raise TLSError(
                f"ssl.client_ca: {settings.client_ca}: cannot load ({_reason(exc)})"
            ) from None
    ctx.verify_mode = settings.verify_mode
    return ctx


def _refuse_passphrase() -> str:
    raise _PassphraseRequested


def _chain_error(
    cert_key: str, cert_path: str, key_key: str, key_path: str, exc: ssl.SSLError
) -> TLSError:
    """Say which file ``load_cert_chain`` failed on; the PEM checks already passed."""
    reason = exc.reason or ""
    if reason == "KEY_VALUES_MISMATCH":
        return TLSError(
            f"{key_key}: {key_path}: key does not match certificate {cert_path} "
            "(the server's own certificate must come first in the cert file)"
        )
    if reason in _CERT_REASONS:
        return TLSError(
            f"{cert_key}: {cert_path}: certificate refused by OpenSSL's security level "
            f"({_reason(exc)})"
        )
    return TLSError(f"{key_key}: {key_path}: not a usable private key ({_reason(exc)})")


def _reason(exc: ssl.SSLError) -> str:
    if exc.reason:
        return str(exc.reason).replace("_", " ").lower()
    return str(exc.args[-1]) if exc.args else "unknown OpenSSL error"


def _check_path(key: str, value: object) -> str:
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not isinstance(value, str):
        raise TLSError(f"{key}: expected a file path, got {value!r}")
    if not value:
        raise TLSError(f"{key}: empty path")
    return value


def _read_file(key: str, path: str) -> bytes:
    """The file's bytes; a message naming ``key`` and ``path`` for anything unreadable."""
    try:
        st = os.stat(path)
        if stat.S_ISDIR(st.st_mode):
            raise TLSError(f"{key}: {path}: is a directory, not a file")
        # A FIFO or device would block or stream forever; PEM files are regular files.
        if not stat.S_ISREG(st.st_mode):
            raise TLSError(f"{key}: {path}: not a regular file")
        with open(path, "rb") as fh:
            data = fh.read()
    except FileNotFoundError:
        raise TLSError(f"{key}: {path}: file not found") from None
    except PermissionError:
        raise TLSError(f"{key}: {path}: permission denied") from None
    except OSError as exc:
        raise TLSError(f"{key}: {path}: cannot read ({exc.strerror or exc})") from None
    if not data.strip():
        raise TLSError(f"{key}: {path}: file is empty")
    return data


def _check_cert_pem(key: str, path: str, data: bytes) -> None:
    """Every PEM certificate block in ``data`` parses; there is at least one."""
    blocks = _PEM_CERT_RE.findall(data)
    if not blocks:
        if _PEM_KEY_RE.search(data):
            hint = "it holds a private key, not a certificate (are cert and key swapped?)"
        elif data[:1] == b"\x30":
            hint = "it looks like DER; PEM is required (openssl x509 -inform der -out cert.pem)"
        else:
            hint = "no PEM certificate found (expected -----BEGIN CERTIFICATE-----)"
        raise TLSError(f"{key}: {path}: not a certificate: {hint}")
    try:
        pem = b"\n".join(blocks).decode("ascii")
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_verify_locations(cadata=pem)
    except (UnicodeDecodeError, ssl.SSLError):
        raise TLSError(
            f"{key}: {path}: not a certificate: corrupt or truncated PEM certificate data"
        ) from None


def _check_key_pem(key: str, path: str, data: bytes) -> None:
    """``data`` holds an unencrypted PEM private key (it is parsed by ``load_cert_chain``)."""
    if _PEM_ENCRYPTED_RE.search(data):
        raise TLSError(f"{key}: {path}: key is encrypted (passphrases are not supported)")
    if not _PEM_KEY_RE.search(data):
        if _PEM_CERT_RE.search(data):
            hint = "it holds a certificate, not a private key (are cert and key swapped?)"
        elif data[:1] == b"\x30":
            hint = "it looks like DER; PEM is required"
        else:
            hint = "no PEM private key found (expected -----BEGIN PRIVATE KEY-----)"
        raise TLSError(f"{key}: {path}: not a private key: {hint}")
