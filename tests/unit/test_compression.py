"""prefork.http.compression: Accept-Encoding negotiation, the policy, headers, encoders."""

from __future__ import annotations

import asyncio
import gzip
import random
import zlib
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from prefork.config import DEFAULT_COMPRESSION, Config
from prefork.engine.slices import compress_in_slices
from prefork.http.compression import (
    SLICE_BYTES,
    Encoder,
    Policy,
    apply_headers,
    compress_body,
    make_encoder,
    negotiate_encoding,
)

# --- negotiate_encoding --------------------------------------------------------

NEGOTIATION = [
    # (Accept-Encoding value, expected coding, id)
    (None, None, "absent"),
    ("", None, "empty"),
    ("   ", None, "blank"),
    ("gzip", "gzip", "gzip"),
    ("deflate", "deflate", "deflate"),
    ("gzip, deflate", "gzip", "both"),
    ("deflate, gzip", "gzip", "tie-prefers-gzip"),
    ("gzip, deflate, br, zstd", "gzip", "browser"),
    ("br", None, "only-unsupported"),
    ("br, zstd;q=0.9, compress", None, "several-unsupported"),
    ("compress, deflate;q=0.1", "deflate", "unsupported-and-deflate"),
    # q-values
    ("gzip;q=0.5, deflate", "deflate", "q-higher-deflate"),
    ("gzip;q=0.8, deflate;q=0.9", "deflate", "q-both-weighted"),
    ("gzip;q=1.0, deflate;q=0.999", "gzip", "q-three-decimals"),
    ("gzip;q=0.4, deflate;q=0.4", "gzip", "q-tie-prefers-gzip"),
    ("gzip;q=0.001", "gzip", "q-smallest-positive"),
    ("gzip;q=0", None, "q0-refuses"),
    ("gzip;q=0.000", None, "q0-three-decimals"),
    ("gzip;q=0., deflate;q=0.", None, "q0-bare-dot"),
    ("gzip;q=0, deflate", "deflate", "q0-gzip-deflate-ok"),
    ("gzip;q=1.000", "gzip", "q1-three-zeros"),
    # *
    ("*", "gzip", "star"),
    ("*;q=0", None, "star-q0"),
    ("*, gzip;q=0", "deflate", "star-minus-gzip"),
    ("*;q=0, gzip", "gzip", "star-q0-but-gzip"),
    ("*;q=0.5, deflate", "deflate", "star-below-named"),
    ("deflate;q=0.2, *;q=0.5", "gzip", "star-above-named"),
    ("br, *;q=0.1", "gzip", "star-low-q"),
    # identity
    ("identity", None, "identity"),
    ("identity;q=0", None, "identity-q0-alone"),
    ("identity;q=0, gzip", "gzip", "identity-q0-gzip"),
    ("identity;q=0, *;q=0", None, "identity-q0-star-q0"),
    ("gzip, identity", "gzip", "identity-tie-compresses"),
    ("gzip, identity;q=0.5", "gzip", "identity-lower"),
    ("gzip;q=0.5, identity", None, "identity-preferred"),
    ("*;q=0.1, identity;q=0.5", None, "identity-preferred-over-star"),
    # x-gzip
    ("x-gzip", "gzip", "x-gzip"),
    ("X-GZIP", "gzip", "x-gzip-upper"),
    ("x-gzip;q=0, gzip", None, "x-gzip-refusal-wins"),
    ("x-gzip;q=0.3, deflate;q=0.2", "gzip", "x-gzip-weighted"),
    # case and whitespace
    ("GZIP", "gzip", "upper"),
    ("Deflate;Q=0.5, GZip;Q=0.4", "deflate", "mixed-case-and-Q"),
    ("  gzip ;  q=0.5  ,  deflate;q=0.4 ", "gzip", "spaces"),
    ("gzip\t;\tq=0.3,\tdeflate;q=0.2", "gzip", "tabs"),
    ("gzip; q = 0.5, deflate;q=0.6", "deflate", "spaces-around-equals"),
    # duplicates: the lowest weight wins, so any refusal sticks
    ("gzip, gzip;q=0", None, "duplicate-refusal-last"),
    ("gzip;q=0, deflate, gzip", "deflate", "duplicate-refusal-first"),
    ("deflate;q=0.5, deflate;q=0.9, gzip;q=0.6", "gzip", "duplicate-lowest-kept"),
    ("gzip, gzip", "gzip", "duplicate-same"),
    # junk: ignored, never fatal
    ("gzip;q=abc", None, "junk-q-word"),
    ("gzip;q=abc, deflate", "deflate", "junk-q-word-then-deflate"),
    ("gzip;q=abc, *", "deflate", "junk-q-not-readmitted-by-star"),
    (";;;", None, "junk-semicolons"),
    (";;;, gzip", "gzip", "junk-semicolons-then-gzip"),
    (",,,gzip,,,", "gzip", "junk-empty-members"),
    ("gzip;", "gzip", "junk-trailing-semicolon"),
    ("gzip;;q=0.5, deflate;q=0.4", "gzip", "junk-double-semicolon"),
    ("gzip;level=9", "gzip", "junk-unknown-param"),
    ("gzip;q", "gzip", "junk-param-without-value"),
    ("gz ip, deflate", "deflate", "junk-space-in-name"),
    ("gzip/1, deflate", "deflate", "junk-non-token-name"),
    ("gzïp, deflate", "deflate", "junk-non-ascii-name"),
    ("gzip;q=-0.5", None, "junk-q-negative"),
    ("gzip;q=.5", None, "junk-q-no-leading-digit"),
    ("gzip;q=5e-1", None, "junk-q-exponent"),
    ("gzip;q=0.5;q=0", None, "junk-two-q-params"),
    # q > 1: outside the grammar, so refused
    ("gzip;q=2", None, "q-above-1"),
    ("gzip;q=1.5, deflate;q=0.1", "deflate", "q-above-1-then-deflate"),
    ("gzip;q=1.001", None, "q-just-above-1"),
    # q with 4 decimals: outside the grammar, so refused
    ("gzip;q=0.5000", None, "q-4-decimals"),
    ("gzip;q=0.0001, deflate;q=0.001", "deflate", "q-4-decimals-then-deflate"),
]


