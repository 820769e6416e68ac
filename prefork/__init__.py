"""prefork: a pre-fork HTTP/1.1 server for Python."""

from __future__ import annotations

__version__ = "0.1.0"
