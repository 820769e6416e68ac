"""The file the grid apps serve at ``/file`` (2 MiB, made once per machine)."""

from __future__ import annotations

import os
import tempfile

CONTENT = bytes(range(256)) * 8192


def grid_file(name: str) -> str:
    """The path of a file holding CONTENT: made if missing, by an atomic rename."""
    path = os.path.join(tempfile.gettempdir(), f"prefork-wsgi-grid-{name}.bin")
    if not os.path.exists(path) or os.path.getsize(path) != len(CONTENT):
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path))
        with os.fdopen(fd, "wb") as f:
            f.write(CONTENT)
        os.replace(tmp, path)
    return path
