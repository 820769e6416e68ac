"""Response compression end to end: real ``prefork run`` processes spoken to in raw bytes.

What goes over the wire is decoded with the standard library only (``gzip``,
``zlib``) and compared with what the handler returned. Servers are
module-scoped and started on first use, one per configuration: the default
policy behind a sync handler (the inline path) and an async one on httptools
and on h11, compression disabled, level 1 with ``min_size = 0``, level 9 for
the sliced-compression test, and ``requests_per_connection = 3``. Every loop is
bounded in count and time; traffic goes to 127.0.0.1 only.
"""

from __future__ import annotations

import gzip
import inspect
import random
import textwrap
import threading
import time
import uuid
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest

from tests.e2e.conftest import ServerProcess, launch_server
from tests.e2e.helpers import Served, ServerPool, request

pytestmark = pytest.mark.e2e

# gzip (RFC 1952) and the zlib format (RFC 1950, which HTTP calls "deflate").
GZIP_WBITS = 16 + zlib.MAX_WBITS
ZLIB_WBITS = zlib.MAX_WBITS
MIN_SIZE = 1024  # the default compression.min_size
SLICED_BYTES = 200_000  # above compression.SLICE_BYTES: compressed slice by slice
BIG_BYTES = 4 * 1024 * 1024
PROBE_INTERVAL_S = 0.005


def text_body(n: int) -> bytes:
    """``n`` bytes of compressible ASCII text, the same for the same ``n`` in any process."""
    words = (
        "alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa",
        "lambda", "mu", "nu", "xi", "omicron", "pi", "rho", "sigma", "tau", "upsilon", "phi",
        "chi", "psi", "omega", "request", "response", "header", "body", "server",
    )  # fmt: skip
    rng = random.Random(n)
    out: list[str] = []
    size = 0
    while size < n:
        word = rng.choice(words)
        out.append(word)
        size += len(word) + 1
    return (" ".join(out) + " ").encode("ascii")[:n]


def big_json(n: int) -> bytes:
    """At least ``n`` bytes of JSON-like records: compressible, but not trivially."""
    rng = random.Random(4)
    words = ("alpha", "beta", "gamma", "delta", "epsilon", "zeta", "theta", "kappa", "lambda")
    parts: list[str] = []
    size = 0
    while size < n:
        record = (
            f'{{"id": {len(parts)}, "name": "{rng.choice(words)} {rng.choice(words)}", '
            f'"score": {rng.randint(0, 10**6)}, "ok": {"true" if rng.random() < 0.5 else "false"}}}'
        )
        parts.append(record)
        size += len(record) + 2
    return ("[" + ",\n".join(parts) + "]").encode("ascii")


# The streamed pieces: the first is sent, then the app waits for the client's signal.
PIECE_1 = text_body(2000)
PIECE_2 = text_body(3000)
EVENTS = [b"data: " + text_body(1500 + i) + b"\n\n" for i in range(3)]

