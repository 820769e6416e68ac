"""The ASGI ``http`` scope of a request (spec 2.5) and what is constant per connection.

``ConnScope`` holds what a connection's requests share (client, server,
scheme, the extensions, the TLS details): worked out once, on the
connection's first request, and kept as the connection's ``ctx``. ``http_scope``
makes the per-request dict from it and the parsed ``Request``: a copy of the
listener's template, header names lower-cased through a small cache, the path
percent-decoded only when it has a ``%``.
"""

from __future__ import annotations

import re
import ssl
from collections.abc import Mapping
from typing import Any, Final
from urllib.parse import unquote

from prefork.http.fields import field_name
from prefork.http.request import Request

ASGI_VERSION: Final = "3.0"
SPEC_VERSION: Final = "2.5"

# TLS version names (ssl.SSLObject.version()) to their wire numbers (ASGI tls extension).
TLS_VERSIONS: Final[Mapping[str, int]] = {
    "TLSv1": 0x0301,
    "TLSv1.1": 0x0302,
    "TLSv1.2": 0x0303,
    "TLSv1.3": 0x0304,
}
# OpenSSL's cipher names to their IANA numbers: the suites prefork offers
# (tls.DEFAULT_CIPHERS and TLS 1.3's); any other gives None, as the spec allows.
CIPHER_SUITES: Final[Mapping[str, int]] = {
    "TLS_AES_128_GCM_SHA256": 0x1301,
    "TLS_AES_256_GCM_SHA384": 0x1302,
    "TLS_CHACHA20_POLY1305_SHA256": 0x1303,
    "ECDHE-ECDSA-AES128-GCM-SHA256": 0xC02B,
    "ECDHE-RSA-AES128-GCM-SHA256": 0xC02F,
    "ECDHE-ECDSA-AES256-GCM-SHA384": 0xC02C,
    "ECDHE-RSA-AES256-GCM-SHA384": 0xC030,
    "ECDHE-RSA-CHACHA20-POLY1305": 0xCCA8,
    "ECDHE-ECDSA-CHACHA20-POLY1305": 0xCCA9,
}
# Subject attribute names as RFC 4514 writes them (client_cert_name).
_RDN_NAMES: Final[Mapping[str, str]] = {
    "commonName": "CN",
    "countryName": "C",
    "localityName": "L",
    "stateOrProvinceName": "ST",
    "organizationName": "O",
    "organizationalUnitName": "OU",
    "streetAddress": "STREET",
    "domainComponent": "DC",
    "userId": "UID",
}
_PEM_CERT_RE: Final = re.compile(
    r"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----\n?", re.DOTALL
)

# What a request head decides in its scope: (raw list, root_path, lowered
# headers, path, raw_path, query_string).
_HeadParts = tuple[
    list[tuple[bytes, bytes]], str, tuple[tuple[bytes, bytes], ...], str, bytes, bytes
]


# head_parts by the identity of the raw header list they came from.
_HEADS: Final[dict[int, _HeadParts]] = {}
_HEADS_MAX: Final = 512
# The server certificates' PEM text by file path, read once per worker.
_CERT_PEMS: Final[dict[str, str | None]] = {}
# The http scope's keys that every request through one listener shares, by
# (root_path, ASGI versions, scheme, server): a worker has a few listeners.
# Each scope is a copy of one, ~1/3 the cost of a new 14-key dict. One per
# listener, not per connection: a dict of its own would cost each idle
# keep-alive connection ~0.6 KiB. (Past _TEMPLATES_MAX, say a listener on
# 0.0.0.0 reached at many local addresses, a connection gets one of its own.)
_TEMPLATES: Final[dict[tuple[object, ...], dict[str, Any]]] = {}
_TEMPLATES_MAX: Final = 64


class ConnScope:
    """What every request on one connection shares in its scope."""

    __slots__ = ("client", "extensions", "http", "scheme", "server", "task")

    def __init__(
        self,
        client: tuple[str, int] | None,
        server: tuple[str, int] | None,
        scheme: str,
        extensions: dict[str, Any],
    ) -> None:
        self.client = client
        self.server = server
        self.scheme = scheme
        # One dict per connection: an app that writes into it only sees its own.
        self.extensions = extensions
        # The connection's task (asgi.AsgiApp.respond_inline runs the app as part of it).
        self.task: Any = None
        # The listener's http scope template (_TEMPLATES; found by the first
        # http_scope: one app serves a connection).
        self.http: dict[str, Any] | None = None


