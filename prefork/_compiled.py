"""Whether this copy of prefork is the compiled build (see setup.py).

This module is itself on the compiled list, so when mypyc built it, its
``__file__`` is an extension module rather than a .py file. The check is on
the module that runs, not on a flag written at build time, so a stale flag
cannot lie.
"""

from __future__ import annotations

from typing import Final

COMPILED: Final[bool] = not __file__.endswith((".py", ".pyc"))
# How ``prefork --version`` and the master's first log line name the build.
BUILD: Final[str] = "compiled" if COMPILED else "pure Python"
