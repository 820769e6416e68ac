"""Parser backends: each turns one request head into its parts.

``httptools`` (llhttp, fast) is the default when importable; ``h11`` (pure
Python) is the fallback and the oracle the fast path is checked against. The
compiled build reads heads for ``httptools`` through its own binding of the
same llhttp (``llhttp_parser``), falling back to httptools' where it must.
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


def make_parser(name: str, server_fields: bool = False) -> HeadParser:
    """A new head parser of backend ``name`` (as returned by ``resolve``).

    ``server_fields``: the reader makes only the server's fields a dict
    (``RequestReader.fields_as_list``), so a backend that can make that dict
    itself should.
    """
    if name == "httptools":
        try:
            # The compiled build's binding of the same llhttp (one C call per head).
            from prefork.http.parsers.llhttp_parser import LlhttpHeadParser
        except ImportError:
            from prefork.http.parsers.httptools_parser import HttptoolsHeadParser

            return HttptoolsHeadParser()
        return LlhttpHeadParser(server_fields)
    from prefork.http.parsers.h11_parser import H11HeadParser

    return H11HeadParser()