def conn_scope(
    transport: Any,
    peername: tuple[str, int] | None,
    server_name: str | None,
    ssl_cfg: Mapping[str, Any] | None,
) -> ConnScope:
    """The shared part of the scopes of a connection's requests."""
    sockname = transport.get_extra_info("sockname") if transport is not None else None
    server = (str(sockname[0]), int(sockname[1])) if isinstance(sockname, tuple) else None
    extensions: dict[str, Any] = {"http.response.pathsend": {}}
    ssl_object = transport.get_extra_info("ssl_object") if transport is not None else None
    scheme = "http"
    if ssl_object is not None:
        scheme = "https"
        extensions["tls"] = tls_extension(ssl_object, server_name, ssl_cfg)
    return ConnScope(peername, server, scheme, extensions)


def tls_extension(
    ssl_object: Any, server_name: str | None, ssl_cfg: Mapping[str, Any] | None
) -> dict[str, Any]:
    """The spec's ``tls`` extension for a finished handshake.

    ``client_cert_chain`` holds the client's own certificate only: Python
    3.11's ssl module does not give the rest of the chain it verified.
    """
    cipher = ssl_object.cipher()
    der = ssl_object.getpeercert(binary_form=True)
    chain = [ssl.DER_cert_to_PEM_cert(der)] if der else []
    name = None
    if der:
        # Decoded only when verified (CERT_OPTIONAL or CERT_REQUIRED with a CA):
        # an unverified certificate has no name one could trust.
        name = _rfc4514(ssl_object.getpeercert())
    return {
        "server_cert": server_cert(server_name, ssl_cfg),
        "client_cert_chain": chain,
        "client_cert_name": name,
        "client_cert_error": None,  # a certificate that fails verification fails the handshake
        "tls_version": TLS_VERSIONS.get(ssl_object.version() or ""),
        "cipher_suite": CIPHER_SUITES.get(cipher[0]) if cipher else None,
    }


def _rfc4514(cert: Mapping[str, Any] | None) -> str | None:
    if not cert or "subject" not in cert:
        return None
    parts = []
    for rdn in reversed(cert["subject"]):  # RFC 4514 §2.1: the last RDN first
        parts.append("+".join(f"{_RDN_NAMES.get(key, key)}={_escape_rdn(v)}" for key, v in rdn))
    return ",".join(parts) or None


def _escape_rdn(value: str) -> str:
    out = "".join("\\" + ch if ch in ',+"\\<>;=' else ch for ch in value)
    if out[:1] in ("#", " "):
        out = "\\" + out
    if out.endswith(" ") and not out.endswith("\\ "):
        out = out[:-1] + "\\ "
    return out


def server_cert(server_name: str | None, ssl_cfg: Mapping[str, Any] | None) -> str | None:
    """The PEM text of the certificate this connection's handshake sent (as configured)."""
    if not ssl_cfg:
        return None
    identity = ssl_cfg.get("default")
    hosts = ssl_cfg.get("hosts") or {}
    if server_name is not None:
        for host, host_identity in hosts.items():
            host = str(host).lower()
            if host == server_name or (
                host.startswith("*.") and server_name.partition(".")[2] == host[2:]
            ):
                identity = host_identity
                break
    if not isinstance(identity, Mapping) or "cert" not in identity:
        return None
    path = str(identity["cert"])
    if path not in _CERT_PEMS:
        try:
            with open(path, encoding="ascii", errors="replace") as f:
                match = _PEM_CERT_RE.search(f.read())
        except OSError:
            match = None
        _CERT_PEMS[path] = match.group(0) if match else None
    return _CERT_PEMS[path]