@pytest.mark.parametrize(
    ("accept_encoding", "expected"),
    [(value, expected) for value, expected, _ in NEGOTIATION],
    ids=[case_id for _, _, case_id in NEGOTIATION],
)
def test_negotiate_encoding_table(accept_encoding: str | None, expected: str | None) -> None:
    assert negotiate_encoding(accept_encoding) == expected


def test_negotiate_encoding_is_stable_past_the_cache_bound() -> None:
    for n in range(1000):
        assert negotiate_encoding(f"gzip;q=0.{n % 1000:03d}, br;v={n}") == (
            "gzip" if n % 1000 else None
        )
    assert negotiate_encoding("deflate") == "deflate"


_CODING_NAMES = ["gzip", "x-gzip", "GZIP", "deflate", "Deflate", "identity", "*", "br"]
_QVALUES = st.one_of(
    st.sampled_from(["0", "0.", "0.0", "0.00", "0.000", "1", "1.0", "1.000"]),
    st.integers(0, 1000).map(lambda n: "1" if n == 1000 else f"0.{n:03d}".rstrip("0")),
)
_OWS = st.sampled_from(["", " ", "  ", "\t"])


@st.composite
def _member(draw: st.DrawFn) -> tuple[str, str, str | None]:
    """One Accept-Encoding member: (text, canonical coding, qvalue or None)."""
    name = draw(st.sampled_from(_CODING_NAMES))
    qvalue = draw(st.none() | _QVALUES)
    text = name if qvalue is None else f"{name}{draw(_OWS)};{draw(_OWS)}q={qvalue}"
    canonical = {"x-gzip": "gzip"}.get(name.lower(), name.lower())
    return f"{draw(_OWS)}{text}{draw(_OWS)}", canonical, qvalue


