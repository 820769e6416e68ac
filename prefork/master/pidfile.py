"""The master's pid file (``--pid``): written at the start, removed at the exit if still ours."""

from __future__ import annotations

import contextlib
import os

from prefork.errors import BindError


class PidFile:
    """``path`` holding this process's pid while it runs."""

    def __init__(self, path: str | None) -> None:
        self.path = path
        self._written = False

    def write(self) -> None:
        """Write this process's pid (nothing without a path); raises BindError."""
        if self.path is None:
            return
        try:
            with open(self.path, "w") as fh:
                fh.write(f"{os.getpid()}\n")
        except OSError as exc:
            raise BindError(f"pid file {self.path}: {exc.strerror}") from None
        self._written = True

    def remove(self) -> None:
        """Remove the file if this process wrote it and it still holds this pid."""
        if not self._written or self.path is None:
            return
        self._written = False
        mine = False  # gone already, or unreadable: leave it alone
        with contextlib.suppress(OSError), open(self.path) as fh:
            mine = fh.read().strip() == str(os.getpid())
        if mine:
            with contextlib.suppress(OSError):
                os.unlink(self.path)
