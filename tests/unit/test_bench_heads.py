"""bench/heads.py: the varied request heads are distinct, realistic and valid for prefork."""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

import pytest

from prefork.config import Config
from prefork.http.parsers import make_parser
from prefork.http.protocol import RequestReader
from prefork.http.request import Limits, parse_args

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import heads

HOST = "127.0.0.1:8080"
FIELDS = (
    "host",
    "user-agent",
    "accept",
    "accept-language",
    "cookie",
    "x-request-id",
    "traceparent",
    "x-forwarded-for",
    "x-forwarded-proto",
)


def test_heads_are_distinct_deterministic_and_about_600_bytes() -> None:
    made = heads.generate()
    assert len(made) == heads.DEFAULT_COUNT
    assert len(set(made)) == len(made)
    assert heads.generate(50) == made[:50]
    sizes = [len(h) for h in made]
    assert 550 <= statistics.median(sizes) <= 650
    assert max(sizes) < 1024
    # The fields that differ behind a load balancer differ in every head.
    for field in (b"X-Request-Id: ", b"traceparent: ", b"Cookie: "):
        values = {h.split(field, 1)[1].split(b"\r\n", 1)[0] for h in made}
        assert len(values) == len(made), field


@pytest.mark.parametrize("backend", ["httptools", "h11"])
def test_prefork_parses_every_head(backend: str) -> None:
    cfg = Config.build({"http": backend})
    reader = RequestReader(make_parser(backend), Limits.from_config(cfg))
    for head in heads.generate():
        reader.feed(heads.for_host(head, HOST))
        req = reader.take()
        assert req.method == "GET"
        assert req.path == "/hello"
        assert len(parse_args(req.query)) == 2
        assert req.keep_alive
        assert req.headers["host"] == HOST
        assert all(name in req.headers for name in FIELDS)
        assert not reader.requests


def test_lua_script_and_data_file(tmp_path: Path) -> None:
    script = heads.write(tmp_path, 300)
    text = script.read_text()
    assert "@FILE@" not in text
    assert str(tmp_path / "heads.bin") in text
    data = (tmp_path / "heads.bin").read_bytes()
    # The Lua splits the file at each head's end: the same heads come back.
    split = [part + heads.HEAD_END for part in data.split(heads.HEAD_END)[:-1]]
    assert split == heads.generate(300)
    assert all(h.count(heads.HOST_MARK) == 1 for h in split)