def _is_zero(qvalue: str | None) -> bool:
    return qvalue is not None and float(qvalue) == 0


@given(
    members=st.lists(_member(), max_size=8),
    junk=st.lists(st.text(alphabet=st.characters(exclude_characters=",")), max_size=3),
)
def test_choice_never_picks_a_coding_refused_with_q0(
    members: list[tuple[str, str, str | None]], junk: list[str]
) -> None:
    header = ",".join([text for text, _, _ in members] + junk)
    refused = {coding for _, coding, qvalue in members if _is_zero(qvalue)}
    assert negotiate_encoding(header) not in refused


@given(members=st.lists(_member(), max_size=8))
def test_choice_never_picks_an_unlisted_coding_without_an_acceptable_star(
    members: list[tuple[str, str, str | None]],
) -> None:
    header = ",".join(text for text, _, _ in members)
    named = {coding for _, coding, _ in members}
    star = [qvalue for _, coding, qvalue in members if coding == "*"]
    choice = negotiate_encoding(header)
    assert choice in (None, "gzip", "deflate")
    if choice is not None and choice not in named:
        assert star
        assert not any(_is_zero(q) for q in star)


# --- Policy.choose -------------------------------------------------------------


def _policy(**overrides: Any) -> Policy:
    return Policy(Config.build({"compression": overrides}).compression)


JSON = {"content-type": "application/json"}
BIG = 4096


def test_policy_reads_the_config() -> None:
    policy = _policy(level=3, min_size=10)
    assert (policy.enabled, policy.level, policy.min_size) == (True, 3, 10)


def test_policy_accepts_a_plain_dict() -> None:
    assert Policy(DEFAULT_COMPRESSION).choose("GET", 200, "gzip", JSON, BIG) == ("gzip", True)


def test_eligible_response_is_compressed_with_vary() -> None:
    assert _policy().choose("GET", 200, "gzip, deflate", JSON, BIG) == ("gzip", True)


def test_client_without_accepted_coding_still_gets_vary() -> None:
    assert _policy().choose("GET", 200, "br", JSON, BIG) == (None, True)


def test_request_without_accept_encoding_gets_identity_with_vary() -> None:
    assert _policy().choose("GET", 200, None, JSON, BIG) == (None, True)


def test_disabled_policy_never_compresses() -> None:
    assert _policy(enabled=False).choose("GET", 200, "gzip", JSON, BIG) == (None, False)


@pytest.mark.parametrize(
    ("min_size", "body_len", "expected"),
    [
        (1024, 1023, (None, False)),
        (1024, 1024, ("gzip", True)),
        (1024, 13, (None, False)),
        (1024, None, ("gzip", True)),
        (0, 1, ("gzip", True)),
        (0, 0, (None, False)),
        (0, None, ("gzip", True)),
    ],
    ids=[
        "below-min",
        "at-min",
        "tiny",
        "streamed-ignores-min",
        "min0-one-byte",
        "min0-empty-body",
        "min0-streamed",
    ],
)
def test_min_size(min_size: int, body_len: int | None, expected: tuple[str | None, bool]) -> None:
    assert _policy(min_size=min_size).choose("GET", 200, "gzip", JSON, body_len) == expected


@pytest.mark.parametrize(
    "content_type",
    [
        "text/html",
        "text/plain; charset=utf-8",
        "TEXT/HTML; Charset=UTF-8",
        " text/css ",
        "text/csv",
        "text/javascript",
        "application/json",
        "application/json;charset=utf-8",
        "application/ld+json",
        "application/problem+json",
        "application/javascript",
        "application/xml",
        "application/atom+xml",
        "application/xhtml+xml",
        "image/svg+xml",
        "application/wasm",
    ],
)
def test_compressible_default_types(content_type: str) -> None:
    headers = {"content-type": content_type}
    assert _policy().choose("GET", 200, "gzip", headers, BIG) == ("gzip", True)


