"""The command line: ``prefork run MODULE:ATTR [flags]`` and ``prefork check``.

The config is layered: defaults < config file < ``PREFORK_<KEY>`` environment
variables < flags. Every error is one line on stderr naming the culprit and a
non-zero exit, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib.machinery
import importlib.util
import json
import logging
import os
import re
import sys
from collections.abc import Mapping, Sequence
from typing import Any, NoReturn

from prefork import BUILD, __version__, log
from prefork.config import Config, from_environ, layered, load_toml, parse_host_port
from prefork.errors import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, PreforkError
from prefork.master.listeners import bind_spec, format_host

__all__ = ["EXIT_FAILURE", "EXIT_OK", "EXIT_USAGE", "main", "parse_bind"]

_EPILOG = """\
signals (to the master process):
  HUP          reload: re-read the config file, re-parse TLS, start new workers,
               then gracefully stop the old ones
  TERM, INT    graceful stop (INT is graceful here, unlike gunicorn and nginx)
  QUIT         immediate stop
  TTIN / TTOU  one worker more / fewer
  USR1         reopen log files
"""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"prefork: error: {message}\n")


def parse_bind(value: str) -> tuple[str, int]:
    """``HOST:PORT``, ``:PORT``, ``PORT`` or ``[IPv6]:PORT`` -> (host, port)."""
    return parse_host_port(value, "-b/--bind")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="prefork",
        description="A pre-fork HTTP/1.1 server for Python.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"prefork {__version__} ({BUILD})")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    run = sub.add_parser(
        "run",
        help="serve MODULE:ATTR",
        description="Import MODULE (with the current directory on sys.path) and serve its "
        "handler ATTR with a master process and N workers.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_serve_flags(run)
    run.add_argument(
        "--check",
        action="store_true",
        help="do what `prefork check` does instead of serving",
    )
    check = sub.add_parser(
        "check",
        help="check the config and the app, print what run would serve",
        description="Load the config file, the PREFORK_* environment, the flags and the TLS "
        "files and import MODULE:ATTR as `prefork run` would; print the effective config "
        "and exit 0, or print one line naming the culprit and exit 2. Binds nothing, forks "
        "nothing, opens no Redis connection.",
    )
    _add_serve_flags(check)
    # `prefork --help` documents every flag too, not only the command list.
    parser.epilog = f"{run.format_help()}\n{_EPILOG}"
    return parser


def _add_serve_flags(run: argparse.ArgumentParser) -> None:
    """The flags of `run`, which `check` takes too (so a unit's two lines can match)."""
    run.add_argument("app", metavar="MODULE:ATTR", help="the handler to serve, e.g. app:handle")
    run.add_argument("-w", "--workers", type=int, metavar="N", help="worker processes (default 1)")
    run.add_argument(
        "-b",
        "--bind",
        action="append",
        metavar="HOST:PORT",
        help="address to listen on (default 127.0.0.1:8080; port 0 = any free port); "
        "repeat to listen on several",
    )
    run.add_argument("-c", "--config", metavar="FILE", help="a TOML file of config keys")
    run.add_argument("--certfile", metavar="FILE", help="TLS certificate (PEM); sets ssl.default")
    run.add_argument("--keyfile", metavar="FILE", help="TLS private key (PEM); sets ssl.default")
    run.add_argument(
        "--log-level",
        metavar="LEVEL",
        help="debug, access (one line per request; the default), info, warn or error",
    )
    run.add_argument(
        "--http",
        metavar="PARSER",
        help="request parser: auto (default), httptools or h11",
    )
    run.add_argument(
        "--interface",
        metavar="KIND",
        help="the app's interface: auto (default: decided from ATTR), native, asgi or wsgi",
    )
    run.add_argument(
        "--factory",
        action="store_true",
        default=None,
        help="ATTR is a factory: call it with no arguments and serve what it returns",
    )
    run.add_argument("--pid", metavar="FILE", help="write the master's pid to FILE")


def overrides_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The config keys the flags set (they win over the file)."""
    out: dict[str, Any] = {}
    if args.workers is not None:
        out["workers"] = args.workers
    if args.bind:
        host, port = parse_bind(args.bind[0])
        out["ip"], out["port"] = host, port
        # Each extra -b spelled out as parse_bind read it (the config keeps strings).
        extras = (parse_bind(extra) for extra in args.bind[1:])
        out["binds"] = [f"{format_host(h)}:{p}" for h, p in extras]
    if args.log_level is not None:
        out["log_level"] = args.log_level
    if args.http is not None:
        out["http"] = args.http
    if args.interface is not None:
        out["interface"] = args.interface
    if args.factory:
        out["factory"] = True
    if (args.certfile is None) != (args.keyfile is None):
        raise PreforkError("--certfile and --keyfile go together")
    if args.certfile is not None:
        out["ssl"] = {"default": {"cert": args.certfile, "key": args.keyfile}}
    return out


def check_app(spec: str) -> None:
    """Fail fast on a malformed MODULE:ATTR or a module that does not exist.

    The master never imports the app (each worker does, so SIGHUP picks up new
    code); a module that exists but fails to import stops the server when its
    first worker cannot boot.
    """
    module, sep, attr = spec.partition(":")
    if not sep or not module or not attr:
        raise PreforkError(f"app {spec!r}: expected MODULE:ATTR, e.g. app:handle")
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    # Walk the dotted name with the path finder: it locates each part without
    # importing (and so running) the package in the master.
    found = None
    search: list[str] | None = None
    parts = module.split(".")
    for i in range(len(parts)):
        name = ".".join(parts[: i + 1])
        try:
            found = importlib.machinery.PathFinder.find_spec(name, search)
        except (ImportError, ValueError) as exc:
            raise PreforkError(f"app {spec!r}: cannot look up module {name!r}: {exc}") from None
        if found is None:
            if i == 0 and importlib.util.find_spec(name) is not None:
                return  # a built-in or frozen module: it exists
            raise PreforkError(f"app {spec!r}: module {name!r} not found")
        locations = found.submodule_search_locations
        search = list(locations) if locations is not None else None


def load_config(args: argparse.Namespace) -> tuple[Config, dict[str, Any], list[str]]:
    """The effective config of ``run``/``check``, the flags' keys, the unknown PREFORK_ names.

    Raises PreforkError naming the flag, file, variable or key at fault.
    """
    flags = overrides_from_args(args)
    file_cfg = load_toml(args.config) if args.config else {}
    env_cfg, unknown = from_environ(os.environ)
    return Config.build(layered(file_cfg, env_cfg, flags)), flags, unknown


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "check" or (args.command == "run" and args.check):
        return run_check(args)
    if args.command != "run":
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    from prefork.server import Server, _load_tls

    try:
        cfg, flags, unknown = load_config(args)
        _load_tls(cfg)
        check_app(args.app)
    except PreforkError as exc:
        print(f"prefork: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    log.setup(cfg.log_level)
    for name in unknown:
        logging.getLogger(log.MASTER).warning("%s: unknown environment variable, ignored", name)
    server = Server(cfg, args.app, config_file=args.config, overrides=flags, pidfile=args.pid)
    _, err = server.serve()
    if err is not None:
        print(f"prefork: error: {err}", file=sys.stderr)
        return server.exit_code or EXIT_FAILURE
    return EXIT_OK


# -- prefork check ---------------------------------------------------------------


def run_check(args: argparse.Namespace) -> int:
    """``prefork check``: everything ``run`` reads, loaded and printed; nothing started."""
    from prefork.server import _load_tls

    try:
        cfg, _, unknown = load_config(args)
        for name in unknown:
            print(
                f"prefork: warning: {name}: unknown environment variable, ignored", file=sys.stderr
            )
        _load_tls(cfg)
        addrs, _ = bind_spec(cfg)
        interface = resolve_app(args.app, cfg)
    except PreforkError as exc:
        print(f"prefork: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print("# the effective config: defaults < config file < PREFORK_* environment < flags")
    for key, value in cfg.to_dict().items():
        print(f"# {key} is not set" if value is None else f"{key} = {toml_value(value)}")
    scheme = "https" if cfg.ssl is not None else "http"
    where = ", ".join(
        f"{scheme}://{format_host(h)}:{p if p else '<any free port>'}" for h, p in addrs
    )
    print(f"# would serve {args.app} ({interface}) with {cfg.workers} worker(s) on {where}")
    print("# (or on the sockets systemd passes, when socket-activated)")
    return EXIT_OK


def resolve_app(spec: str, cfg: Config) -> str:
    """Import ``spec`` as a worker would; return the interface it would be served with.

    Raises ConfigError naming the app.
    """
    from prefork.apps import detect_interface, resolve_target

    app = resolve_target(spec, cfg)
    return cfg.interface if cfg.interface != "auto" else detect_interface(app, spec)


_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def toml_value(value: Any) -> str:
    """``value`` as a TOML value (inline tables and arrays, so one key per line)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # JSON's escapes are TOML basic-string escapes
    if isinstance(value, Mapping):
        items = (
            f"{k if _BARE_KEY.fullmatch(k) else json.dumps(k)} = {toml_value(v)}"
            for k, v in value.items()
            if v is not None
        )
        return "{ " + ", ".join(items) + " }"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(f"no TOML form for {type(value).__name__}")
