"""The listen-socket helpers that need no socket: addresses and what a config asks for."""

from __future__ import annotations

import pytest

from prefork.config import Config
from prefork.errors import BindError
from prefork.master.listeners import bind_spec, parse_address


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:8080", ("127.0.0.1", 8080)),
        ("0.0.0.0:0", ("0.0.0.0", 0)),
        ("[::1]:443", ("::1", 443)),
        ("localhost:80", ("localhost", 80)),
        # The same reading as -b and the config's: no host is 127.0.0.1.
        (":9000", ("127.0.0.1", 9000)),
        ("8080", ("127.0.0.1", 8080)),
    ],
    ids=["ipv4", "port-0", "ipv6", "name", "no-host", "port-only"],
)
def test_parse_address(text: str, expected: tuple[str, int]) -> None:
    assert parse_address(text) == expected


@pytest.mark.parametrize("text", ["", "host:", "host:http", "host:70000", "[::1]"])
def test_parse_address_rejects(text: str) -> None:
    with pytest.raises(BindError, match="expected HOST:PORT"):
        parse_address(text)


def test_bind_spec_sees_every_address_and_the_backlog() -> None:
    base = Config.build({"port": 0})
    assert bind_spec(base) == ((("127.0.0.1", 0),), 256)
    assert bind_spec(Config.build({"port": 0, "workers": 4})) == bind_spec(base)
    assert bind_spec(Config.build({"port": 1})) != bind_spec(base)
    assert bind_spec(Config.build({"port": 0, "binds": ["[::1]:0"]})) != bind_spec(base)
    assert bind_spec(Config.build({"port": 0, "backlog": 10})) != bind_spec(base)
