"""Build hook: the optional compiled build (mypyc) of prefork's per-request path.

Everything else about the package is in pyproject.toml. By default this adds
nothing: ``pip install .`` and ``pip install -e .`` give pure Python, need no
compiler and leave no extension modules beside the sources. With
``PREFORK_COMPILE=1`` in the environment at build time (``pip wheel .``,
``pip install .``, ``python setup.py build_ext --inplace``) the modules listed
below are compiled with mypyc (it ships with mypy) into C extensions that
Python imports in place of the .py files; ``prefork.COMPILED`` then says so.
A compile that was asked for and fails fails the build: no half-compiled
wheel.
"""

from __future__ import annotations

import os
import sys

from setuptools import setup

# The per-request path: the sans-I/O HTTP layer, the connection, its lifecycle
# and the worker's shared state, the native handler, the per-request modules
# of the ASGI and WSGI interfaces, and the per-message ones of a WebSocket
# (the session, an ASGI app's receive and send). Not compiled: asgi_context (a
# types.coroutine generator, which a compiled generator cannot stand in for),
# asgi_messages (exception classes deriving from OSError and RuntimeError),
# websocket_asgi (the scope and the session's set-up), websocket_handshake and
# websocket_deflate (subclasses of the websockets library's classes, and
# WebSocketClosed, a ConnectionError), the lifespan, the WSGI request body
# stream, the master, the worker's start-up and the CLI (they run once).
COMPILED_MODULES = [
    "prefork/_compiled.py",
    "prefork/http/compression.py",
    "prefork/http/fields.py",
    "prefork/http/forwarded.py",
    "prefork/http/head_cache.py",
    "prefork/http/protocol.py",
    "prefork/http/proxy_protocol.py",
    "prefork/http/request.py",
    "prefork/http/response.py",
    "prefork/http/scan.py",
    "prefork/http/parsers/__init__.py",
    "prefork/http/parsers/h11_parser.py",
    "prefork/http/parsers/httptools_parser.py",
    "prefork/http/parsers/llhttp_parser.py",
    "prefork/engine/batch.py",
    "prefork/engine/connection.py",
    "prefork/engine/lifecycle.py",
    "prefork/engine/shared.py",
    "prefork/engine/slices.py",
    "prefork/apps/handler.py",
    "prefork/apps/native.py",
    "prefork/apps/asgi.py",
    "prefork/apps/asgi_exchange.py",
    "prefork/apps/asgi_fields.py",
    "prefork/apps/asgi_scope.py",
    "prefork/apps/wsgi.py",
    "prefork/apps/wsgi_call.py",
    "prefork/apps/wsgi_environ.py",
    "prefork/apps/wsgi_headers.py",
    "prefork/apps/websocket.py",
    "prefork/apps/websocket_exchange.py",
    "prefork/apps/websocket_frames.py",
    "prefork/apps/websocket_reader.py",
    "prefork/apps/websocket_run.py",
]


def _compile_asked() -> bool:
    value = os.environ.get("PREFORK_COMPILE", "").strip().lower()
    if value in ("", "0", "no", "false", "off"):
        return False
    if value in ("1", "yes", "true", "on"):
        return True
    sys.exit(f"PREFORK_COMPILE={value!r}: expected 1 or 0")


def _ext_modules() -> list[object]:
    if not _compile_asked():
        return []
    try:
        from mypyc.build import mypycify
    except ImportError as exc:  # a clear line rather than a pure-Python wheel in disguise
        sys.exit(f"PREFORK_COMPILE=1 needs mypy (which ships mypyc) at build time: {exc}")
    try:
        compiled = list(
            mypycify(COMPILED_MODULES, opt_level="3", debug_level="0", group_name="prefork")
        )
    except SystemExit as exc:  # mypyc exits on type errors it cannot compile
        sys.exit(f"PREFORK_COMPILE=1: mypyc could not compile prefork ({exc.code})")
    return [*compiled, _llhttp_extension(), _scan_extension()]


def _llhttp_extension() -> object:
    """prefork's binding of llhttp (prefork/http/parsers/_llhttp.c), with llhttp itself.

    Built from llhttp's sources (vendor/llhttp, the release httptools wraps)
    rather than linked to httptools' copy, which exports no API to link to.
    Hidden visibility: this copy's symbols stay out of the process's table.
    SSE 4.2 where the building machine has it: llhttp then scans field names
    and values 16 bytes at a time (~40 % of its instructions on a typical
    head). The compiled build is made for the machine it is built on (as
    mypyc's C is); one built without it runs anywhere.
    """
    from setuptools import Extension

    llhttp = "vendor/llhttp"
    flags = ["-O3", "-fvisibility=hidden"]
    if _has_sse42():
        flags.append("-msse4.2")
    return Extension(
        "prefork.http.parsers._llhttp",
        sources=[
            "prefork/http/parsers/_llhttp.c",
            f"{llhttp}/src/api.c",
            f"{llhttp}/src/http.c",
            f"{llhttp}/src/llhttp.c",
        ],
        include_dirs=[f"{llhttp}/include"],
        extra_compile_args=flags,
    )


def _scan_extension() -> object:
    """The request path's small scans (prefork/http/_scan.c, picked by prefork.http.scan)."""
    from setuptools import Extension

    return Extension(
        "prefork.http._scan",
        sources=["prefork/http/_scan.c"],
        extra_compile_args=["-O3", "-fvisibility=hidden"],
    )


def _has_sse42() -> bool:
    """Whether this x86-64 Linux machine's CPU has SSE 4.2 (nearly every one since 2009)."""
    import platform

    if platform.machine() not in ("x86_64", "AMD64") or not sys.platform.startswith("linux"):
        return False
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            return any(line.startswith("flags") and " sse4_2" in line for line in f)
    except OSError:
        return False


if __name__ == "__main__":  # setuptools runs this file as __main__; tests import it
    setup(ext_modules=_ext_modules())
