"""What a trusted proxy says about the client: ``X-Forwarded-*`` and RFC 7239 ``Forwarded``.

Sans-I/O: header values in, ``(client address, scheme, host)`` out. The engine
decides per connection whether the peer is a trusted proxy
(``forwarded_allow_ips``); only then do the app interfaces ask this module.

The client is the right-most address that is not itself a trusted proxy, as
nginx's realip module (``real_ip_recursive on``) and uvicorn's proxy-headers
middleware take it: every proxy appends the address it received the request
from, so addresses left of the first untrusted one may be forged by the client.
A malformed value changes nothing (and is reported to the caller's logger at
debug level), never an error response.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Iterable
from typing import Final

from prefork.http.fields import (
    ALL_PRESENT,
    HAS_FORWARDED,
    HAS_X_FORWARDED_FOR,
    HAS_X_FORWARDED_HOST,
    HAS_X_FORWARDED_PROTO,
)
from prefork.http.scan import is_ipv4, xff_client

logger = logging.getLogger("prefork.worker")

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# Results remembered per distinct address (what the trust check of one costs
# with CIDR ranges is a parse; a proxy sends a few distinct addresses).
_TRUST_CACHE_MAX: Final = 4096
# Up to this many exact addresses, the scan of X-Forwarded-For compares each
# hop with each (Trust.client_in_xff); more are looked up in a set.
_SCAN_BY_BYTES: Final = 16
# Per request behind a proxy: a C static in the compiled build (a module
# attribute would be looked up on every call).
_xff_client: Final = xff_client


class Trust:
    """Which peers are trusted proxies: exact addresses, CIDR ranges, or ``*``."""

    __slots__ = ("_cache", "_exact", "_networks", "_scanned", "everyone")

    def __init__(self, allowed: Iterable[str]) -> None:
        self.everyone = False
        self._exact: set[str] = set()
        self._networks: list[IPNetwork] = []
        self._cache: dict[str, bool] = {}
        for item in allowed:
            if item == "*":
                self.everyone = True
                continue
            net = ipaddress.ip_network(item, strict=False)
            if net.num_addresses == 1:
                self._exact.add(str(net.network_address))
            else:
                self._networks.append(net)
        # What client_in_xff's scan compares a hop with: a few addresses as a
        # tuple, byte by byte (no str made and hashed per hop), many as the set.
        self._scanned: tuple[str, ...] | set[str] = (
            tuple(self._exact) if len(self._exact) <= _SCAN_BY_BYTES else self._exact
        )

    @property
    def nobody(self) -> bool:
        return not (self.everyone or self._exact or self._networks)

    def trusts(self, address: str) -> bool:
        """Whether ``address`` (a peer or a hop in X-Forwarded-For) is a trusted proxy."""
        if self.everyone or address in self._exact:
            return True
        if not self._networks:
            return False
        hit = self._cache.get(address)
        if hit is None:
            try:
                ip = ipaddress.ip_address(address)
            except ValueError:
                return False
            if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
                ip = ip.ipv4_mapped
            hit = any(ip in net for net in self._networks)
            if len(self._cache) >= _TRUST_CACHE_MAX:
                self._cache.clear()
            self._cache[address] = hit
        return hit

    def client_in_xff(self, xff: str) -> str | None:
        """The client ``xff`` (an X-Forwarded-For value) names, in one C scan
        (``scan.xff_client``) where one can tell; None where it cannot.

        It can when the hops it comes to are dotted quads and trust is by exact
        address (or everyone): the rule of ``_client_from_xff``, which reads
        the rest (IPv6 hops, CIDR ranges, malformed values, with its log).
        """
        if self.everyone:
            return _xff_client(xff, None)
        if self._networks:
            return None
        return _xff_client(xff, self._scanned)


# A dotted-quad IPv4 address (scan.is_ipv4) is recognised without building
# an IPv4Address: behind a load balancer every request names a client
# address of its own, and the parse costs ~2 us. Anything else goes to
# ipaddress.
def _valid_address(text: str) -> bool:
    if is_ipv4(text):
        return True
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _client_from_chain(hops: list[str], trust: Trust) -> str | None:
    """The right-most hop that is not a trusted proxy (or the left-most if all are)."""
    for hop in reversed(hops):
        if not _valid_address(hop):
            logger.debug("ignoring a malformed forwarded address %r", hop)
            return None
        if not trust.trusts(hop):
            return hop
    return hops[0] if hops else None


def _client_from_xff(xff: str, trust: Trust) -> str | None:
    """``_client_from_chain`` of an X-Forwarded-For value: in one C scan
    (``Trust.client_in_xff``) where it can tell, else hop by hop."""
    client = trust.client_in_xff(xff)
    return client if client is not None else _xff_hop_by_hop(xff, trust)


def _xff_hop_by_hop(xff: str, trust: Trust) -> str | None:
    """``_client_from_chain`` of an X-Forwarded-For value, read from its right end.

    Usually only the last hop or two are looked at: no list of them all, and
    no copy of the part left of the hop (as ``rpartition`` would make).
    """
    end = len(xff)
    while True:
        comma = xff.rfind(",", 0, end)
        hop = xff[comma + 1 : end].strip()
        if not _valid_address(hop):
            if "," in xff:
                logger.debug("ignoring a malformed forwarded address %r", hop)
            else:
                logger.debug("ignoring a malformed X-Forwarded-For %r", xff)
            return None
        if comma < 0:
            return hop  # the left-most: the client whether or not it is trusted
        if not trust.trusts(hop):
            return hop
        end = comma


def _strip_port(node: str) -> str:
    """A Forwarded ``for=`` node without quotes, brackets or port."""
    node = node.strip().strip('"')
    if node.startswith("["):
        return node[1 : node.find("]")] if "]" in node else ""
    if node.count(":") == 1:  # IPv4 with a port
        return node.partition(":")[0]
    return node


def _parse_forwarded(value: str) -> tuple[list[str], str | None, str | None]:
    """RFC 7239: the ``for=`` chain, and the last element's ``proto=`` and ``host=``."""
    hops: list[str] = []
    proto = host = None
    for element in value.split(","):
        proto = host = None
        for pair in element.split(";"):
            name, sep, raw = pair.partition("=")
            if not sep:
                continue
            name = name.strip().lower()
            raw = raw.strip().strip('"')
            if name == "for":
                hops.append(_strip_port(raw))
            elif name == "proto":
                proto = raw.lower()
            elif name == "host":
                host = raw
    return hops, proto, host


