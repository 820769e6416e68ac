"""prefork: a pre-fork HTTP/1.1 server for Python.

server, err = prefork.new({"port": 8080, "workers": 4}, handle)
server.serve()
"""

from __future__ import annotations

from prefork._compiled import BUILD, COMPILED
from prefork.server import Server, new

__version__ = "0.1.0"

__all__ = ["BUILD", "COMPILED", "Server", "__version__", "new"]
