"""prefork.cli: ``cli.main(argv)`` exit codes and its one-line messages (no server started)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from prefork import BUILD, __version__, cli, server
from prefork.errors import PreforkError

# Every flag API.md names for `prefork run`.
API_FLAGS = ["-w", "--workers", "-b", "--bind", "-c", "--config", "--certfile", "--keyfile"]
API_FLAGS += ["--log-level", "--http", "--pid"]


@pytest.fixture
def app_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A current directory holding ``pf_cli_app.py``; sys.path restored after."""
    (tmp_path / "pf_cli_app.py").write_text("def handle(*args):\n    return 'hi', 200, None\n")
    monkeypatch.chdir(tmp_path)
    saved_path = list(sys.path)
    saved_modules = set(sys.modules)
    yield tmp_path
    sys.path[:] = saved_path
    for name in set(sys.modules) - saved_modules:
        del sys.modules[name]


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> list[server.Server]:
    """Servers main() would have started: serve() is replaced, nothing binds or forks."""
    started: list[server.Server] = []

    def fake_serve(self: server.Server) -> tuple[None, None]:
        started.append(self)
        return None, None

    monkeypatch.setattr(server.Server, "serve", fake_serve)
    return started


def error_line(capsys: pytest.CaptureFixture[str]) -> str:
    """The one line main() wrote to stderr."""
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.endswith("\n")
    assert captured.err.count("\n") == 1, captured.err
    assert "Traceback" not in captured.err
    return captured.err.rstrip("\n")


def usage_exit(argv: list[str]) -> Any:
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    return info.value.code


# -- argparse errors: exit 2, one line ----------------------------------------------


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["run", "pf_cli_app:handle", "--nope"], "prefork: error: unrecognized arguments: --nope"),
        (["run"], "prefork: error: the following arguments are required: MODULE:ATTR"),
        (
            ["run", "pf_cli_app:handle", "-w", "four"],
            "prefork: error: argument -w/--workers: invalid int value: 'four'",
        ),
        (["serve", "x:y"], "prefork: error: argument COMMAND: invalid choice: 'serve' "),
    ],
    ids=["unknown-flag", "missing-app", "workers-not-int", "unknown-command"],
)
def test_bad_flag_exits_2_with_one_line(
    app_dir: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    assert usage_exit(argv) == cli.EXIT_USAGE
    assert error_line(capsys).startswith(message)


def test_no_command_prints_help_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main([]) == cli.EXIT_USAGE
    assert "usage: prefork" in capsys.readouterr().err


# -- config and app errors: exit 2, one line naming the culprit -----------------------


def write(directory: Path, name: str, text: str) -> str:
    path = directory / name
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["-b", "nope"], "-b/--bind 'nope': expected HOST:PORT with a port from 0 to 65535"),
        (["-b", "127.0.0.1:70000"], "-b/--bind '127.0.0.1:70000': expected HOST:PORT"),
        (["-b", "127.0.0.1:"], "-b/--bind '127.0.0.1:': expected HOST:PORT"),
        (["-b", "127.0.0.1:80", "-b", "x"], "-b/--bind 'x': expected HOST:PORT"),
        (["-w", "0"], "workers: must be >= 1, got 0"),
        (["--log-level", "loud"], "log_level: must be one of debug, access, info, warn, error"),
        (["--http", "h2"], "http: must be one of auto, httptools, h11"),
        (["--certfile", "cert.pem"], "--certfile and --keyfile go together"),
        (["--keyfile", "key.pem"], "--certfile and --keyfile go together"),
        (["--certfile", "nope.pem", "--keyfile", "nope.key"], "ssl.default.cert: "),
    ],
    ids=[
        "bind-no-port",
        "bind-port-too-big",
        "bind-empty-port",
        "second-bind",
        "workers-0",
        "log-level",
        "http",
        "certfile-alone",
        "keyfile-alone",
        "tls-files-missing",
    ],
)
def test_bad_value_exits_2_naming_it(
    app_dir: Path,
    capsys: pytest.CaptureFixture[str],
    served: list[server.Server],
    flags: list[str],
    message: str,
) -> None:
    assert cli.main(["run", "pf_cli_app:handle", *flags]) == cli.EXIT_USAGE
    assert error_line(capsys).startswith(f"prefork: error: {message}")
    assert not served


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        (None, "config file {path}: not found"),
        ("workers = \n", "config file {path}: invalid TOML: "),
        ("wokers = 2\n", "wokers: unknown config key"),
        ('workers = "two"\n', "workers: expected an integer, got 'two'"),
        ("port = 1.5\n", "port: expected an integer, got 1.5"),
        ("[compression]\nlevel = 11\n", "compression.level: must be 1 to 9, got 11"),
    ],
    ids=["missing-file", "invalid-toml", "unknown-key", "wrong-type", "float-port", "nested"],
)
def test_bad_config_file_exits_2_naming_it(
    app_dir: Path,
    capsys: pytest.CaptureFixture[str],
    served: list[server.Server],
    toml: str | None,
    message: str,
) -> None:
    path = app_dir / "prefork.toml"
    if toml is not None:
        path.write_text(toml)
    assert cli.main(["run", "pf_cli_app:handle", "-c", str(path)]) == cli.EXIT_USAGE
    assert error_line(capsys).startswith("prefork: error: " + message.format(path=path))
    assert not served