APP = (
    """
import asyncio
import os
import random
import zlib

HERE = os.getcwd()
_big = []
"""
    + f"BIG_BYTES = {BIG_BYTES}\n\n"
    + inspect.getsource(text_body)
    + "\n\n"
    + inspect.getsource(big_json)
    + '''

PIECE_1 = text_body(2000)
PIECE_2 = text_body(3000)
EVENTS = [b"data: " + text_body(1500 + i) + b"\\n\\n" for i in range(3)]


def big_body():
    if not _big:
        _big.append(big_json(BIG_BYTES))
    return _big[0]


async def held_stream(token):
    """The first piece, then nothing until the client creates go-TOKEN (at most ~10 s)."""
    yield PIECE_1
    for _ in range(1000):
        if os.path.exists(os.path.join(HERE, "go-" + token)):
            break
        await asyncio.sleep(0.01)
    open(os.path.join(HERE, "second-" + token), "w").close()
    yield PIECE_2


async def pieces(count):
    for i in range(count):
        yield text_body(1500 + i)


def sync_pieces(count):
    for i in range(count):
        yield text_body(1500 + i)


async def events():
    for event in EVENTS:
        yield event


def response_headers(args):
    """The content type and headers the query asks for ("type=none": no content type)."""
    headers = {}
    ctype = args.get("type", "text/plain; charset=utf-8")
    if ctype != "none":
        headers["Content-Type"] = ctype
    for arg, name in (
        ("vary", "Vary"),
        ("etag", "ETag"),
        ("cc", "Cache-Control"),
        ("ar", "Accept-Ranges"),
        ("cr", "Content-Range"),
    ):
        if arg in args:
            headers[name] = args[arg]
    return headers


def text_response(args):
    """/text: text_body(n), with the status and headers the query asks for."""
    body = text_body(int(args.get("n", "4096")))
    headers = response_headers(args)
    if args.get("cl"):
        headers["Content-Length"] = str(len(body))
    if args.get("ce") == "gzip":
        body = zlib.compress(body, 6, 31)
        headers["Content-Encoding"] = "gzip"
    content = body.decode("ascii") if args.get("kind") == "str" else body
    return content, int(args.get("status", "200")), headers


def pieces_response(args):
    """/pieces: text_body(1500 + i) for i < count, from an async (or sync) generator."""
    count = int(args.get("count", "3"))
    stream = sync_pieces(count) if args.get("sync") else pieces(count)
    return stream, int(args.get("status", "200")), response_headers(args)


# One dict for every response: the engine must not write into it.
SHARED_HEADERS = {"Content-Type": "text/plain", "ETag": '"s1"', "Vary": "Origin"}


def route(method, path, args, headers, body, ctx):
    if path == "/text":
        return text_response(args)
    if path == "/shared":
        return text_body(6000), 200, SHARED_HEADERS
    if path == "/big":
        data = big_body()
        if args.get("prepare"):
            return "ready", 200, {"Content-Type": "text/plain"}
        return data, 200, {"Content-Type": "application/json"}
    if path == "/held":
        return held_stream(args["token"]), 200, {"Content-Type": "text/plain"}
    if path == "/pieces":
        return pieces_response(args)
    if path == "/events":
        return events(), 200, {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
    return "not found", 404, {"Content-Type": "text/plain"}


def handle(method, path, args, headers, body, ctx):
    return route(method, path, args, headers, body, ctx)


async def handle_async(method, path, args, headers, body, ctx):
    await asyncio.sleep(0)
    return route(method, path, args, headers, body, ctx)
'''
)

BASE_CONFIG = 'log_level = "info"\n'

# name -> (parser backend, handler, extra config)
SERVERS: dict[str, tuple[str, str, str]] = {
    "sync": ("httptools", "app:handle", ""),
    "async": ("httptools", "app:handle_async", ""),
    "h11": ("h11", "app:handle_async", ""),
    "disabled": ("httptools", "app:handle", "compression = {enabled = false}\n"),
    "fast": ("httptools", "app:handle", "compression = {level = 1, min_size = 0}\n"),
    # The sliced-compression test sends small requests back to back on one connection.
    "max": (
        "httptools",
        "app:handle",
        "compression = {level = 9}\nrequests_per_connection = 100000\n",
    ),
    "limited": ("httptools", "app:handle", "requests_per_connection = 3\n"),
}


def text_path(n: int, **params: str) -> str:
    return "/text?" + urlencode({"n": str(n), **params})


def decode(coding: str | None, data: bytes) -> bytes:
    """The identity bytes of ``data`` sent with Content-Encoding ``coding``."""
    if coding == "gzip":
        assert data[:2] == b"\x1f\x8b", "not the gzip format"
        return gzip.decompress(data)
    if coding == "deflate":
        # HTTP's deflate is the zlib format: this raises on raw deflate.
        return zlib.decompress(data)
    assert coding is None, coding
    return data


# -- servers ---------------------------------------------------------------------


def launch(directory: Path, name: str) -> ServerProcess:
    """The compression test app with SERVERS[name]'s config, served by ``launch_server``."""
    backend, target, config = SERVERS[name]
    (directory / "app.py").write_text(textwrap.dedent(APP))
    (directory / "cfg.toml").write_text(BASE_CONFIG + config)
    return launch_server(directory, "-c", "cfg.toml", "-w", "1", "--http", backend, target=target)