@pytest.mark.parametrize(
    "content_type",
    [
        "image/png",
        "image/jpeg",
        "image/webp",
        "application/zip",
        "application/gzip",
        "application/x-7z-compressed",
        "application/octet-stream",
        "application/pdf",
        "font/woff2",
        "video/mp4",
        "text/event-stream",
        "text/event-stream; charset=utf-8",
        "application/jsonx",
        "",
    ],
)
def test_incompressible_default_types(content_type: str) -> None:
    headers = {"content-type": content_type}
    assert _policy().choose("GET", 200, "gzip", headers, BIG) == (None, False)


def test_missing_content_type_is_not_compressed() -> None:
    assert _policy().choose("GET", 200, "gzip", {}, BIG) == (None, False)


@pytest.mark.parametrize(
    ("types", "content_type", "expected"),
    [
        (["application/x-custom"], "application/x-custom; v=1", True),
        (["application/x-custom"], "text/html", False),
        (["Application/X-Custom; charset=utf-8"], "application/x-custom", True),
        (["text/*"], "text/anything", True),
        (["text/*"], "texts/html", False),
        (["application/*+json"], "application/vnd.api+json", True),
        (["application/*+json"], "application/json", False),
        (["*/*"], "image/png", True),
        (["*/*"], "text/event-stream", False),
        (["text/*"], "text/event-stream", False),
        (["text/event-stream"], "text/event-stream", True),
        ([], "text/html", False),
    ],
    ids=[
        "exact-with-params",
        "exact-other",
        "entry-normalised",
        "type-wildcard",
        "type-wildcard-prefix-only",
        "suffix-wildcard",
        "suffix-wildcard-needs-suffix",
        "everything",
        "everything-but-event-stream",
        "text-wildcard-not-event-stream",
        "event-stream-explicit-opt-in",
        "empty-list",
    ],
)
def test_configured_types(types: list[str], content_type: str, expected: bool) -> None:
    policy = _policy(types=types)
    assert policy.type_allowed(content_type) is expected
    result = policy.choose("GET", 200, "gzip", {"content-type": content_type}, BIG)
    assert result == (("gzip", True) if expected else (None, False))


def test_content_type_decisions_survive_the_cache_bound() -> None:
    policy = _policy()
    for n in range(1000):
        assert policy.type_allowed(f"text/x-{n}")
        assert not policy.type_allowed(f"image/x-{n}")


@pytest.mark.parametrize(
    "encoding", ["gzip", "br", "identity", ""], ids=["gzip", "br", "identity", "empty"]
)
def test_handler_content_encoding_is_left_alone(encoding: str) -> None:
    headers = {**JSON, "content-encoding": encoding}
    assert _policy().choose("GET", 200, "gzip", headers, BIG) == (None, False)


def test_partial_content_is_left_alone() -> None:
    headers = {**JSON, "content-range": "bytes 0-4095/10000"}
    assert _policy().choose("GET", 206, "gzip", headers, BIG) == (None, False)


@pytest.mark.parametrize(
    ("cache_control", "compressed"),
    [
        ("no-transform", False),
        ("No-Transform", False),
        ("public, no-transform, max-age=60", False),
        ("max-age=0,NO-TRANSFORM", False),
        (" no-transform ", False),
        ("no-cache", True),
        ("private, max-age=60", True),
        ("no-transformation", True),
        ("", True),
    ],
    ids=[
        "alone",
        "mixed-case",
        "in-list",
        "upper-no-space",
        "padded",
        "no-cache",
        "other-directives",
        "longer-token",
        "empty",
    ],
)
def test_no_transform(cache_control: str, compressed: bool) -> None:
    headers = {**JSON, "cache-control": cache_control}
    result = _policy().choose("GET", 200, "gzip", headers, BIG)
    assert result == (("gzip", True) if compressed else (None, False))


def test_head_is_not_compressed() -> None:
    assert _policy().choose("HEAD", 200, "gzip", JSON, BIG) == (None, False)


@pytest.mark.parametrize("status", [100, 101, 103, 204, 304])
def test_statuses_without_content_are_not_compressed(status: int) -> None:
    assert _policy().choose("GET", status, "gzip", JSON, BIG) == (None, False)