@pytest.mark.parametrize(
    ("app", "message"),
    [
        ("pf_cli_app", "app 'pf_cli_app': expected MODULE:ATTR, e.g. app:handle"),
        ("pf_cli_app:", "app 'pf_cli_app:': expected MODULE:ATTR, e.g. app:handle"),
        (":handle", "app ':handle': expected MODULE:ATTR, e.g. app:handle"),
        ("pf_cli_missing:handle", "app 'pf_cli_missing:handle': module 'pf_cli_missing' not found"),
        ("pf_cli_app.sub:handle", "app 'pf_cli_app.sub:handle': "),
    ],
    ids=["no-colon", "no-attr", "no-module", "missing-module", "module-not-a-package"],
)
def test_bad_app_exits_2_naming_it(
    app_dir: Path,
    capsys: pytest.CaptureFixture[str],
    served: list[server.Server],
    app: str,
    message: str,
) -> None:
    assert cli.main(["run", app]) == cli.EXIT_USAGE
    assert error_line(capsys).startswith(f"prefork: error: {message}")
    assert not served


def test_check_app_does_not_import_the_package_in_the_master(app_dir: Path) -> None:
    package = app_dir / "pf_cli_pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "app.py").write_text("def handle(*args):\n    return 'hi', 200, None\n")
    cli.check_app("pf_cli_pkg.app:handle")
    assert "pf_cli_pkg" not in sys.modules


# -- help and version ---------------------------------------------------------------


@pytest.mark.parametrize("argv", [["--help"], ["run", "--help"]], ids=["prefork", "prefork-run"])
def test_help_lists_every_flag(capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    assert usage_exit(argv) == 0
    out = capsys.readouterr().out
    for flag in API_FLAGS:
        assert f"{flag} " in out or f"{flag}," in out, flag
    assert "SIGINT" in out or "INT is graceful" in out


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert usage_exit(["--version"]) == 0
    assert capsys.readouterr().out == f"prefork {__version__} ({BUILD})\n"


# -- flags become config (serve() replaced) ------------------------------------------


def test_flags_win_over_the_file(
    app_dir: Path, capsys: pytest.CaptureFixture[str], served: list[server.Server]
) -> None:
    path = write(app_dir, "prefork.toml", 'workers = 2\nport = 9000\nlog_level = "warn"\n')
    argv = ["run", "pf_cli_app:handle", "-c", path, "-w", "3", "-b", "0.0.0.0:0"]
    argv += ["--http", "h11", "--pid", str(app_dir / "pid")]
    assert cli.main(argv) == cli.EXIT_OK
    (srv,) = served
    assert (srv.cfg.workers, srv.cfg.ip, srv.cfg.port) == (3, "0.0.0.0", 0)
    assert srv.cfg.log_level == "warn"  # from the file, no flag
    assert srv.cfg.http == "h11"
    assert srv.app == "pf_cli_app:handle"
    assert srv.config_file == path
    assert srv.pidfile == str(app_dir / "pid")


def test_repeated_bind(app_dir: Path, served: list[server.Server]) -> None:
    argv = ["run", "pf_cli_app:handle", "-b", "127.0.0.1:0", "-b", "[::1]:8081", "-b", ":8082"]
    assert cli.main(argv) == cli.EXIT_OK
    (srv,) = served
    assert (srv.cfg.ip, srv.cfg.port) == ("127.0.0.1", 0)
    assert srv.cfg.binds == ("[::1]:8081", "127.0.0.1:8082")


def test_serve_error_exits_non_zero_with_one_line(
    app_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def failing_serve(self: server.Server) -> tuple[None, str]:
        return None, "cannot bind 127.0.0.1:80: permission denied"

    monkeypatch.setattr(server.Server, "serve", failing_serve)
    assert cli.main(["run", "pf_cli_app:handle"]) == cli.EXIT_FAILURE
    assert error_line(capsys) == "prefork: error: cannot bind 127.0.0.1:80: permission denied"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("127.0.0.1:8000", ("127.0.0.1", 8000)),
        ("0.0.0.0:0", ("0.0.0.0", 0)),
        (":9000", ("127.0.0.1", 9000)),
        ("9000", ("127.0.0.1", 9000)),
        ("[::1]:8080", ("::1", 8080)),
        ("localhost:65535", ("localhost", 65535)),
    ],
)
def test_parse_bind(value: str, expected: tuple[str, int]) -> None:
    assert cli.parse_bind(value) == expected