Pool = ServerPool[str]


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pool]:
    """Module-scoped servers, one per entry of SERVERS, started on first use."""
    servers = Pool(tmp_path_factory.mktemp("compression"), launch)
    yield servers
    servers.stop()


@pytest.fixture
def default(pool: Pool) -> Served:
    """Default policy, sync handler on httptools: most responses leave from the inline path."""
    return pool.get("sync")


@pytest.fixture(params=["sync", "async", "h11"])
def server(request: pytest.FixtureRequest, pool: Pool) -> Served:
    """Default policy: sync handler, async handler, and async handler on the h11 parser."""
    return pool.get(request.param)


@pytest.fixture(params=["sync", "h11"])
def both_parsers(request: pytest.FixtureRequest, pool: Pool) -> Served:
    """Default policy on httptools (sync handler) and on h11 (async handler)."""
    return pool.get(request.param)


# -- gzip and deflate --------------------------------------------------------------


@pytest.mark.parametrize("n", [20_000, SLICED_BYTES], ids=["on-loop", "sliced"])
@pytest.mark.parametrize("coding", ["gzip", "deflate"])
def test_compressed_body_decodes_to_the_handler_body(server: Served, coding: str, n: int) -> None:
    resp = server.get(text_path(n), f"Accept-Encoding: {coding}")
    assert resp.status == 200
    assert resp.values("content-encoding") == [coding]
    assert resp.values("content-length") == [str(len(resp.body))]
    assert resp.header("transfer-encoding") is None
    assert resp.vary_tokens == ["accept-encoding"]
    assert len(resp.body) < n // 2
    assert decode(coding, resp.body) == text_body(n)


def test_str_content_gets_a_text_type_and_is_compressed(server: Served) -> None:
    resp = server.get(text_path(5000, kind="str", type="none"), "Accept-Encoding: gzip")
    assert resp.header("content-type") == "text/plain; charset=utf-8"
    assert resp.header("content-encoding") == "gzip"
    assert gzip.decompress(resp.body) == text_body(5000)


def test_handler_content_length_is_replaced_by_the_compressed_length(default: Served) -> None:
    resp = default.get(text_path(8000, cl="1"), "Accept-Encoding: gzip")
    assert resp.header("content-encoding") == "gzip"
    assert resp.values("content-length") == [str(len(resp.body))]
    assert gzip.decompress(resp.body) == text_body(8000)


def test_without_accept_encoding_identity_is_sent_with_vary(both_parsers: Served) -> None:
    resp = both_parsers.get(text_path(8000))
    assert resp.header("content-encoding") is None
    assert resp.values("content-length") == ["8000"]
    assert resp.body == text_body(8000)
    assert resp.vary_tokens == ["accept-encoding"]


# -- negotiation over the wire ---------------------------------------------------

Q_VALUES = [
    ("gzip", "gzip"),
    ("deflate", "deflate"),
    ("gzip;q=0, deflate", "deflate"),
    ("gzip;q=0.5, deflate;q=0.8", "deflate"),
    ("deflate;q=0.8, gzip", "gzip"),
    ("deflate, gzip", "gzip"),
    ("*", "gzip"),
    ("*;q=0", None),
    ("*;q=0.5, gzip;q=0", "deflate"),
    ("identity;q=0", None),
    ("gzip;q=0, deflate;q=0, identity;q=0", None),
    ("identity, gzip;q=0.5", None),
    ("identity;q=0.5, gzip", "gzip"),
    ("x-gzip", "gzip"),
    ("GZIP", "gzip"),
    ("br", None),
    ("br, deflate;q=0.1", "deflate"),
    ("identity", None),
    ("gzip;q=0.000", None),
    ("gzip;q=0.001", "gzip"),
    ("gzip;q=abc, deflate", "deflate"),
    ("gzip ; q=0 , deflate ; q=1", "deflate"),
]


@pytest.mark.parametrize(("accept", "coding"), Q_VALUES, ids=[a for a, _ in Q_VALUES])
def test_q_values_choose_the_coding(both_parsers: Served, accept: str, coding: str | None) -> None:
    resp = both_parsers.get(text_path(6000), f"Accept-Encoding: {accept}")
    assert resp.status == 200
    assert resp.header("content-encoding") == coding
    assert resp.values("content-length") == [str(len(resp.body))]
    assert resp.vary_tokens == ["accept-encoding"]
    assert decode(coding, resp.body) == text_body(6000)


