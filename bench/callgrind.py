"""A server under callgrind: the user-space instructions its processes run over a stretch.

Shared by ``http_instructions.py`` and ``ws_instructions.py``. Instructions
do not move with the host's speed, as requests per second do here (a
neighbour on the host slows some code far more than other code), so a
change to the request path, and a comparison with a peer, can be judged in
a few minutes on a busy machine.

What is counted: every instruction of the server's processes and threads in
user space (Python, the extensions, libc). The kernel's share (the syscalls,
the loopback's TCP) and the cost of switching between threads are not:
a server that hands each request between threads (granian) pays more in
time than its instructions show.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import servers


def callgrind_argv(argv: list[str], out: Path) -> list[str]:
    """``argv`` under callgrind, following forks and execs, one file per process in ``out``."""
    return [
        "valgrind", "--tool=callgrind", f"--callgrind-out-file={out}/cg.%p",
        "--dump-instr=no", "--trace-children=yes", *argv,
    ]  # fmt: skip


class Counted:
    """A server started under callgrind: ``zero()``, the work, then ``instructions()``."""

    def __init__(self, name: str, command: Callable[[int], list[str]], out: Path) -> None:
        """Start ``command(port)`` under callgrind (``servers.start``, pinned to
        core 0: the client and wrk run on the other) and wait until it answers;
        a server starts ~50x slower under callgrind."""
        self.out = out
        self.server = servers.start(
            name,
            servers.Launch(pinned_cpu="0"),
            out,
            timeout=300.0,
            argv_of=lambda port: callgrind_argv(command(port), out),
        )
        self._pids = [p.pid for p in self.server.tree()]
        self._since = 0.0

    @property
    def port(self) -> int:
        return self.server.port

    def _control(self, flag: str) -> None:
        # By pid: callgrind_control without one acts on every callgrind run
        # of the machine, other people's included.
        for pid in self._pids:
            subprocess.run(
                ["callgrind_control", flag, str(pid)], capture_output=True, timeout=60, check=False
            )

    def zero(self) -> None:
        """Start counting from here."""
        self._control("-z")
        self._since = time.time()

    def instructions(self) -> int:
        """Instructions since ``zero()``, all the server's processes and threads."""
        self._control("-d")
        total = 0
        for path in self.out.glob("cg.*"):
            if os.path.getmtime(path) < self._since:
                continue
            text = path.read_text(errors="replace")
            # (summary: this dump's count; the totals line after it may
            # count some calls' costs again)
            m = re.search(r"^summary:\s+(\d+)", text, re.M)
            if m:
                total += int(m.group(1))
        return total

    def stop(self) -> None:
        servers.stop(self.server)