def lower_headers(raw: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """The request's fields with lower-case names, in order and with repeats."""
    # (The reader's known names: http.fields.split_fields makes the same list.)
    return [(field_name(name).lower, value) for name, value in raw]


def decode_path(path: str) -> str:
    """The target's path with %XX sequences decoded as UTF-8 (invalid bytes become U+FFFD)."""
    return unquote(path) if "%" in path else path


def path_parts(req: Request, root_path: str) -> tuple[str, bytes, bytes]:
    """The scope's ``path`` (decoded), ``raw_path`` and ``query_string``."""
    target = req.path
    if root_path:
        return (
            root_path + decode_path(target),
            (root_path + target).encode(),
            req.query.encode("ascii"),
        )
    return decode_path(target), target.encode("ascii"), req.query.encode("ascii")


def _parts(req: Request, root_path: str) -> _HeadParts:
    raw = req.raw_headers
    return (raw, root_path, tuple(lower_headers(raw)), *path_parts(req, root_path))


def head_parts(req: Request, root_path: str) -> _HeadParts:
    """The parts of the scope that are a function of the request head.

    Requests built from the reader's head cache (``Request.cached``) share
    their template's raw header list, so they are remembered by that list's
    identity (the entry holds the list, so the identity cannot be reused
    meanwhile). A freshly parsed head is not remembered: every entry kept
    for a head that never comes again would be garbage the collector has to
    walk (the kept containers are what triggers its collections).
    """
    raw = req.raw_headers
    if not req.cached:
        return _parts(req, root_path)
    hit = _HEADS.get(id(raw))
    if hit is not None and hit[0] is raw and hit[1] is root_path:
        return hit
    parts = _parts(req, root_path)
    if len(_HEADS) >= _HEADS_MAX:
        _HEADS.clear()  # start over rather than keep stale heads forever
    _HEADS[id(raw)] = parts
    return parts


def http_scope(
    req: Request,
    conn: ConnScope,
    root_path: str,
    state: dict[str, Any],
    asgi: dict[str, str],
) -> dict[str, Any]:
    """The ``http`` scope of ``req``.

    ``path`` and ``raw_path`` include ``root_path`` (the spec's wording, and
    what Starlette, uvicorn and Django expect); ``headers`` is a new list and
    ``state`` a shallow copy of the lifespan state, so one request's changes
    do not leak into the next.
    """
    if req.cached:
        _, _, cached, path, raw_path, query = head_parts(req, root_path)
        headers = list(cached)
    else:
        # A fresh head: its parts once, with no tuple kept for a cache. The
        # reader lower-cased the names already when it made only the
        # server's fields a dict (http.fields.split_fields).
        lowered = req.lowered
        headers = lowered if lowered is not None else lower_headers(req.raw_headers)
        path, raw_path, query = path_parts(req, root_path)
    template = conn.http
    if template is None:
        template = conn.http = _template(conn, root_path, asgi)
    scope = template.copy()
    # (The template's own values for nearly every request: a store less each.)
    if req.version != "1.1":
        scope["http_version"] = req.version
    if req.method != "GET":
        scope["method"] = req.method
    scope["path"] = path
    scope["raw_path"] = raw_path
    scope["query_string"] = query
    scope["headers"] = headers
    scope["client"] = conn.client
    scope["state"] = state.copy()
    scope["extensions"] = conn.extensions
    return scope


def _template(conn: ConnScope, root_path: str, asgi: dict[str, str]) -> dict[str, Any]:
    """The shared template for ``conn``'s listener; ``conn.server`` becomes its tuple."""
    key = (root_path, asgi.get("version"), asgi.get("spec_version"), conn.scheme, conn.server)
    template = _TEMPLATES.get(key)
    if template is None:
        template = {
            "type": "http",
            "asgi": asgi,
            "http_version": "1.1",
            "method": "GET",
            "scheme": conn.scheme,
            "path": "",
            "raw_path": b"",
            "query_string": b"",
            "root_path": root_path,
            "headers": [],
            "client": None,
            "server": conn.server,
            "state": None,
            "extensions": None,
        }
        if len(_TEMPLATES) < _TEMPLATES_MAX:
            _TEMPLATES[key] = template
    # (An equal tuple: the connection's own copy of it is let go.)
    conn.server = template["server"]
    return template