def test_repeated_accept_encoding_lines_are_one_list(both_parsers: Served) -> None:
    resp = both_parsers.get(
        text_path(6000), "Accept-Encoding: gzip;q=0", "Accept-Encoding: deflate"
    )
    assert resp.header("content-encoding") == "deflate"
    assert zlib.decompress(resp.body) == text_body(6000)


VARY = [
    ("Origin", ["origin", "accept-encoding"]),
    ("Accept-Encoding", ["accept-encoding"]),
    ("origin, accept-encoding", ["origin", "accept-encoding"]),
    ("Cookie, Origin", ["cookie", "origin", "accept-encoding"]),
    ("*", ["*"]),
]


@pytest.mark.parametrize("accept", ["gzip", None], ids=["compressed", "identity"])
@pytest.mark.parametrize(("own", "tokens"), VARY, ids=[v for v, _ in VARY])
def test_vary_is_merged_with_the_handlers_own(
    default: Served, own: str, tokens: list[str], accept: str | None
) -> None:
    extra = [f"Accept-Encoding: {accept}"] if accept else []
    resp = default.get(text_path(6000, vary=own), *extra)
    assert resp.header("content-encoding") == accept
    assert len(resp.values("vary")) == 1
    assert resp.vary_tokens == tokens
    assert decode(accept, resp.body) == text_body(6000)


# -- what is left alone ----------------------------------------------------------

LEFT_ALONE = [
    ("below-min-size", MIN_SIZE - 1, {}),
    ("png", 6000, {"type": "image/png"}),
    ("octet-stream", 6000, {"type": "application/octet-stream"}),
    ("no-content-type", 6000, {"type": "none"}),
    ("event-stream-fixed", 6000, {"type": "text/event-stream"}),
    ("no-transform", 6000, {"cc": "no-transform"}),
    ("no-transform-in-list", 6000, {"cc": "public, max-age=60, No-Transform"}),
    ("content-range", 6000, {"status": "206", "cr": "bytes 0-5999/9000"}),
]


@pytest.mark.parametrize(
    ("n", "params"), [c[1:] for c in LEFT_ALONE], ids=[c[0] for c in LEFT_ALONE]
)
def test_ineligible_response_is_sent_as_is(default: Served, n: int, params: dict[str, str]) -> None:
    resp = default.get(text_path(n, **params), "Accept-Encoding: gzip, deflate")
    assert resp.header("content-encoding") is None
    assert resp.values("content-length") == [str(n)]
    assert resp.body == text_body(n)


def test_min_size_is_the_first_compressed_length(default: Served) -> None:
    resp = default.get(text_path(MIN_SIZE), "Accept-Encoding: gzip")
    assert resp.header("content-encoding") == "gzip"
    assert gzip.decompress(resp.body) == text_body(MIN_SIZE)


COMPRESSIBLE = [
    "text/html; charset=utf-8",
    "TEXT/CSS",
    "application/json",
    "application/problem+json",
    "application/atom+xml",
    "image/svg+xml",
]


@pytest.mark.parametrize("ctype", COMPRESSIBLE)
def test_compressible_types_are_compressed(default: Served, ctype: str) -> None:
    resp = default.get(text_path(6000, type=ctype), "Accept-Encoding: gzip")
    assert resp.header("content-type") == ctype
    assert resp.header("content-encoding") == "gzip"
    assert gzip.decompress(resp.body) == text_body(6000)


def test_existing_content_encoding_is_not_encoded_again(default: Served) -> None:
    resp = default.get(text_path(6000, ce="gzip"), "Accept-Encoding: gzip, deflate")
    assert resp.values("content-encoding") == ["gzip"]
    assert resp.values("content-length") == [str(len(resp.body))]
    assert gzip.decompress(resp.body) == text_body(6000)


