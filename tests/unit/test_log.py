"""prefork.log: escaping request fields, the level order, setup, the access line."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from prefork import log
from prefork.http.request import Request
from prefork.metrics import WorkerMetrics, requests


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    """setup() configures the "prefork" logger for the process: put it back."""
    root = logging.getLogger(log.ROOT)
    saved = (list(root.handlers), root.level, root.propagate, log._handler, log._stderr_path)
    log.set_level("access")
    yield
    root.handlers[:], root.level, root.propagate, log._handler, log._stderr_path = saved


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


def request(
    target: str = "/x", method: str = "GET", version: str = "1.1", **headers: str
) -> Request:
    path, _, query = target.partition("?")
    fields = {name.replace("_", "-"): value for name, value in headers.items()}
    return Request(method, target, path, query, version, fields, True)


def test_access_line(capsys: pytest.CaptureFixture[str]) -> None:
    access = log.AccessLog(["user-agent", "x-request-id"])
    access.record("10.0.0.7", request("/a b\n", user_agent='curl "8"'), 200, 512, time.monotonic())
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "[ACCESS] prefork.access: " in err
    assert '10.0.0.7 "GET /a b\\x0a HTTP/1.1" 200 512 ' in err
    assert 'user-agent="curl \\"8\\"" x-request-id="-"' in err


def test_access_line_has_the_whole_request_line_with_its_query(
    capsys: pytest.CaptureFixture[str],
) -> None:
    log.AccessLog(()).record("10.0.0.7", request("/hello?acc=abc123&b=%20"), 200, 5, 0.0)
    assert '"GET /hello?acc=abc123&b=%20 HTTP/1.1" 200 5 ' in capsys.readouterr().err


def test_access_line_layout_is_the_other_log_lines_layout(
    capsys: pytest.CaptureFixture[str],
) -> None:
    access = log.AccessLog(())
    access.record("10.0.0.7", request("/x", version="1.0"), 404, 0, time.monotonic())
    line = capsys.readouterr().err.rstrip("\n")
    stamp = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}"
    assert re.fullmatch(
        rf"{stamp} \[{os.getpid()}\] \[ACCESS\] prefork\.access: "
        r'10\.0\.0\.7 "GET /x HTTP/1\.0" 404 0 \d+\.\d\dms',
        line,
    ), line


def test_a_request_rejected_before_parsing_is_logged_with_dashes(
    capsys: pytest.CaptureFixture[str],
) -> None:
    log.AccessLog(["x-trace"]).record("10.0.0.7", None, 400, 11, time.monotonic())
    assert '10.0.0.7 "- - HTTP/1.1" 400 11 ' in capsys.readouterr().err


def test_log_headers_are_the_values_before_the_handler_changed_them(
    capsys: pytest.CaptureFixture[str],
) -> None:
    access = log.AccessLog(["X-Trace"])  # names are matched case-insensitively
    req = request(x_trace="t-1")
    access.capture(req)
    req.headers.pop("x-trace")  # what a handler may do to the dict it gets
    access.record("10.0.0.7", req, 200, 0, time.monotonic())
    assert capsys.readouterr().err.rstrip("\n").endswith(' x-trace="t-1"')


def test_json_access_line_fields(capsys: pytest.CaptureFixture[str]) -> None:
    access = log.AccessLog(["x-trace", "user-agent"], fmt="json")
    started = time.monotonic() - 0.25
    req = request('/p\u00e9\n?q="1"', method="POST", x_trace="a\x1bb")
    access.record("10.0.0.7", req, 201, 42, started)
    out = capsys.readouterr().err
    assert out.count("\n") == 1
    doc = json.loads(out)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d", doc.pop("time"))
    assert 250_000 <= doc.pop("duration_us") < 10_000_000
    assert doc == {
        "pid": os.getpid(),
        "client": "10.0.0.7",
        "method": "POST",
        "target": '/p\u00e9\n?q="1"',
        "path": "/p\u00e9\n",
        "query": 'q="1"',
        "version": "1.1",
        "status": 201,
        "bytes": 42,
        "headers": {"x-trace": "a\x1bb", "user-agent": None},
    }


def test_json_access_line_without_log_headers_has_no_headers_field(
    capsys: pytest.CaptureFixture[str],
) -> None:
    log.AccessLog((), fmt="json").record("10.0.0.7", None, 400, 0, time.monotonic())
    doc = json.loads(capsys.readouterr().err)
    assert "headers" not in doc
    assert (doc["method"], doc["target"], doc["status"]) == ("-", "-", 400)


def test_record_counts_metrics_also_when_access_lines_are_off(
    capsys: pytest.CaptureFixture[str],
) -> None:
    log.set_level("info")
    metrics = WorkerMetrics()
    access = log.AccessLog((), metrics=metrics)
    assert not access.enabled()
    req = request(method="PUT")
    req.body = b"12345"
    access.record("10.0.0.7", req, 204, 0, time.monotonic())
    access.record("10.0.0.7", request(method="BREW"), 503, 7, time.monotonic())
    access.record("10.0.0.7", None, 400, 3, time.monotonic())
    values = metrics.values(0, 0)
    assert requests(values, "PUT", "2xx") == 1
    assert requests(values, "other", "5xx") == 1
    assert requests(values, "other", "4xx") == 1
    assert (metrics.body_in, metrics.body_out, sum(metrics.buckets)) == (5, 10, 3)
    assert capsys.readouterr().err == ""


async def test_access_request_texts_are_remembered_within_a_bound(
    capsys: pytest.CaptureFixture[str],
) -> None:
    access = log.AccessLog(())
    count = log._REQUEST_TEXTS_MAX + 10
    for round_ in range(2):  # the second round repeats every request
        for i in range(count):
            access.record("10.0.0.1", request(f"/{i}\t"), 200, 0, time.monotonic())
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
    access.record("10.0.0.1", request(long_path), 200, 0, time.monotonic())
    assert capsys.readouterr().err.split('"')[1] == "GET /" + "\\x01" * 256 + " HTTP/1.1"
    assert access._requests == {}


async def test_access_lines_of_one_loop_iteration_are_written_together(
    capsys: pytest.CaptureFixture[str],
) -> None:
    access = log.AccessLog(())
    access.record("10.0.0.1", request("/1"), 200, 0, time.monotonic())
    access.record("10.0.0.1", request("/2"), 404, 0, time.monotonic())
    assert capsys.readouterr().err == ""
    await asyncio.sleep(0)
    lines = capsys.readouterr().err.splitlines()
    assert [line.split('"')[1] for line in lines] == ["GET /1 HTTP/1.1", "GET /2 HTTP/1.1"]


# -- reopen -------------------------------------------------------------------------


def test_reopen_follows_a_rotated_stderr_file_by_name(tmp_path: Path) -> None:
    path = tmp_path / "prefork.log"
    saved_fd = os.dup(2)
    saved_stderr = sys.stderr
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(fd, 2)
        os.close(fd)
        sys.stderr = open(2, "w", closefd=False)  # noqa: SIM115 - the process's stderr
        log._handler = None  # a fresh setup, as in a new process
        logging.getLogger(log.ROOT).handlers.clear()  # (the fixture puts them back)
        log.setup("access")
        logging.getLogger(log.MASTER).info("before")
        path.rename(tmp_path / "prefork.log.1")  # what logrotate does
        log.reopen()
        logging.getLogger(log.MASTER).info("after")
        sys.stderr.flush()
    finally:
        sys.stderr = saved_stderr
        os.dup2(saved_fd, 2)
        os.close(saved_fd)
    assert "before" in (tmp_path / "prefork.log.1").read_text()
    assert "after" not in (tmp_path / "prefork.log.1").read_text()
    assert "after" in path.read_text()


def test_reopen_leaves_a_stderr_that_is_not_a_file_alone() -> None:
    assert log._redirected_path(object()) is None


def test_logger_names() -> None:
    assert log.MASTER.startswith(log.ROOT + ".")
    assert log.WORKER.startswith(log.ROOT + ".")
    assert log.ACCESS_LOGGER == "prefork.access"
