"""Parser backends: each turns one request head into its parts.

``httptools`` (llhttp, fast) is the default when importable; ``h11`` (pure
Python) is the fallback and the oracle the fast path is checked against.
"""

from __future__ import annotations

import importlib

from prefork.errors import ConfigError
from prefork.http.request import HeadParser


def available(name: str) -> bool:
    # import_module asks sys.modules each time; an import statement in the
    # compiled build remembers its first success.
    try:
        importlib.import_module("httptools" if name == "httptools" else "h11")
    except ImportError:
        return False
    return True


def resolve(name: str) -> str:
    """The backend a config's ``http`` value means here: "httptools" or "h11"."""
    if name == "auto":
        return "httptools" if available("httptools") else "h11"
    if not available(name):
        raise ConfigError(f"http: the {name} parser is not installed")
    return name


def make_parser(name: str) -> HeadParser:
    """A new head parser of backend ``name`` (as returned by ``resolve``)."""
    if name == "httptools":
        from prefork.http.parsers.httptools_parser import HttptoolsHeadParser

        return HttptoolsHeadParser()
    from prefork.http.parsers.h11_parser import H11HeadParser

    return H11HeadParser()