def test_head_is_answered_without_a_body_or_coding(both_parsers: Served) -> None:
    with both_parsers.wire() as c:
        c.send(request(text_path(20_000), "Accept-Encoding: gzip", method="HEAD"))
        resp = c.read_response("HEAD")
        assert resp.header("content-encoding") is None
        assert resp.values("content-length") == ["20000"]
        # Nothing followed the head: the next response on the connection parses.
        c.send(request(text_path(3000), "Accept-Encoding: gzip"))
        after = c.read_response()
    assert gzip.decompress(after.body) == text_body(3000)


@pytest.mark.parametrize("status", [204, 304])
def test_bodyless_status_is_answered_without_a_body_or_coding(
    both_parsers: Served, status: int
) -> None:
    with both_parsers.wire() as c:
        c.send(request(text_path(6000, status=str(status)), "Accept-Encoding: gzip"))
        resp = c.read_response()
        assert resp.status == status
        assert resp.header("content-encoding") is None
        assert resp.header("transfer-encoding") is None
        c.send(request(text_path(3000), "Accept-Encoding: gzip"))
        after = c.read_response()
    assert gzip.decompress(after.body) == text_body(3000)


def test_strong_etag_is_weakened_only_when_compressed(default: Served) -> None:
    path = text_path(6000, etag='"v1"', ar="bytes")
    compressed = default.get(path, "Accept-Encoding: gzip")
    assert compressed.header("content-encoding") == "gzip"
    assert compressed.values("etag") == ['W/"v1"']
    # Ranges would address the compressed bytes.
    assert compressed.header("accept-ranges") is None
    plain = default.get(path)
    assert plain.header("content-encoding") is None
    assert plain.values("etag") == ['"v1"']
    assert plain.header("accept-ranges") == "bytes"


def test_weak_etag_stays_as_it_is(default: Served) -> None:
    resp = default.get(text_path(6000, etag='W/"v1"'), "Accept-Encoding: deflate")
    assert resp.header("content-encoding") == "deflate"
    assert resp.values("etag") == ['W/"v1"']


# -- configuration ------------------------------------------------------------------


def test_disabled_compression_sends_identity(pool: Pool) -> None:
    served = pool.get("disabled")
    resp = served.get(text_path(20_000), "Accept-Encoding: gzip, deflate")
    assert resp.header("content-encoding") is None
    assert resp.header("vary") is None
    assert resp.values("content-length") == ["20000"]
    assert resp.body == text_body(20_000)
    streamed = served.get("/pieces?count=3", "Accept-Encoding: gzip")
    assert streamed.header("content-encoding") is None
    assert streamed.body == b"".join(text_body(1500 + i) for i in range(3))


@pytest.mark.parametrize("coding", ["gzip", "deflate"])
def test_levels_1_and_9_both_decode(pool: Pool, coding: str) -> None:
    n = 60_000
    fast = pool.get("fast").get(text_path(n), f"Accept-Encoding: {coding}")
    best = pool.get("max").get(text_path(n), f"Accept-Encoding: {coding}")
    assert decode(coding, fast.body) == decode(coding, best.body) == text_body(n)
    assert len(best.body) < len(fast.body)
    if coding == "gzip":
        # RFC 1952 XFL: 4 = fastest algorithm, 2 = maximum compression.
        assert (fast.body[8], best.body[8]) == (4, 2)
    else:
        # RFC 1950 FLEVEL: 0 = fastest, 3 = maximum compression.
        assert (fast.body[1] >> 6, best.body[1] >> 6) == (0, 3)


def test_min_size_zero_compresses_one_byte_but_never_an_empty_body(pool: Pool) -> None:
    served = pool.get("fast")
    one = served.get(text_path(1), "Accept-Encoding: gzip")
    assert one.header("content-encoding") == "gzip"
    assert gzip.decompress(one.body) == text_body(1)
    empty = served.get(text_path(0), "Accept-Encoding: gzip")
    assert empty.header("content-encoding") is None
    assert empty.values("content-length") == ["0"]


# -- streamed responses --------------------------------------------------------------


