"""prefork.apps.handler: loading MODULE:ATTR, async detection, the ctx object, checking results."""

from __future__ import annotations

import functools
import logging
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from prefork.apps.handler import (
    Context,
    HandlerResultError,
    check_result,
    is_async_handler,
    is_stream,
    load_app,
)
from prefork.errors import ConfigError


@pytest.fixture
def app_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The current directory, holding app modules; sys.path and sys.modules restored after."""
    monkeypatch.chdir(tmp_path)
    saved_path = list(sys.path)
    saved_modules = set(sys.modules)
    yield tmp_path
    sys.path[:] = saved_path
    for name in set(sys.modules) - saved_modules:
        del sys.modules[name]


def write(directory: Path, name: str, source: str) -> None:
    (directory / f"{name}.py").write_text(textwrap.dedent(source))


def load_error(spec: str) -> str:
    with pytest.raises(ConfigError) as info:
        load_app(spec)
    message = str(info.value)
    assert "\n" not in message, "one line"
    return message


# -- load_app -----------------------------------------------------------------------


def test_load_app_imports_from_the_current_directory(app_dir: Path) -> None:
    write(app_dir, "pf_app_ok", "def handle(*args):\n    return 'hi', 200, None\n")
    handler = load_app("pf_app_ok:handle")
    assert handler("GET", "/", {}, {}, b"", None) == ("hi", 200, None)


def test_load_app_follows_dotted_attributes(app_dir: Path) -> None:
    write(
        app_dir,
        "pf_app_dotted",
        """
        class App:
            @staticmethod
            def handle(*args):
                return None, 204, None
        app = App()
        """,
    )
    assert load_app("pf_app_dotted:app.handle")()[1] == 204


@pytest.mark.parametrize("spec", ["app", "app:", ":handle", "", ":"])
def test_load_app_malformed_spec(app_dir: Path, spec: str) -> None:
    assert load_error(spec) == f"app {spec!r}: expected MODULE:ATTR, e.g. app:handle"


def test_load_app_missing_module(app_dir: Path) -> None:
    message = load_error("pf_no_such_module:handle")
    assert message == "app 'pf_no_such_module:handle': module 'pf_no_such_module' not found"


def test_load_app_missing_package_member(app_dir: Path) -> None:
    (app_dir / "pf_pkg").mkdir()
    (app_dir / "pf_pkg" / "__init__.py").write_text("")
    message = load_error("pf_pkg.nope:handle")
    assert message == "app 'pf_pkg.nope:handle': module 'pf_pkg.nope' not found"


def test_load_app_module_importing_a_missing_module(app_dir: Path) -> None:
    write(app_dir, "pf_app_dep", "import pf_missing_dependency\n")
    message = load_error("pf_app_dep:handle")
    assert message.startswith("app 'pf_app_dep:handle': importing 'pf_app_dep' failed: ")
    assert "pf_missing_dependency" in message


def test_load_app_syntax_error_names_file_and_line(app_dir: Path) -> None:
    write(app_dir, "pf_app_syntax", "x = 1\ndef handle(:\n    pass\n")
    message = load_error("pf_app_syntax:handle")
    assert message.startswith("app 'pf_app_syntax:handle': importing 'pf_app_syntax' raised ")
    assert "SyntaxError" in message
    assert "line 2" in message


def test_load_app_module_raising_names_the_line(app_dir: Path) -> None:
    write(app_dir, "pf_app_raises", "x = 1\nraise RuntimeError('no database')\n")
    message = load_error("pf_app_raises:handle")
    assert message == (
        "app 'pf_app_raises:handle': importing 'pf_app_raises' raised "
        "RuntimeError: no database (line 2)"
    )


def test_load_app_missing_attribute(app_dir: Path) -> None:
    write(app_dir, "pf_app_noattr", "def other(*a):\n    pass\n")
    message = load_error("pf_app_noattr:handle")
    assert message == "app 'pf_app_noattr:handle': module 'pf_app_noattr' has no attribute 'handle'"


def test_load_app_not_callable(app_dir: Path) -> None:
    write(app_dir, "pf_app_notcallable", "handle = 42\n")
    message = load_error("pf_app_notcallable:handle")
    assert message == "app 'pf_app_notcallable:handle': 'handle' is not callable"


# -- async detection ----------------------------------------------------------------


def sync_handler(*args: Any) -> Any:
    return None, 200, None


async def async_handler(*args: Any) -> Any:
    return None, 200, None


class AsyncCallable:
    async def __call__(self, *args: Any) -> Any:
        return None, 200, None


class SyncCallable:
    def __call__(self, *args: Any) -> Any:
        return None, 200, None


@pytest.mark.parametrize(
    ("handler", "is_async"),
    [
        (sync_handler, False),
        (async_handler, True),
        (AsyncCallable(), True),
        (SyncCallable(), False),
        (functools.partial(async_handler, "GET"), True),
        (functools.partial(sync_handler, "GET"), False),
        (lambda *a: None, False),
    ],
    ids=["def", "async-def", "async-call", "sync-call", "partial-async", "partial-sync", "lambda"],
)
def test_is_async_handler(handler: Any, is_async: bool) -> None:
    assert is_async_handler(handler) is is_async


# -- results ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("result", "expected"),
    [
        (("hi", 200, {"x": "1"}), ("hi", 200, {"x": "1"})),
        (("hi", None, None), ("hi", 200, None)),
        ((b"", 204, None), (b"", 204, None)),
        ((None, None, None), (None, 200, None)),
        (("x", 100, None), ("x", 100, None)),
        (("x", 599, None), ("x", 599, None)),
    ],
    ids=["full", "status-none-is-200", "bytes", "all-none", "lowest-status", "highest-status"],
)
def test_check_result_accepts(result: Any, expected: Any) -> None:
    assert check_result(result) == expected


@pytest.mark.parametrize(
    ("result", "message"),
    [
        ("hi", "handler must return (content, status, headers), got str"),
        (("hi", 200), "handler must return (content, status, headers), got tuple"),
        (["hi", 200, None], "handler must return (content, status, headers), got list"),
        (None, "handler must return (content, status, headers), got NoneType"),
        (("hi", "200", None), "handler returned an invalid status '200'"),
        (("hi", True, None), "handler returned an invalid status True"),
        (("hi", 99, None), "handler returned an invalid status 99"),
        (("hi", 600, None), "handler returned an invalid status 600"),
        (("hi", 200.0, None), "handler returned an invalid status 200.0"),
        (("hi", 200, [("x", "1")]), "handler returned headers of type list"),
    ],
    ids=[
        "bare-content",
        "two-items",
        "list",
        "none",
        "status-str",
        "status-bool",
        "status-99",
        "status-600",
        "status-float",
        "headers-list",
    ],
)
def test_check_result_refuses(result: Any, message: str) -> None:
    with pytest.raises(HandlerResultError) as info:
        check_result(result)
    assert str(info.value) == message


async def _agen() -> Any:
    yield b"x"


@pytest.mark.parametrize(
    ("content", "stream"),
    [
        ("text", False),
        (b"bytes", False),
        (bytearray(b"x"), False),
        (memoryview(b"x"), False),
        (None, False),
        ([b"a", b"b"], True),
        ((b for b in [b"a"]), True),
        (_agen(), True),
    ],
    ids=["str", "bytes", "bytearray", "memoryview", "none", "list", "generator", "async-gen"],
)
def test_is_stream(content: Any, stream: bool) -> None:
    assert is_stream(content) is stream
    if hasattr(content, "aclose"):
        content.aclose().close()  # never iterated: close the coroutine quietly


def test_context_carries_what_the_handler_needs() -> None:
    logger = logging.getLogger("prefork.app")
    client = object()
    ctx = Context(logger, client, "10.0.0.1", {"port": 1}, None)  # type: ignore[arg-type]
    assert (ctx.logger, ctx.client, ctx.client_ip, ctx.cfg, ctx.redis_module) == (
        logger,
        client,
        "10.0.0.1",
        {"port": 1},
        None,
    )
    assert repr(ctx) == "<Context client_ip='10.0.0.1'>"
    with pytest.raises(AttributeError):
        ctx.other = 1  # type: ignore[attr-defined]
