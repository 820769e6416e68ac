"""prefork.log: escaping request fields, the level order, setup, the access line."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time
from collections.abc import Iterator

import pytest

from prefork import log


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    """setup() configures the "prefork" logger for the process: put it back."""
    root = logging.getLogger(log.ROOT)
    saved = (list(root.handlers), root.level, root.propagate, log._handler)
    yield
    root.handlers[:], root.level, root.propagate, log._handler = saved


# -- escape -------------------------------------------------------------------------


def test_escape_makes_a_forged_newline_harmless() -> None:
    forged = '/x HTTP/1.1" 200 5\n127.0.0.1 "GET /admin HTTP/1.1" 200 5'
    escaped = log.escape(forged)
    assert "\n" not in escaped
    assert "\\x0a" in escaped
    assert len(escaped.splitlines()) == 1


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("/plain/path?a=1", "/plain/path?a=1"),
        ("a\rb", "a\\x0db"),
        ("a\x00b\x1bc\x7f", "a\\x00b\\x1bc\\x7f"),
        ("tab\there", "tab\\x09here"),
        ('say "hi"', 'say \\"hi\\"'),
        ("back\\slash", "back\\\\slash"),
        ("caf\xe9", "caf\xe9"),
        ("next\x85line", "next\\x85line"),
    ],
    ids=["plain", "cr", "controls-and-del", "tab", "quotes", "backslash", "latin-1", "c1-nel"],
)
def test_escape(value: str, expected: str) -> None:
    assert log.escape(value) == expected


def test_escape_cannot_be_undone_by_a_sent_escape() -> None:
    # A client sending the four characters \x0a gets them back doubled, so a
    # reader of the log can tell them from an escaped newline.
    assert log.escape("\\x0a") == "\\\\x0a"


def test_escaped_text_has_no_line_break_of_any_kind() -> None:
    every_latin1 = "".join(map(chr, range(256)))
    assert len(log.escape(every_latin1).splitlines()) == 1


# -- levels -------------------------------------------------------------------------


def test_level_order() -> None:
    levels = log.LEVELS
    assert levels["debug"] < levels["access"] < levels["info"] < levels["warn"] < levels["error"]
    assert levels["access"] == log.ACCESS == 15
    assert logging.getLevelName(log.ACCESS) == "ACCESS"


def test_setup_is_idempotent_and_sets_the_level() -> None:
    log.setup("info")
    log.setup("debug")
    root = logging.getLogger(log.ROOT)
    assert len([h for h in root.handlers if h is log._handler]) == 1
    assert root.level == logging.DEBUG
    assert not root.propagate


@pytest.mark.parametrize(
    ("level", "access_on"),
    [("debug", True), ("access", True), ("info", False), ("warn", False), ("error", False)],
)
def test_access_lines_only_at_access_level_or_below(level: str, access_on: bool) -> None:
    log.set_level(level)
    assert log.AccessLog(()).enabled() is access_on
    assert logging.getLogger(log.ROOT).level == log.LEVELS[level]


# -- the access line ----------------------------------------------------------------


def test_access_line(capsys: pytest.CaptureFixture[str]) -> None:
    access = log.AccessLog(["user-agent", "x-request-id"])
    access.log(
        "10.0.0.7",
        "GET",
        "/a b\n",
        "1.1",
        200,
        512,
        time.monotonic(),
        {"user-agent": 'curl "8"'},
    )
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "[ACCESS] prefork.access: " in err
    assert '10.0.0.7 "GET /a b\\x0a HTTP/1.1" 200 512 ' in err
    assert 'user-agent="curl \\"8\\"" x-request-id="-"' in err


def test_access_line_layout_is_the_other_log_lines_layout(
    capsys: pytest.CaptureFixture[str],
) -> None:
    access = log.AccessLog(())
    access.log("10.0.0.7", "GET", "/x", "1.0", 404, 0, time.monotonic(), {})
    line = capsys.readouterr().err.rstrip("\n")
    stamp = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}"
    assert re.fullmatch(
        rf"{stamp} \[{os.getpid()}\] \[ACCESS\] prefork\.access: "
        r'10\.0\.0\.7 "GET /x HTTP/1\.0" 404 0 \d+\.\d\dms',
        line,
    ), line


async def test_access_request_texts_are_remembered_within_a_bound(
    capsys: pytest.CaptureFixture[str],
) -> None:
    access = log.AccessLog(())
    count = log._REQUEST_TEXTS_MAX + 10
    for round_ in range(2):  # the second round repeats every request
        for i in range(count):
            access.log("10.0.0.1", "GET", f"/{i}\t", "1.1", 200, 0, time.monotonic(), {})
        await asyncio.sleep(0)
        lines = capsys.readouterr().err.splitlines()
        assert [line.split('"')[1] for line in lines] == [
            f"GET /{i}\\x09 HTTP/1.1" for i in range(count)
        ], round_
        assert len(access._requests) <= log._REQUEST_TEXTS_MAX


def test_access_request_texts_of_long_paths_are_not_remembered(
    capsys: pytest.CaptureFixture[str],
) -> None:
    access = log.AccessLog(())
    long_path = "/" + "\x01" * log._REQUEST_TEXT_MAX_PATH  # escapes to 4x its length
    access.log("10.0.0.1", "GET", long_path, "1.1", 200, 0, time.monotonic(), {})
    assert capsys.readouterr().err.split('"')[1] == "GET /" + "\\x01" * 256 + " HTTP/1.1"
    assert access._requests == {}


async def test_access_lines_of_one_loop_iteration_are_written_together(
    capsys: pytest.CaptureFixture[str],
) -> None:
    access = log.AccessLog(())
    access.log("10.0.0.1", "GET", "/1", "1.1", 200, 0, time.monotonic(), {})
    access.log("10.0.0.1", "GET", "/2", "1.1", 404, 0, time.monotonic(), {})
    assert capsys.readouterr().err == ""
    await asyncio.sleep(0)
    lines = capsys.readouterr().err.splitlines()
    assert [line.split('"')[1] for line in lines] == ["GET /1 HTTP/1.1", "GET /2 HTTP/1.1"]


def test_logger_names() -> None:
    assert log.MASTER.startswith(log.ROOT + ".")
    assert log.WORKER.startswith(log.ROOT + ".")
    assert log.ACCESS_LOGGER == "prefork.access"
