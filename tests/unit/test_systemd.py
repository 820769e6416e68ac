"""sd_notify messages and sockets, and socket activation's LISTEN_* variables.

The notify tests send to a real datagram socket bound here; the activation
tests run listen_fds() in a fresh interpreter whose fds 3 and 4 are set up as
systemd would pass them.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from prefork.errors import BindError
from prefork.master.systemd import (
    Notifier,
    listen_fds,
    message,
    monotonic_usec,
    socket_address,
)

ROOT = Path(__file__).resolve().parents[2]


def test_message_is_newline_separated_assignments() -> None:
    assert message(READY="1", STATUS="generation 1 serving") == (
        b"READY=1\nSTATUS=generation 1 serving"
    )


def test_a_value_cannot_add_an_assignment() -> None:
    # A newline in STATUS (an error message, say) must not become a second line.
    assert message(STATUS="failed\nREADY=1") == b"STATUS=failed READY=1"


def test_socket_address_forms() -> None:
    assert socket_address("/run/systemd/notify") == "/run/systemd/notify"
    assert socket_address("@abstract/name") == b"\0abstract/name"
    with pytest.raises(ValueError, match="vsock"):
        socket_address("vsock:2:1234")


@pytest.fixture(params=["path", "abstract"])
def notify_socket(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[str, socket.socket]]:
    """A bound datagram socket standing in for systemd, and its NOTIFY_SOCKET value."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    if request.param == "path":
        address = str(tmp_path / "notify")
        sock.bind(address)
    else:
        address = f"@prefork-test-{uuid.uuid4().hex}"
        sock.bind(b"\0" + address[1:].encode())
    sock.settimeout(5)
    yield address, sock
    sock.close()


def test_notifier_sends_each_kind(notify_socket: tuple[str, socket.socket]) -> None:
    address, sock = notify_socket
    notifier = Notifier(address)
    notifier.ready("generation 1 serving, 2 worker(s)")
    assert sock.recv(4096) == b"READY=1\nSTATUS=generation 1 serving, 2 worker(s)"
    before = monotonic_usec()
    notifier.reloading("reloading")
    lines = sock.recv(4096).decode().split("\n")
    after = monotonic_usec()
    assert lines[0] == "RELOADING=1"
    assert lines[2] == "STATUS=reloading"
    key, _, usec = lines[1].partition("=")
    assert key == "MONOTONIC_USEC"
    assert before <= int(usec) <= after  # CLOCK_MONOTONIC, not the wall clock
    notifier.stopping("stopping")
    assert sock.recv(4096) == b"STOPPING=1\nSTATUS=stopping"
    notifier.status("4 worker(s)")
    assert sock.recv(4096) == b"STATUS=4 worker(s)"


def test_monotonic_usec_is_clock_monotonic() -> None:
    assert abs(monotonic_usec() - time.monotonic() * 1_000_000) < 1_000_000


def test_from_environ_takes_the_variable_out() -> None:
    env = {"NOTIFY_SOCKET": "/run/systemd/notify", "PATH": "/bin"}
    notifier = Notifier.from_environ(env)
    assert notifier.address == "/run/systemd/notify"
    assert env == {"PATH": "/bin"}
    assert not Notifier.from_environ({}).enabled


def test_a_send_that_fails_never_raises(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    notifier = Notifier(str(tmp_path / "nobody-listens"))
    with caplog.at_level(logging.DEBUG, logger="prefork.master"):
        assert notifier.send(b"READY=1") is False
        assert notifier.send(b"STATUS=x") is False
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1  # once, not a line per message
    assert "sd_notify" in warnings[0].getMessage()
    assert Notifier("vsock:1:2").send(b"READY=1") is False
    assert Notifier(None).send(b"READY=1") is False


# --- socket activation -------------------------------------------------------


def test_listen_pid_of_another_process_is_ignored_and_cleared() -> None:
    env = {"LISTEN_PID": "1", "LISTEN_FDS": "1", "LISTEN_FDNAMES": "web", "HOME": "/"}
    assert listen_fds(env, pid=2) == []
    assert env == {"HOME": "/"}


def test_no_variables_means_no_sockets() -> None:
    assert listen_fds({}, pid=os.getpid()) == []


ACTIVATE = textwrap.dedent(
    """
    import fcntl, json, os, socket, sys
    from prefork.errors import BindError
    from prefork.master.systemd import listen_fds

    kinds = sys.argv[1].split(",")
    high = []  # each made first and parked above 100, so that the moves to 3.. clash with nothing
    for kind in kinds:
        if kind == "listen":
            s = socket.create_server(("127.0.0.1", 0))
        elif kind == "bound":  # bound, never listen()ed
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
        else:
            s = None
            fd, _ = os.pipe()
        if s is not None:
            fd = s.detach()
        high.append(fcntl.fcntl(fd, fcntl.F_DUPFD, 100))
        os.close(fd)
    for i, fd in enumerate(high):
        os.dup2(fd, 3 + i)  # inheritable, as systemd passes them
    os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS=str(len(kinds)))
    if len(sys.argv) > 2:
        os.environ["LISTEN_FDNAMES"] = sys.argv[2]
    try:
        got = listen_fds()
    except BindError as exc:
        print(json.dumps({"error": str(exc)}))
        raise SystemExit(0)
    print(json.dumps({
        "sockets": [[s.fileno(), name, s.getsockname()[0], s.get_inheritable()] for s, name in got],
        "env": sorted(k for k in os.environ if k.startswith("LISTEN_")),
    }))
    """
)


def activate(*args: str) -> dict[str, object]:
    proc = subprocess.run(
        [sys.executable, "-c", ACTIVATE, *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    result: dict[str, object] = json.loads(proc.stdout)
    return result


def test_sockets_from_fd_3_with_their_names() -> None:
    result = activate("listen,listen", "web:admin")
    assert result["sockets"] == [[3, "web", "127.0.0.1", False], [4, "admin", "127.0.0.1", False]]
    assert result["env"] == []  # cleared: workers and their children never see them


def test_fewer_names_than_sockets() -> None:
    result = activate("listen,listen", "web")
    assert result["sockets"] == [[3, "web", "127.0.0.1", False], [4, "", "127.0.0.1", False]]


@pytest.mark.parametrize(
    ("kinds", "error"),
    [
        ("pipe", "systemd socket fd 3: not a socket"),
        ("listen,bound", "systemd socket fd 4: not a listening stream socket"),
    ],
)
def test_a_passed_fd_that_is_not_a_listening_socket_is_named(kinds: str, error: str) -> None:
    result = activate(kinds)
    assert str(result["error"]).startswith(error), result


def test_a_bad_fd_count_is_an_error() -> None:
    with pytest.raises(BindError, match="LISTEN_FDS='two'"):
        listen_fds({"LISTEN_PID": "7", "LISTEN_FDS": "two"}, pid=7)
