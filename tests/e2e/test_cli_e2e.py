"""The command line end to end: ``python -m prefork`` and the ``prefork`` script as processes.

Bad apps, flags and config values must end the process quickly with one line
naming the culprit and no traceback; the help texts list every flag; both
parser backends and both entry points serve. Every process runs in its own
process group and is stopped (or killed) by that group; traffic goes to
127.0.0.1 only.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import prefork
from tests.e2e.conftest import ServerProcess, StartServer
from tests.e2e.helpers import http_exchange

pytestmark = pytest.mark.e2e

APP = """
def handle(method, query, args, headers, body, ctx):
    return f"{method} {query} http={ctx.cfg['http']}", 200, {"content-type": "text/plain"}
"""

FLAGS = [
    ("-w", "--workers"),
    ("-b", "--bind"),
    ("-c", "--config"),
    (None, "--certfile"),
    (None, "--keyfile"),
    (None, "--log-level"),
    (None, "--http"),
    (None, "--pid"),
]

EXIT_TIMEOUT_S = 10.0  # "within a few seconds", with room for a loaded machine
SCRIPT = Path(sys.executable).parent / "prefork"


def run_cli(cmd: list[str], cwd: Path, timeout: float = 20.0) -> tuple[int, str, str, float]:
    """Run a command to completion in its own process group: (rc, stdout, stderr, seconds)."""
    started = time.monotonic()
    proc = subprocess.Popen(
        cmd,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        process_group=0,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate(timeout=5)
        raise AssertionError(f"{cmd} still running after {timeout}s:\n{err}") from None
    return proc.returncode, out, err, time.monotonic() - started


def prefork_run(*args: str) -> list[str]:
    return [sys.executable, "-m", "prefork", "run", "app:handle", "-b", "127.0.0.1:0", *args]


def get_root(port: int) -> bytes:
    return http_exchange(port, b"GET /hello HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")


# -- a bad MODULE:ATTR ---------------------------------------------------------

BAD_APPS = [
    ("module-missing", APP, "nomod:handle", ["nomod", "not found"]),
    (
        "module-raises",
        'import sys\nraise RuntimeError("boom-at-import")\n',
        "app:handle",
        ["app", "RuntimeError", "boom-at-import"],
    ),
    ("syntax-error", "def handle(:\n    pass\n", "app:handle", ["app", "SyntaxError"]),
    (
        "dependency-missing",
        "import nonexistent_dependency_for_test\n",
        "app:handle",
        ["app", "nonexistent_dependency_for_test"],
    ),
    ("attribute-missing", APP, "app:nothere", ["app", "nothere"]),
    ("not-module-attr", APP, "app.handle", ["app.handle", "MODULE:ATTR"]),
]


@pytest.mark.parametrize(
    ("source", "target", "culprit"), [c[1:] for c in BAD_APPS], ids=[c[0] for c in BAD_APPS]
)
def test_bad_app_exits_nonzero_quickly_naming_the_culprit_without_traceback(
    start_server: StartServer, source: str, target: str, culprit: list[str]
) -> None:
    started = time.monotonic()
    server = start_server(source, target=target, wait=False)
    try:
        rc = server.proc.wait(timeout=EXIT_TIMEOUT_S + 5)
        elapsed = time.monotonic() - started
    finally:
        _stop(server)  # also joins the stderr reader
    log = server.log()
    assert rc != 0, log
    assert elapsed < EXIT_TIMEOUT_S, log
    assert "Traceback" not in log, log
    naming = [line for line in log.splitlines() if all(part in line for part in culprit)]
    assert naming, f"no line names {culprit}:\n{log}"


# -- bad flags and config values -----------------------------------------------

BAD_FLAGS = [
    ("unknown-flag", ["--bogus"], None, ["--bogus"]),
    ("workers-not-int", ["-w", "zero"], None, ["--workers", "zero"]),
    ("workers-zero", ["-w", "0"], None, ["workers", "0"]),
    ("log-level", ["--log-level", "loud"], None, ["log_level", "loud"]),
    ("http", ["--http", "nope"], None, ["http", "nope"]),
    ("bind-port", ["-b", "127.0.0.1:99999"], None, ["--bind", "99999"]),
    ("certfile-alone", ["--certfile", "cert.pem"], None, ["--certfile", "--keyfile"]),
    ("config-missing", ["-c", "missing.toml"], None, ["missing.toml"]),
    ("config-bad-toml", ["-c", "cfg.toml"], "max_body_size = = 1\n", ["cfg.toml"]),
    ("config-bad-type", ["-c", "cfg.toml"], 'max_body_size = "big"\n', ["max_body_size", "big"]),
    (
        "config-negative-timeout",
        ["-c", "cfg.toml"],
        "request_header_timeout = -1\n",
        ["request_header_timeout", "-1"],
    ),
    ("config-unknown-key", ["-c", "cfg.toml"], "bogus_key = 1\n", ["bogus_key"]),
    (
        "config-bad-compression",
        ["-c", "cfg.toml"],
        "[compression]\nlevel = 12\n",
        ["compression.level", "12"],
    ),
]


@pytest.mark.parametrize(
    ("args", "config", "culprit"), [c[1:] for c in BAD_FLAGS], ids=[c[0] for c in BAD_FLAGS]
)
def test_bad_flag_or_config_value_exits_nonzero_with_one_line_naming_it(
    tmp_path: Path, args: list[str], config: str | None, culprit: list[str]
) -> None:
    (tmp_path / "app.py").write_text(APP)
    if config is not None:
        (tmp_path / "cfg.toml").write_text(config)
    rc, _out, err, elapsed = run_cli(prefork_run(*args), tmp_path)
    assert rc != 0
    assert elapsed < EXIT_TIMEOUT_S
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert all(part in lines[0] for part in culprit), lines[0]
    assert "Traceback" not in err
    assert "listening on" not in err


# -- help ------------------------------------------------------------------------


def _lists_every_flag(text: str) -> list[str]:
    missing = []
    for short, long in FLAGS:
        if long not in text or (short is not None and f"{short} " not in text):
            missing.append(long)
    return missing


def test_run_help_lists_every_flag(tmp_path: Path) -> None:
    rc, out, err, _ = run_cli([sys.executable, "-m", "prefork", "run", "--help"], tmp_path)
    assert rc == 0, err
    assert _lists_every_flag(out) == []


def test_top_level_help_lists_every_flag(tmp_path: Path) -> None:
    rc, out, err, _ = run_cli([sys.executable, "-m", "prefork", "--help"], tmp_path)
    assert rc == 0, err
    assert _lists_every_flag(out) == []


def test_console_script_help_works(tmp_path: Path) -> None:
    assert SCRIPT.exists(), f"console script not installed at {SCRIPT}"
    rc, out, err, _ = run_cli([str(SCRIPT), "run", "--help"], tmp_path)
    assert rc == 0, err
    assert "MODULE:ATTR" in out


# -- serving -----------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["httptools", "h11", "auto"])
def test_each_http_backend_serves(start_server: StartServer, backend: str) -> None:
    server = start_server(APP, "--http", backend)
    try:
        reply = get_root(server.port)
    finally:
        _stop(server)
    assert reply.startswith(b"HTTP/1.1 200 OK\r\n"), reply
    assert reply.endswith(f"GET /hello http={backend}".encode()), reply


def test_python_dash_m_prefork_serves(start_server: StartServer) -> None:
    server = start_server(APP)
    try:
        reply = get_root(server.port)
        assert f"listening on http://127.0.0.1:{server.port}" in server.log()
        # The build that runs (the server imports prefork as this test does).
        assert f"starting prefork ({prefork.BUILD} build)" in server.log()
    finally:
        _stop(server)
    assert reply.endswith(b"GET /hello http=auto"), reply


def test_console_script_serves(tmp_path: Path) -> None:
    (tmp_path / "app.py").write_text(APP)
    proc = subprocess.Popen(
        [str(SCRIPT), "run", "app:handle", "-b", "127.0.0.1:0"],
        cwd=tmp_path,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        process_group=0,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    server = ServerProcess(proc)
    try:
        server.wait_log(r"listening on http://127\.0\.0\.1:\d+", timeout=20)
        server.wait_log(r"worker \d+ .*ready", timeout=20)
        reply = get_root(server.port)
    finally:
        _stop(server)
    assert reply.startswith(b"HTTP/1.1 200 OK\r\n"), reply
    assert reply.endswith(b"GET /hello http=auto"), reply
    assert server.proc.returncode == 0


def _stop(server: ServerProcess) -> None:
    server.stop()
    if server.proc.stderr is not None:
        server.proc.stderr.close()