@pytest.mark.parametrize("coding", ["gzip", "deflate"])
def test_streamed_piece_is_flushed_and_decodable_before_the_next_exists(
    server: Served, coding: str
) -> None:
    token = uuid.uuid4().hex
    go, second = server.directory / f"go-{token}", server.directory / f"second-{token}"
    decoder = zlib.decompressobj(GZIP_WBITS if coding == "gzip" else ZLIB_WBITS)
    with server.wire(timeout=5.0) as c:
        c.send(request(f"/held?token={token}", f"Accept-Encoding: {coding}"))
        resp = c.read_head()
        assert resp.header("transfer-encoding") == "chunked"
        assert resp.header("content-length") is None
        assert resp.header("content-encoding") == coding
        assert resp.vary_tokens == ["accept-encoding"]
        first = b""
        for _ in range(100):
            chunk = c.read_chunk()
            assert chunk is not None, "the stream ended before its first piece"
            first += decoder.decompress(chunk)
            if len(first) >= len(PIECE_1):
                break
        assert first == PIECE_1
        # The app is still waiting for the signal: the piece was flushed, not held.
        assert not second.exists()
        go.touch()
        rest = b""
        for _ in range(100):
            chunk = c.read_chunk()
            if chunk is None:
                break
            rest += decoder.decompress(chunk)
    assert decoder.eof
    assert decoder.unused_data == b""
    assert rest + decoder.flush() == PIECE_2


def test_streamed_response_decodes_as_a_whole(both_parsers: Served) -> None:
    resp = both_parsers.get("/pieces?count=5", "Accept-Encoding: gzip")
    assert resp.header("content-encoding") == "gzip"
    assert resp.header("transfer-encoding") == "chunked"
    assert gzip.decompress(resp.body) == b"".join(text_body(1500 + i) for i in range(5))


def test_streamed_compressed_response_to_http10_is_close_delimited(both_parsers: Served) -> None:
    with both_parsers.wire() as c:
        c.send(request("/pieces?count=3", "Accept-Encoding: deflate", version="1.0"))
        resp = c.read_response()
    assert resp.header("content-encoding") == "deflate"
    assert resp.header("transfer-encoding") is None
    assert resp.header("content-length") is None
    assert zlib.decompress(resp.body) == b"".join(text_body(1500 + i) for i in range(3))


def test_event_stream_is_never_compressed_by_wildcard(both_parsers: Served) -> None:
    resp = both_parsers.get("/events", "Accept-Encoding: gzip, deflate")
    assert resp.header("content-encoding") is None
    assert resp.header("transfer-encoding") == "chunked"
    assert resp.body == b"".join(EVENTS)


def test_sync_generator_stream_is_compressed(default: Served) -> None:
    resp = default.get("/pieces?count=4&sync=1", "Accept-Encoding: deflate")
    assert resp.header("content-encoding") == "deflate"
    assert resp.header("transfer-encoding") == "chunked"
    assert zlib.decompress(resp.body) == b"".join(text_body(1500 + i) for i in range(4))


def test_streamed_response_merges_vary_and_weakens_etag(both_parsers: Served) -> None:
    path = "/pieces?" + urlencode({"count": "2", "vary": "Origin", "etag": '"s1"', "ar": "bytes"})
    resp = both_parsers.get(path, "Accept-Encoding: gzip")
    assert resp.header("content-encoding") == "gzip"
    assert len(resp.values("vary")) == 1
    assert resp.vary_tokens == ["origin", "accept-encoding"]
    assert resp.values("etag") == ['W/"s1"']
    assert resp.header("accept-ranges") is None
    assert gzip.decompress(resp.body) == text_body(1500) + text_body(1501)


STREAM_LEFT_ALONE = [
    ("no-transform", {"cc": "no-transform"}),
    ("png", {"type": "image/png"}),
    ("no-content-type", {"type": "none"}),
]


@pytest.mark.parametrize(
    "params", [c[1] for c in STREAM_LEFT_ALONE], ids=[c[0] for c in STREAM_LEFT_ALONE]
)
def test_ineligible_stream_is_sent_as_is(default: Served, params: dict[str, str]) -> None:
    resp = default.get("/pieces?" + urlencode({"count": "2", **params}), "Accept-Encoding: gzip")
    assert resp.header("content-encoding") is None
    assert resp.body == text_body(1500) + text_body(1501)