@pytest.mark.parametrize("status", [200, 201, 203, 404, 500])
def test_statuses_with_content_are_compressed(status: int) -> None:
    assert _policy().choose("POST", status, "gzip", JSON, BIG) == ("gzip", True)


# --- apply_headers -------------------------------------------------------------


@pytest.mark.parametrize(
    ("vary_before", "vary_after"),
    [
        (None, "Accept-Encoding"),
        ("", "Accept-Encoding"),
        ("Origin", "Origin, Accept-Encoding"),
        ("Origin, Cookie", "Origin, Cookie, Accept-Encoding"),
        ("accept-encoding", "accept-encoding"),
        ("Origin, Accept-Encoding", "Origin, Accept-Encoding"),
        ("Origin,ACCEPT-ENCODING ", "Origin,ACCEPT-ENCODING "),
        ("*", "*"),
        ("Origin, *", "Origin, *"),
    ],
    ids=[
        "absent",
        "empty",
        "one",
        "two",
        "already-lower",
        "already-in-list",
        "already-upper",
        "star",
        "star-in-list",
    ],
)
def test_vary_merge(vary_before: str | None, vary_after: str) -> None:
    headers = {"content-type": "text/html"}
    if vary_before is not None:
        headers["vary"] = vary_before
    apply_headers(headers, None, True)
    assert headers["vary"] == vary_after


def test_no_vary_when_not_eligible() -> None:
    headers = {"content-type": "image/png", "content-length": "10"}
    apply_headers(headers, None, False)
    assert headers == {"content-type": "image/png", "content-length": "10"}


def test_compressed_headers() -> None:
    headers = {
        "content-type": "text/html",
        "content-length": "5000",
        "etag": '"abc"',
        "accept-ranges": "bytes",
    }
    apply_headers(headers, "gzip", True)
    assert headers == {
        "content-type": "text/html",
        "content-encoding": "gzip",
        "etag": 'W/"abc"',
        "vary": "Accept-Encoding",
    }


def test_weak_etag_stays_as_is() -> None:
    headers = {"etag": 'W/"abc"'}
    apply_headers(headers, "deflate", True)
    assert headers["etag"] == 'W/"abc"'
    assert headers["content-encoding"] == "deflate"


def test_identity_keeps_strong_etag_and_length() -> None:
    headers = {"etag": '"abc"', "content-length": "5000"}
    apply_headers(headers, None, True)
    assert headers == {"etag": '"abc"', "content-length": "5000", "vary": "Accept-Encoding"}


# --- encoders ------------------------------------------------------------------

TEXT = b"".join(
    b'{"id": %d, "name": "item %d", "tags": ["a", "b"]}\n' % (n, n) for n in range(2000)
)


@pytest.mark.parametrize("level", range(1, 10))
def test_gzip_body_round_trip(level: int) -> None:
    out = compress_body("gzip", level, TEXT)
    assert out[:2] == b"\x1f\x8b"
    assert len(out) < len(TEXT)
    assert gzip.decompress(out) == TEXT


@pytest.mark.parametrize("level", range(1, 10))
def test_deflate_body_is_zlib_format(level: int) -> None:
    out = compress_body("deflate", level, TEXT)
    assert out[0] & 0x0F == 8  # RFC 1950 CMF: method 8 = deflate, i.e. the zlib wrapper
    assert zlib.decompress(out) == TEXT


def test_empty_body_round_trip() -> None:
    assert gzip.decompress(compress_body("gzip", 6, b"")) == b""
    assert zlib.decompress(compress_body("deflate", 6, b"")) == b""


@pytest.mark.parametrize("coding", ["br", "identity", "GZIP"])
def test_unknown_coding_is_a_value_error(coding: str) -> None:
    with pytest.raises(ValueError, match="unsupported content coding"):
        make_encoder(coding, 6)
    with pytest.raises(ValueError, match="unsupported content coding"):
        compress_body(coding, 6, b"x")


_WBITS = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}