def resolve(
    headers: dict[str, str], trust: Trust, present: int = ALL_PRESENT
) -> tuple[str | None, str | None, str | None]:
    """``(client, scheme, host)`` from a trusted proxy's fields; None where a field says nothing.

    ``Forwarded`` wins over the ``X-Forwarded-*`` fields when both are present
    (RFC 7239 is the standard; a proxy that sends it means it).

    (``headers`` is the request's dict, typed so: a compiled build then reads
    it with dict operations rather than method calls.) ``present``: the
    request's mask of the server's fields (``Request.present``); a field whose
    bit is clear is not looked up.
    """
    client = scheme = host = None
    forwarded = headers.get("forwarded") if present & HAS_FORWARDED else None
    if forwarded is not None:
        hops, scheme, host = _parse_forwarded(forwarded)
        client = _client_from_chain(hops, trust)
    else:
        xff = headers.get("x-forwarded-for") if present & HAS_X_FORWARDED_FOR else None
        if xff is not None:
            client = _client_from_xff(xff, trust)
        proto = headers.get("x-forwarded-proto") if present & HAS_X_FORWARDED_PROTO else None
        if proto == "https" or proto == "http":
            scheme = proto  # what nearly every proxy sends, as is
        elif proto is not None:
            # A list when several proxies appended: the client's is the first.
            scheme = proto.partition(",")[0].strip().lower()
        xfh = headers.get("x-forwarded-host") if present & HAS_X_FORWARDED_HOST else None
        if xfh is not None:
            host = xfh.partition(",")[0].strip()
    if scheme is not None and scheme not in ("http", "https", "ws", "wss"):
        logger.debug("ignoring a forwarded scheme %r", scheme)
        scheme = None
    if host is not None and (not host or any(c in host for c in " /\\@\t")):
        logger.debug("ignoring a forwarded host %r", host)
        host = None
    return client, scheme, host