@pytest.mark.parametrize(
    ("method", "status"), [("HEAD", "200"), ("GET", "304"), ("GET", "204")], ids=str
)
def test_stream_without_a_body_has_no_coding(
    both_parsers: Served, method: str, status: str
) -> None:
    with both_parsers.wire() as c:
        c.send(request(f"/pieces?count=2&status={status}", "Accept-Encoding: gzip", method=method))
        resp = c.read_response(method)
        assert resp.status == int(status)
        assert resp.header("content-encoding") is None
        c.send(request(text_path(3000), "Accept-Encoding: gzip"))
        after = c.read_response()
    assert gzip.decompress(after.body) == text_body(3000)


def test_handler_headers_are_not_modified_between_responses(default: Served) -> None:
    for accept in ("gzip", None, "deflate", "gzip", None):
        resp = default.get("/shared", *([f"Accept-Encoding: {accept}"] if accept else []))
        assert resp.header("content-encoding") == accept
        assert resp.vary_tokens == ["origin", "accept-encoding"]
        assert resp.values("etag") == (['W/"s1"'] if accept else ['"s1"'])
        assert decode(accept, resp.body) == text_body(6000)


# -- connections ----------------------------------------------------------------------


def test_keep_alive_after_compressed_responses(server: Served) -> None:
    steps: list[tuple[str, str | None, bytes]] = [
        (text_path(20_000), "gzip", text_body(20_000)),
        (text_path(SLICED_BYTES), "deflate", text_body(SLICED_BYTES)),
        ("/pieces?count=2", "gzip", text_body(1500) + text_body(1501)),
        (text_path(500), "gzip", text_body(500)),
        (text_path(SLICED_BYTES), "gzip", text_body(SLICED_BYTES)),
        (text_path(7000), None, text_body(7000)),
        (text_path(7000), "deflate", text_body(7000)),
    ]
    with server.wire() as c:
        for path, coding, expected in steps:
            c.send(request(path, f"Accept-Encoding: {coding or 'identity'}"))
            resp = c.read_response()
            assert resp.status == 200, path
            assert resp.header("connection") is None, path
            sent_coding = resp.header("content-encoding")
            assert sent_coding == (coding if len(expected) >= MIN_SIZE else None), path
            assert decode(sent_coding, resp.body) == expected, path


def test_pipelined_compressed_responses_come_back_in_order(server: Served) -> None:
    sizes = [SLICED_BYTES, 3000, 100_000, 2000]
    with server.wire() as c:
        c.send(b"".join(request(text_path(n), "Accept-Encoding: gzip") for n in sizes))
        for n in sizes:
            resp = c.read_response()
            assert resp.header("content-encoding") == "gzip"
            assert gzip.decompress(resp.body) == text_body(n)


@pytest.mark.parametrize("n", [20_000, SLICED_BYTES], ids=["on-loop", "sliced"])
def test_http10_client_gets_compressed_fixed_bodies(both_parsers: Served, n: int) -> None:
    with both_parsers.wire() as c:
        c.send(request(text_path(n), "Accept-Encoding: gzip", version="1.0"))
        resp = c.read_response()
        assert resp.header("content-encoding") == "gzip"
        assert resp.values("content-length") == [str(len(resp.body))]
        assert gzip.decompress(resp.body) == text_body(n)
        assert c.read_until_close() == b""


def test_http10_keep_alive_after_a_compressed_body(default: Served) -> None:
    with default.wire() as c:
        for n in (20_000, SLICED_BYTES, 3000):
            c.send(
                request(
                    text_path(n),
                    "Accept-Encoding: deflate",
                    "Connection: keep-alive",
                    version="1.0",
                )
            )
            resp = c.read_response()
            assert (resp.header("connection") or "").lower() == "keep-alive"
            assert zlib.decompress(resp.body) == text_body(n)


LIMIT_CASES = [
    pytest.param(text_path(SLICED_BYTES, type="image/png"), None, id="identity-big"),
    pytest.param(text_path(20_000), "gzip", id="compressed-on-loop"),
    pytest.param(
        text_path(SLICED_BYTES),
        "gzip",
        id="compressed-sliced",
    ),
    pytest.param(
        "/pieces?count=2",
        "gzip",
        id="compressed-stream",
    ),
]