def _stream_round_trip(coding: str, chunks: list[bytes]) -> None:
    """Each flush() makes everything so far decodable; finish() ends the stream."""
    encoder = make_encoder(coding, 6)
    assert isinstance(encoder, Encoder)
    decoder = zlib.decompressobj(_WBITS[coding])
    sent = b""
    decoded = b""
    for chunk in chunks:
        sent += chunk
        decoded += decoder.decompress(encoder.compress(chunk) + encoder.flush())
        assert decoded == sent
    decoded += decoder.decompress(encoder.finish())
    assert decoded == sent
    assert decoder.eof
    assert decoder.unused_data == b""


@pytest.mark.parametrize("coding", ["gzip", "deflate"])
def test_streamed_encoder_flushes_per_chunk(coding: str) -> None:
    chunks = [b"data: tick %d\n\n" % n for n in range(50)] + [TEXT, b"", b"end"]
    _stream_round_trip(coding, chunks)


@pytest.mark.parametrize("coding", ["gzip", "deflate"])
def test_streamed_encoder_with_no_chunks(coding: str) -> None:
    _stream_round_trip(coding, [])


def test_streamed_gzip_is_one_gzip_member() -> None:
    encoder = make_encoder("gzip", 6)
    out = b"".join(encoder.compress(c) + encoder.flush() for c in (b"abc", b"def")) + (
        encoder.finish()
    )
    assert gzip.decompress(out) == b"abcdef"


@given(
    coding=st.sampled_from(["gzip", "deflate"]),
    chunks=st.lists(st.binary(max_size=2048), max_size=10),
)
def test_streamed_encoder_round_trips_any_chunks(coding: str, chunks: list[bytes]) -> None:
    _stream_round_trip(coding, chunks)


@pytest.mark.parametrize("coding", ["gzip", "deflate"])
@pytest.mark.parametrize(
    "size", [0, 1, SLICE_BYTES - 1, SLICE_BYTES, SLICE_BYTES + 1, 3 * SLICE_BYTES + 5]
)
async def test_compress_in_slices_round_trips(coding: str, size: int) -> None:
    data = bytes(random.Random(size).choices(b"abcdefgh {}:,", k=size))
    out = await compress_in_slices(coding, 6, data, asyncio.Lock())
    assert zlib.decompress(out, 31 if coding == "gzip" else 15) == data


async def test_compress_in_slices_yields_between_slices_one_body_at_a_time() -> None:
    turn = asyncio.Lock()
    data = b"x" * (3 * SLICE_BYTES)
    events: list[str] = []

    async def body(name: str) -> None:
        events.append(f"{name} start")
        await compress_in_slices("gzip", 1, data, turn)
        events.append(f"{name} done")

    async def other_work() -> None:
        for _ in range(4):
            events.append("tick")
            await asyncio.sleep(0)

    await asyncio.gather(body("a"), body("b"), other_work())
    # Other work ran while "a" was being compressed (between its slices), and "b"
    # waited for "a" to finish: never two bodies side by side.
    assert events.index("a done") < events.index("b done")
    ticks_during_a = events[events.index("a start") : events.index("a done")].count("tick")
    assert ticks_during_a >= 2


def test_body_cache_returns_what_was_put_and_drops_the_oldest() -> None:
    from prefork.http.compression import BodyCache

    cache = BodyCache(max_bytes=100)
    cache.put("gzip", b"a" * 40, b"x")
    assert cache.get("gzip", b"a" * 40) == b"x"
    assert cache.get("deflate", b"a" * 40) is None
    cache.put("gzip", b"b" * 40, b"y")
    cache.get("gzip", b"a" * 40)  # now the most recently used
    cache.put("gzip", b"c" * 40, b"z")  # over 100 bytes: "b" goes
    assert cache.get("gzip", b"b" * 40) is None
    assert cache.get("gzip", b"a" * 40) == b"x"
    assert cache.get("gzip", b"c" * 40) == b"z"
    cache.put("gzip", b"d" * 200, b"w")  # bigger than the whole cache: not kept
    assert cache.get("gzip", b"d" * 200) is None
