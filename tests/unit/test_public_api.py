"""The public surface: ``prefork.__all__``, ``prefork.new`` and ``Server.configure``."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import prefork
from prefork import log


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    """new() and configure() set up the "prefork" logger for the process: put it back."""
    root = logging.getLogger(log.ROOT)
    saved = (list(root.handlers), root.level, root.propagate, log._handler)
    yield
    root.handlers[:], root.level, root.propagate, log._handler = saved


def handle(method: str, query: str, args: Any, headers: Any, body: bytes, ctx: Any) -> Any:
    return "Hello!", 200, {"content-type": "text/plain"}


def test_all_is_pinned() -> None:
    assert prefork.__all__ == ["BUILD", "COMPILED", "Server", "__version__", "new"]
    for name in prefork.__all__:
        assert hasattr(prefork, name)


def test_version_is_a_string() -> None:
    assert isinstance(prefork.__version__, str)
    assert prefork.__version__.count(".") == 2


# -- prefork.new --------------------------------------------------------------------


@pytest.mark.parametrize(
    "config",
    [None, {}, {"port": 0, "workers": 4}, {"compression": {"enabled": False}}],
    ids=["none", "empty", "keys", "nested"],
)
def test_new_returns_a_server(config: Any) -> None:
    server, err = prefork.new(config, handle)
    assert err is None
    assert isinstance(server, prefork.Server)
    assert server.app is handle


def test_new_takes_config_keys() -> None:
    server, _ = prefork.new({"port": 0, "workers": 4, "log_level": "warn"}, handle)
    assert server is not None
    assert (server.cfg.port, server.cfg.workers, server.cfg.log_level) == (0, 4, "warn")
    assert server.port == 0  # before serve(): the configured port
    assert server.cfg.request_line_limit == 8192  # the rest: defaults


def test_new_accepts_an_async_handler_and_a_module_spec() -> None:
    async def ahandle(*args: Any) -> Any:
        return None, 204, None

    assert prefork.new({}, ahandle)[1] is None
    assert prefork.new({}, "app:handle")[1] is None  # imported by each worker


def test_new_sets_the_log_level() -> None:
    prefork.new({"log_level": "error"}, handle)
    assert logging.getLogger("prefork").level == logging.ERROR


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"port": "80"}, "port: expected an integer, got '80'"),
        ({"workers": 0}, "workers: must be >= 1, got 0"),
        ({"prot": 80}, "prot: unknown config key"),
        ({"compression": {"level": 42}}, "compression.level: must be 1 to 9, got 42"),
        ({"ssl": {"hosts": {}}}, "ssl.default: required"),
    ],
    ids=["type", "range", "unknown", "nested", "ssl-shape"],
)
def test_new_bad_config_returns_err(config: dict[str, Any], message: str) -> None:
    server, err = prefork.new(config, handle)
    assert server is None
    assert err is not None
    assert err.startswith(message)


def test_new_unreadable_tls_file_returns_err_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / "missing.pem"
    server, err = prefork.new(
        {"ssl": {"default": {"cert": str(missing), "key": str(missing)}}}, handle
    )
    assert server is None
    assert err is not None
    assert "ssl.default" in err
    assert str(missing) in err


@pytest.mark.parametrize("bad", [42, None, b"app:handle"], ids=["int", "none", "bytes"])
def test_new_bad_handle_returns_err(bad: Any) -> None:
    server, err = prefork.new({}, bad)
    assert server is None
    assert err is not None
    assert err.startswith("handle: expected a callable, got ")


def test_new_config_that_is_not_a_mapping_returns_err() -> None:
    server, err = prefork.new(8080, handle)  # type: ignore[arg-type]
    assert server is None
    assert err is not None


# -- Server.configure ---------------------------------------------------------------


def make_server(config: dict[str, Any] | None = None) -> prefork.Server:
    server, err = prefork.new(config or {}, handle)
    assert err is None
    assert server is not None
    return server


def test_configure_merges_into_the_current_config() -> None:
    server = make_server({"workers": 2, "port": 0})
    assert server.configure({"workers": 5, "max_body_size": 1024}) == (True, None)
    assert (server.cfg.workers, server.cfg.port, server.cfg.max_body_size) == (5, 0, 1024)


def test_configure_merges_compression_key_by_key() -> None:
    server = make_server({"compression": {"level": 2}})
    assert server.configure({"compression": {"min_size": 10}}) == (True, None)
    assert (server.cfg.compression["level"], server.cfg.compression["min_size"]) == (2, 10)


def test_configure_updates_the_log_level() -> None:
    server = make_server({"log_level": "access"})
    assert server.configure({"log_level": "debug"}) == (True, None)
    assert logging.getLogger("prefork").level == logging.DEBUG


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"workers": -1}, "workers: must be >= 1, got -1"),
        ({"http": "spdy"}, "http: must be one of auto, httptools, h11"),
        ({"nope": 1}, "nope: unknown config key"),
        ({"ssl": {"default": {"cert": "/nonexistent.pem", "key": "/nonexistent.key"}}}, "ssl."),
    ],
    ids=["range", "choice", "unknown", "tls-file"],
)
def test_configure_rejects_bad_values_keeping_the_old_config(
    change: dict[str, Any], message: str
) -> None:
    server = make_server({"workers": 2, "log_level": "warn"})
    before = server.cfg
    ok, err = server.configure(change)
    assert ok is None
    assert err is not None
    assert err.startswith(message)
    assert server.cfg is before
    assert server.cfg.workers == 2


def test_configure_bad_value_keeps_the_log_level() -> None:
    server = make_server({"log_level": "warn"})
    server.configure({"log_level": "debug", "workers": 0})
    assert logging.getLogger("prefork").level == logging.WARNING


def test_configure_with_a_non_mapping_returns_err() -> None:
    server = make_server()
    ok, err = server.configure(None)  # type: ignore[arg-type]
    assert ok is None
    assert err is not None


# -- Server.serve -------------------------------------------------------------------


def test_serve_from_another_thread_returns_err_without_binding() -> None:
    server = make_server({"port": 0})
    results: list[tuple[None, str | None]] = []
    thread = threading.Thread(target=lambda: results.append(server.serve()))
    thread.start()
    thread.join(timeout=10)
    assert not thread.is_alive()
    assert results == [(None, "serve() must be called from the main thread (it handles signals)")]
