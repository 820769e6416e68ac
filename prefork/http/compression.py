"""Response compression: Accept-Encoding negotiation, the policy, gzip/deflate encoders.

Sans-I/O: this module decides and transforms bytes; the engine writes them. A
body bigger than ``SLICE_BYTES`` is compressed slice by slice
(:func:`compress_slices`), the engine yielding to the loop between slices
(``prefork.engine.slices``).

Per request the engine calls :meth:`Policy.choose`, then :func:`apply_headers`, then
either :func:`compress_body` (a whole body) or an :class:`Encoder` from
:func:`make_encoder` (a streamed body: ``compress`` + ``flush`` per chunk, ``finish``
at the end).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator, Mapping
from typing import Any, Final

from zlib_ng import zlib_ng

__all__ = [
    "SLICE_BYTES",
    "Encoder",
    "Policy",
    "apply_headers",
    "compress_body",
    "compress_slices",
    "make_encoder",
    "negotiate_encoding",
]

# Deflate is zlib-ng's (the zlib_ng package: zlib's API and formats, a faster
# implementation). What it costs, measured with bench/compression_cost.py on a
# JSON API response (zlib-ng 2.3.3 via zlib_ng 1.1.0, CPython 3.11, one core of a
# 2-vCPU VM), ms of CPU per MiB, best of 7, with the C zlib (1.2.13) that
# CPython's zlib module (and nginx) use for comparison:
#
#     level               1     2     3     4     5     6     7     8     9
#     gzip,    100 KiB  1.6   3.0   5.1   6.9   7.9   9.9  14.1  20.3  18.1
#     gzip,    1 MiB    2.5   4.1   5.5   7.5   8.5  10.9  15.2  22.8  19.0
#     ratio             .34   .25   .24   .23   .23   .22   .22   .22   .23
#     zlib, 100 KiB     5.9   6.5   8.2  10.5  13.2  17.2  20.8  34.4  34.6
#     zlib's ratio      .28   .26   .25   .24   .23   .23   .22   .22   .22
#
# At the default level 6 that is 1.75x zlib's speed for a slightly smaller
# body; level 1 trades ratio for speed more than zlib's does. (deflate and gzip
# cost the same: one deflate stream, different wrappers.) A body is compressed
# at most 64 KiB (~0.6 ms at level 6) per loop turn: a bigger one goes slice by
# slice, and the worker's other connections are served between slices. At
# level 8 a 64 KiB slice costs ~1.4 ms, at level 1 ~0.1 ms.
#
# Slices rather than a thread: on a busy worker the thread hand-offs and the
# interleaving cost 6 % of the compression itself (bench S8 with the cache off:
# 406 req/s in a thread pool, 426 in slices, nginx 437), and a worker has one
# core's worth of CPU anyway (one worker per core). Slices of 32 KiB: 416.
SLICE_BYTES: Final = 64 * 1024

# An empty body is never compressed, even with min_size 0: gzip of nothing is 20 bytes.
_MIN_USEFUL_BYTES: Final = 1

# zlib window bits: 15 = the zlib format, which HTTP calls "deflate" (RFC 9110
# §8.4.1.2; raw deflate without the zlib wrapper is a common mistake); 16 + 15 =
# the gzip format (RFC 9110 §8.4.1.3, RFC 1952).
_WBITS: Final = {"gzip": 16 + zlib_ng.MAX_WBITS, "deflate": zlib_ng.MAX_WBITS}

# Caches are bounded: cleared when full, so hostile variety costs a re-parse,
# never memory. Browsers send a handful of distinct Accept-Encoding values.
_CACHE_MAX_ENTRIES: Final = 256

_TCHAR: Final = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyz")
_DIGITS: Final = frozenset("0123456789")

# RFC 9110 §8.4.1.3: a recipient SHOULD treat "x-gzip" as "gzip".
_ALIASES: Final = {"x-gzip": "gzip"}

# A wildcard in `types` never admits these: an event stream must reach the client
# as it is written, unbuffered by any proxy that would wait for a compressed block.
# Listing the exact type in `types` opts in.
_NEVER_BY_WILDCARD: Final = frozenset({"text/event-stream"})

# choose() returns one of these shared tuples, so the hot path allocates nothing.
_SKIP: Final[tuple[str | None, bool]] = (None, False)
_VARY_ONLY: Final[tuple[str | None, bool]] = (None, True)
_RESULTS: Final[dict[str | None, tuple[str | None, bool]]] = {
    None: _VARY_ONLY,
    "gzip": ("gzip", True),
    "deflate": ("deflate", True),
}

_negotiated: dict[str, str | None] = {}


def _parse_qvalue(text: str) -> int:
    """An RFC 9110 §12.4.2 qvalue in thousandths; -1 when it does not match the grammar."""
    if text == "1" or text == "0":
        return 1000 if text == "1" else 0
    head, dot, frac = text.partition(".")
    if not dot or len(frac) > 3 or not _DIGITS.issuperset(frac):
        return -1
    if head == "0":
        return int(frac.ljust(3, "0"))
    if head == "1" and frac.strip("0") == "":
        return 1000
    return -1


def _parse_accept_encoding(value: str) -> dict[str, int]:
    """Map each coding named in ``value`` to its weight in thousandths.

    A member whose name is not a token is skipped. A member whose weight cannot
    be read (``q=abc``, ``q=2``, ``q=0.0001``) accepts nothing: its coding counts
    as refused, so a ``*`` elsewhere cannot re-admit it. Parameters other than
    ``q`` are ignored. A coding named twice keeps its lowest weight, so any
    refusal wins.
    """
    weights: dict[str, int] = {}
    for member in value.split(","):
        name, semi, params = member.partition(";")
        name = name.strip().lower()
        if not name or not _TCHAR.issuperset(name):
            continue
        name = _ALIASES.get(name, name)
        weight = 1000
        if semi:
            for param in params.split(";"):
                key, eq, raw = param.partition("=")
                if eq and key.strip().lower() == "q":
                    parsed = _parse_qvalue(raw.strip())
                    weight = 0 if parsed < 0 else min(weight, parsed)
        if weight < weights.get(name, 1001):
            weights[name] = weight
    return weights


def _negotiate(value: str) -> str | None:
    weights = _parse_accept_encoding(value)
    star = weights.get("*", 0)
    gzip_q = weights.get("gzip", star)
    deflate_q = weights.get("deflate", star)
    if gzip_q <= 0 and deflate_q <= 0:
        return None
    coding, best = ("gzip", gzip_q) if gzip_q >= deflate_q else ("deflate", deflate_q)
    # A client that names identity with a higher weight prefers it (RFC 9110
    # §12.5.3: weights express preference); on a tie we compress.
    if weights.get("identity", -1) > best:
        return None
    return coding


def negotiate_encoding(accept_encoding: str | None) -> str | None:
    """The coding to use for a request's ``Accept-Encoding`` value (RFC 9110 §12.5.3).

    Returns ``"gzip"`` or ``"deflate"``, whichever acceptable one has the higher
    weight (gzip on a tie), or ``None`` for the identity body: no header, an empty
    header, neither coding acceptable, or ``identity`` explicitly preferred.
    """
    if accept_encoding is None:
        return None
    try:
        return _negotiated[accept_encoding]
    except KeyError:
        pass
    coding = _negotiate(accept_encoding)
    if len(_negotiated) >= _CACHE_MAX_ENTRIES:
        _negotiated.clear()
    _negotiated[accept_encoding] = coding
    return coding


def _has_no_transform(cache_control: str) -> bool:
    """Whether a Cache-Control value carries the no-transform directive (RFC 9111 §5.2.2.6)."""
    lowered = cache_control.lower()
    if "no-transform" not in lowered:
        return False
    return any(d.partition("=")[0].strip() == "no-transform" for d in lowered.split(","))


def _media_type(content_type: str) -> str:
    return content_type.partition(";")[0].strip().lower()


def _wildcard_match(media: str, pattern: str) -> bool:
    """Whether ``media`` matches ``pattern``, where each ``*`` stands for any run of characters."""
    first, *middle, last = pattern.split("*")
    if len(media) < len(first) + len(last) or not media.startswith(first):
        return False
    if not media.endswith(last):
        return False
    pos, end = len(first), len(media) - len(last)
    for part in middle:
        found = media.find(part, pos, end)
        if found < 0:
            return False
        pos = found + len(part)
    return True


class Policy:
    """Which responses to compress, built once per worker from ``cfg.compression``."""

    __slots__ = ("_exact", "_min_bytes", "_patterns", "_type_cache", "enabled", "level", "min_size")

    def __init__(self, compression_cfg: Mapping[str, Any]) -> None:
        self.enabled: bool = bool(compression_cfg["enabled"])
        self.level: int = int(compression_cfg["level"])
        self.min_size: int = int(compression_cfg["min_size"])
        self._min_bytes = max(self.min_size, _MIN_USEFUL_BYTES)
        types = [_media_type(t) for t in compression_cfg["types"]]
        self._exact = frozenset(t for t in types if "*" not in t)
        self._patterns = tuple(t for t in types if "*" in t)
        self._type_cache: dict[str, bool] = {}

    def type_allowed(self, content_type: str) -> bool:
        """Whether a Content-Type value (parameters ignored) is in ``types``."""
        try:
            return self._type_cache[content_type]
        except KeyError:
            pass
        media = _media_type(content_type)
        allowed = media in self._exact or (
            media not in _NEVER_BY_WILDCARD
            and any(_wildcard_match(media, p) for p in self._patterns)
        )
        if len(self._type_cache) >= _CACHE_MAX_ENTRIES:
            self._type_cache.clear()
        self._type_cache[content_type] = allowed
        return allowed

    def choose(
        self,
        method: str,
        status: int,
        accept_encoding: str | None,
        headers: Mapping[str, str],
        body_len: int | None,
    ) -> tuple[str | None, bool]:
        """Decide ``(coding, vary)`` for one response.

        Args:
            method: the request method.
            status: the response status.
            accept_encoding: the request's Accept-Encoding value, or None if absent.
            headers: the handler's response headers, lower-case names.
            body_len: the body length, or None for a streamed body (then
                ``min_size`` does not apply).

        Returns:
            ``coding`` is ``"gzip"``, ``"deflate"`` or None (send as is). ``vary``
            is True when the response was eligible for compression whatever the
            client accepted, so ``Vary: Accept-Encoding`` belongs on it.
        """
        # Cheapest tests first: most small responses leave on the second line.
        if not self.enabled:
            return _SKIP
        if body_len is not None and body_len < self._min_bytes:
            return _SKIP
        # RFC 9110 §15.2, §15.3.5, §15.4.5: no content in 1xx, 204 and 304;
        # a HEAD response carries none to compress.
        if status < 200 or status == 204 or status == 304 or method == "HEAD":
            return _SKIP
        content_type = headers.get("content-type")
        if content_type is None:
            return _SKIP
        allowed = self._type_cache.get(content_type)
        if allowed is None:
            allowed = self.type_allowed(content_type)
        if not allowed:
            return _SKIP
        # Already encoded by the handler; or a byte range of the identity body,
        # which a compressed slice would no longer match.
        if "content-encoding" in headers or "content-range" in headers:
            return _SKIP
        cache_control = headers.get("cache-control")
        if cache_control is not None and _has_no_transform(cache_control):
            return _SKIP
        if accept_encoding is None:
            return _VARY_ONLY
        coding = _negotiated.get(accept_encoding, "")
        if coding == "":
            coding = negotiate_encoding(accept_encoding)
        return _RESULTS[coding]


def apply_headers(headers: dict[str, str], coding: str | None, vary: bool) -> None:
    """Update lower-case-keyed response headers for the outcome of :meth:`Policy.choose`.

    With ``vary``, merge ``Accept-Encoding`` into ``vary`` (no duplicate token; a
    ``*`` is left alone). With a ``coding``, set ``content-encoding``, weaken a
    strong ``etag`` (the compressed bytes are not the identity bytes, RFC 9110
    §8.8.1), and drop ``content-length`` (the engine recomputes it) and
    ``accept-ranges`` (ranges would address the compressed bytes, which are not
    stable).
    """
    if vary:
        current = headers.get("vary")
        if current is None or not current.strip():
            headers["vary"] = "Accept-Encoding"
        else:
            tokens = [t.strip().lower() for t in current.split(",")]
            if "*" not in tokens and "accept-encoding" not in tokens:
                headers["vary"] = current + ", Accept-Encoding"
    if coding is None:
        return
    headers["content-encoding"] = coding
    headers.pop("content-length", None)
    headers.pop("accept-ranges", None)
    etag = headers.get("etag")
    if etag is not None and not etag.startswith("W/"):
        headers["etag"] = "W/" + etag


class Encoder:
    """A streaming gzip or deflate compressor; one per response."""

    __slots__ = ("_compressor",)

    def __init__(self, coding: str, level: int) -> None:
        self._compressor = zlib_ng.compressobj(level, zlib_ng.DEFLATED, _wbits(coding))

    def compress(self, data: bytes | memoryview) -> bytes:
        """Feed ``data``; returns what is ready, possibly ``b""`` (buffered)."""
        return self._compressor.compress(data)

    def flush(self) -> bytes:
        """Everything fed so far, decodable by the client now (``Z_SYNC_FLUSH``)."""
        return self._compressor.flush(zlib_ng.Z_SYNC_FLUSH)

    def finish(self) -> bytes:
        """The rest and the trailer; the encoder is done."""
        return self._compressor.flush(zlib_ng.Z_FINISH)


def _wbits(coding: str) -> int:
    try:
        return _WBITS[coding]
    except KeyError:
        raise ValueError(f"unsupported content coding: {coding!r}") from None


def make_encoder(coding: str, level: int) -> Encoder:
    """A streaming :class:`Encoder` for ``coding`` ("gzip" or "deflate") at ``level`` 1-9."""
    return Encoder(coding, level)


def compress_body(coding: str, level: int, data: bytes) -> bytes:
    """``data`` compressed in one go (bodies up to ``SLICE_BYTES``; bigger ones by slices)."""
    return zlib_ng.compress(data, level, _wbits(coding))


def compress_slices(coding: str, level: int, data: bytes) -> Iterator[bytes]:
    """``data`` compressed ``SLICE_BYTES`` at a time: the parts, one per slice, then the end.

    The caller may let other work run between two parts (the engine yields
    to the event loop), so one big body does not hold up every connection.
    """
    encoder = zlib_ng.compressobj(level, zlib_ng.DEFLATED, _wbits(coding))
    view = memoryview(data)
    for start in range(0, max(len(data), 1), SLICE_BYTES):
        yield encoder.compress(view[start : start + SLICE_BYTES])
    yield encoder.flush()


# Bodies this big or bigger are remembered compressed, so an identical body
# (a page, a JSON document served again and again) is compressed once per
# worker, not per request: a hit costs a hash of the body and one compare,
# against milliseconds of deflate. Smaller bodies compress faster than they hash.
CACHE_MIN_BYTES: Final = 16 * 1024
# Bodies bigger than this are not kept (one response must not flush the cache).
CACHE_MAX_BODY_BYTES: Final = 1024 * 1024
# The most a worker keeps, counting each body and its compressed form.
CACHE_MAX_BYTES: Final = 16 * 1024 * 1024


class BodyCache:
    """Compressed bodies by (coding, body), least recently used dropped first."""

    __slots__ = ("_entries", "_size", "max_bytes")

    def __init__(self, max_bytes: int = CACHE_MAX_BYTES) -> None:
        self._entries: OrderedDict[tuple[str, bytes], bytes] = OrderedDict()
        self._size = 0
        self.max_bytes = max_bytes

    def get(self, coding: str, body: bytes) -> bytes | None:
        key = (coding, body)
        out = self._entries.get(key)
        if out is not None:
            self._entries.move_to_end(key)
        return out

    def put(self, coding: str, body: bytes, compressed: bytes) -> None:
        size = len(body) + len(compressed)
        if len(body) > CACHE_MAX_BODY_BYTES or size > self.max_bytes:
            return
        key = (coding, body)
        if key in self._entries:
            return
        self._entries[key] = compressed
        self._size += size
        while self._size > self.max_bytes:
            (_, old_body), old = self._entries.popitem(last=False)
            self._size -= len(old_body) + len(old)