@pytest.mark.parametrize(("third", "coding"), LIMIT_CASES)
def test_requests_per_connection_counts_compressed_responses(
    pool: Pool, third: str, coding: str | None
) -> None:
    """requests_per_connection = 3, sync handler: the third response closes, whatever it is."""
    served = pool.get("limited")
    with served.wire() as c:
        for path in (text_path(10), text_path(10)):
            c.send(request(path, "Accept-Encoding: gzip"))
            assert c.read_response().header("connection") is None
        c.send(request(third, "Accept-Encoding: gzip"))
        resp = c.read_response()
        assert resp.header("content-encoding") == coding
        assert (resp.header("connection") or "").lower() == "close"
        assert c.read_until_close() == b""


# -- a big body is compressed off the event loop ------------------------------------


def test_big_body_is_compressed_in_slices_while_others_are_served(pool: Pool) -> None:
    """-w 1: the download and the small requests share one worker's event loop."""
    served = pool.get("max")
    assert served.get("/big?prepare=1").body == b"ready"
    identity = served.get("/big").body
    assert len(identity) >= BIG_BYTES
    started = time.perf_counter()
    zlib.compress(identity, 9, GZIP_WBITS)
    compress_s = time.perf_counter() - started
    # Too fast a machine would make the comparison meaningless.
    assert compress_s > 0.05, f"level 9 of {len(identity)} bytes took only {compress_s:.3f} s"

    download: dict[str, Any] = {}

    def fetch_big() -> None:
        try:
            with served.wire(timeout=30.0) as c:
                download["sent"] = time.perf_counter()
                c.send(request("/big", "Accept-Encoding: gzip"))
                head = c.read_head()
                download["head"] = time.perf_counter()
                download["resp"] = c.read_body(head)
                download["done"] = time.perf_counter()
        except BaseException as exc:
            download["error"] = exc

    small: list[tuple[float, float]] = []  # (start, latency)
    with served.wire() as c:
        c.send(request(text_path(10)))
        c.read_response()
        reader = threading.Thread(target=fetch_big, daemon=True)
        reader.start()
        deadline = time.monotonic() + 30
        for _ in range(5000):
            if not reader.is_alive() or time.monotonic() > deadline:
                break
            t0 = time.perf_counter()
            c.send(request(text_path(10)))
            assert c.read_response().body == text_body(10)
            small.append((t0, time.perf_counter() - t0))
            # A probe every few ms: enough to catch a stall, without competing for the CPU.
            time.sleep(PROBE_INTERVAL_S)
    reader.join(timeout=30)
    assert "error" not in download, download.get("error")
    resp = download["resp"]
    assert resp.header("content-encoding") == "gzip"
    assert gzip.decompress(resp.body) == identity
    # Requests that started after the big one and finished before its head: they
    # were answered while the big body was being compressed.
    during = [lat for t0, lat in small if t0 >= download["sent"] and t0 + lat <= download["head"]]
    assert len(during) >= 10, (len(small), download["head"] - download["sent"])
    worst = max(lat for _, lat in small)
    assert worst < compress_s / 2, (
        f"a small request waited {worst * 1000:.0f} ms; level 9 of the big body takes "
        f"{compress_s * 1000:.0f} ms; {len(during)} small requests during the compression"
    )


def test_client_gone_during_sliced_compression_leaves_the_worker_serving(pool: Pool) -> None:
    served = pool.get("max")
    assert served.get("/big?prepare=1").body == b"ready"
    spawned = served.proc.log().count("spawned")
    with served.wire() as c:
        c.send(request("/big", "Accept-Encoding: gzip"))
    # The compression finishes (slice by slice) and the write finds the peer gone.
    for _ in range(3):
        resp = served.get(text_path(3000), "Accept-Encoding: gzip")
        assert gzip.decompress(resp.body) == text_body(3000)
    resp = served.get("/big", "Accept-Encoding: gzip")
    assert len(gzip.decompress(resp.body)) >= BIG_BYTES
    assert served.proc.log().count("spawned") == spawned
    assert "Traceback" not in served.proc.log()
