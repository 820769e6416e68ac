"""Requests lost while workers are replaced under load (issue 15, part 2).

wrk keeps ``--connections`` keep-alive connections busy on a prefork server
with 2 workers while the master gets SIGHUP ``--hups`` times, then SIGTTIN,
then SIGTTOU (and, for the ``kill9`` row, one worker is SIGKILLed). wrk never
retries: a connection closed under a request it sent is a read error. Prints
one table row per scenario: requests, read errors, other socket errors,
non-2xx answers.

    python bench/reload_under_load.py                 # all rows, 24 s each
    python bench/reload_under_load.py --seconds 10 --rows plain,post

Needs wrk and openssl (for the TLS row) on PATH; runs the prefork on
PYTHONPATH. Traffic stays on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

APP = """
def handle(method, path, args, headers, body, ctx):
    return "ok " + str(len(body)), 200, {"content-type": "text/plain"}
"""
POST_LUA = """
wrk.method = "POST"
wrk.body = string.rep("x", 512)
wrk.headers["Content-Type"] = "text/plain"
"""
ROWS = ("plain", "tls", "post", "kill9")
OPENSSL_SELF_SIGNED = ("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1")
OPENSSL_SELF_SIGNED += ("-subj", "/CN=localhost")
LISTEN_RE = re.compile(r"listening on (https?)://[\d.]+:(\d+)")


def _start(workdir: Path, tls: bool) -> tuple[subprocess.Popen[str], int, Path]:
    log_path = workdir / "server.log"
    args = [sys.executable, "-m", "prefork", "run", "app:handle", "-b", "127.0.0.1:0", "-w", "2"]
    args += ["--log-level", "info"]
    if tls:
        args += ["--certfile", str(workdir / "cert.pem"), "--keyfile", str(workdir / "key.pem")]
    log = log_path.open("w")
    proc = subprocess.Popen(
        args, cwd=workdir, stdout=subprocess.DEVNULL, stderr=log, text=True, process_group=0
    )
    deadline = time.monotonic() + 20
    port = 0
    while time.monotonic() < deadline and not port:
        m = LISTEN_RE.search(log_path.read_text())
        port = int(m.group(2)) if m else 0
        time.sleep(0.1)
    if not port:
        _stop(proc)
        raise SystemExit(f"server did not start:\n{log_path.read_text()}")
    while time.monotonic() < deadline and len(_workers(proc.pid)) < 2:
        time.sleep(0.1)
    return proc, port, log_path


def _workers(master: int) -> list[int]:
    try:
        text = Path(f"/proc/{master}/task/{master}/children").read_text()
    except OSError:
        return []
    return [int(pid) for pid in text.split()]


def _sockets(pid: int) -> int:
    """Sockets a process holds: its connections and its listen socket."""
    fds = Path(f"/proc/{pid}/fd")
    count = 0
    for fd in fds.iterdir():
        with contextlib.suppress(OSError):
            count += os.readlink(fd).startswith("socket:")
    return count


def _stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=40)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _wait_ready(master: int, want: int, timeout: float = 30.0) -> None:
    """Until ``want`` workers run (a reload's old ones have gone)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and len(_workers(master)) != want:
        time.sleep(0.05)


def _parse_wrk(out: str) -> dict[str, int]:
    result = {"requests": 0, "read": 0, "connect": 0, "write": 0, "timeout": 0, "non2xx": 0}
    m = re.search(r"(\d+) requests in", out)
    if m:
        result["requests"] = int(m.group(1))
    m = re.search(r"connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if m:
        result["connect"], result["read"], result["write"], result["timeout"] = map(int, m.groups())
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if m:
        result["non2xx"] = int(m.group(1))
    return result


def run_row(row: str, seconds: float, hups: int, connections: int) -> dict[str, int]:
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        (workdir / "app.py").write_text(textwrap.dedent(APP))
        (workdir / "post.lua").write_text(POST_LUA)
        tls = row == "tls"
        if tls:
            subprocess.run(
                [*OPENSSL_SELF_SIGNED, "-keyout", "key.pem", "-out", "cert.pem"],
                cwd=workdir,
                check=True,
                capture_output=True,
            )
        proc, port, _log = _start(workdir, tls)
        try:
            url = f"{'https' if tls else 'http'}://127.0.0.1:{port}/"
            cmd = ["wrk", "-t2", f"-c{connections}", f"-d{seconds:.0f}s", url]
            if row == "post":
                cmd[1:1] = ["-s", str(workdir / "post.lua")]
            wrk = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
            started = time.monotonic()
            # The signals spread over the middle of the run, each after the last settled.
            steps = [signal.SIGHUP] * hups + [signal.SIGTTIN, signal.SIGTTOU]
            if row == "kill9":
                steps.append(signal.SIGKILL)
            gap = seconds * 0.8 / (len(steps) + 1)
            want = 2
            killed_sockets = 0
            for step in steps:
                time.sleep(max(0.0, started + gap * (steps.index(step) + 1) - time.monotonic()))
                if step is signal.SIGKILL:
                    victim = _workers(proc.pid)[0]
                    killed_sockets = _sockets(victim)
                    os.kill(victim, signal.SIGKILL)
                    continue
                os.kill(proc.pid, step)
                want += {signal.SIGTTIN: 1, signal.SIGTTOU: -1}.get(step, 0)
                _wait_ready(proc.pid, want)
            out, _ = wrk.communicate(timeout=seconds + 30)
        finally:
            _stop(proc)
        result = _parse_wrk(out)
        result["killed_sockets"] = killed_sockets
        return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=24.0)
    parser.add_argument("--hups", type=int, default=5)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--rows", default=",".join(ROWS))
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not on PATH")
    socket.setdefaulttimeout(5)
    print(
        f"wrk -c{args.connections}, 2 workers, {args.seconds:.0f} s: HUP x{args.hups}, TTIN, TTOU"
    )
    columns = ("row", "requests", "read errors", "other socket errors", "non-2xx")
    print("| " + " | ".join((*columns, "killed worker's sockets")) + " |")
    print("|---|--:|--:|--:|--:|--:|")
    for row in args.rows.split(","):
        r = run_row(row, args.seconds, args.hups, args.connections)
        other = r["connect"] + r["write"] + r["timeout"]
        killed = r["killed_sockets"] or "-"
        print(
            f"| {row} | {r['requests']:,} | {r['read']} | {other} | {r['non2xx']} | {killed} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