@pytest.mark.parametrize("value", ["", "host:", "host:http", "host:-1", "host:65536", "[::1]"])
def test_parse_bind_refuses(value: str) -> None:
    with pytest.raises(PreforkError, match=r"^-b/--bind "):
        cli.parse_bind(value)


def test_reload_rereads_the_files_ssl_hosts_under_certfile(
    app_dir: Path, served: list[server.Server]
) -> None:
    # --certfile/--keyfile set ssl.default only: the file's ssl.hosts, as edited
    # before a SIGHUP, still apply (the reload re-reads the file).
    import trustme

    from prefork.master.arbiter import Master

    ca = trustme.CA()
    paths: dict[str, tuple[str, str]] = {}
    for stem in ("default", "a", "b"):
        leaf = ca.issue_cert(f"{stem}.test")
        cert, key = app_dir / f"{stem}.crt", app_dir / f"{stem}.key"
        cert.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
        key.write_bytes(leaf.private_key_pem.bytes())
        paths[stem] = (str(cert), str(key))

    def hosts_file(*stems: str) -> str:
        lines = []
        for stem in stems:
            cert, key = paths[stem]
            lines += [f'[ssl.hosts."{stem}.test"]', f'cert = "{cert}"', f'key = "{key}"']
        return write(app_dir, "prefork.toml", "\n".join(lines) + "\n")

    conf = hosts_file("a")
    cert, key = paths["default"]
    argv = ["run", "pf_cli_app:handle", "-c", conf, "--certfile", cert, "--keyfile", key]
    assert cli.main(argv) == cli.EXIT_OK
    (srv,) = served
    assert srv.cfg.ssl is not None
    assert set(srv.cfg.ssl["hosts"]) == {"a.test"}
    hosts_file("b")
    master = Master(srv.cfg, srv.app, config_file=srv.config_file, overrides=srv.overrides)
    cfg = master._reread_config()
    assert cfg.ssl is not None
    assert cfg.ssl["default"]["cert"] == cert  # the flag still wins
    assert set(cfg.ssl["hosts"]) == {"b.test"}  # the file as it is now


def test_every_bind_flag_means_the_same_address(app_dir: Path, served: list[server.Server]) -> None:
    # ":PORT" and "PORT" are 127.0.0.1 in every -b, not only in the first one
    # (a later ":PORT" listened on 0.0.0.0; a later "PORT" failed at bind time).
    from prefork.master.listeners import bind_spec

    argv = ["run", "pf_cli_app:handle", "-b", ":0", "-b", ":8082", "-b", "8083", "-b", "[::1]:0"]
    assert cli.main(argv) == cli.EXIT_OK
    (srv,) = served
    addrs, _ = bind_spec(srv.cfg)
    assert addrs == (("127.0.0.1", 0), ("127.0.0.1", 8082), ("127.0.0.1", 8083), ("::1", 0))
