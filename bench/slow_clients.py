"""Slow clients against one worker with default settings (issue 15, part 1).

For each slowhttptest mode (-H slowloris, -B slow body, -X slow read of a
100 KiB response): ``slowhttptest -c 1000 -i 10 -r 200 -p 3`` (at nice 19: in
real life the attacker is elsewhere) against a fresh server, while a client
makes one request per new connection every 10 ms; the same client also runs
for the same time just before the attack. Prints one table row per mode:
seconds slowhttptest's probe found the service unavailable, attacking
connections the server cut, the worker's peak RSS, and the client's p99
before and during the attack.

    python bench/slow_clients.py                   # all modes, 12 s attacks
    python bench/slow_clients.py --modes H --seconds 20

Needs slowhttptest on PATH; runs the prefork on PYTHONPATH; loopback only.
"""

from __future__ import annotations

import argparse
import csv
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

APP = """
BIG = b"x" * (100 * 1024)

def handle(method, path, args, headers, body, ctx):
    if path == "/big":
        return BIG, 200, {"content-type": "application/octet-stream"}
    return "hello", 200, {"content-type": "text/plain"}
"""
CUT = {
    "H": "request head too slow",
    "B": "request body too slow",
    "X": "response read too slowly",
}
LISTEN_RE = re.compile(r"listening on https?://[\d.]+:(\d+)")


def client_p99(port: int, seconds: float) -> tuple[float, int]:
    """p99 latency (ms) of one GET per new connection every 10 ms; and the failures."""
    latencies: list[float] = []
    failures = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        t0 = time.monotonic()
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=3) as sock:
                sock.sendall(b"GET / HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n")
                data = b""
                while not data.endswith(b"hello"):
                    chunk = sock.recv(4096)
                    if not chunk:
                        raise ConnectionError("closed")
                    data += chunk
            latencies.append(time.monotonic() - t0)
        except OSError:
            failures += 1
        time.sleep(max(0.0, 0.01 - (time.monotonic() - t0)))
    latencies.sort()
    p99 = latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))] if latencies else 0.0
    return p99 * 1000, failures


def worker_of(master: int) -> int:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
        if children:
            return int(children[0])
        time.sleep(0.05)
    raise SystemExit("no worker started")


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def run_mode(mode: str, seconds: float) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        (workdir / "app.py").write_text(textwrap.dedent(APP))
        log_path = workdir / "server.log"
        with log_path.open("w") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "prefork", "run", "app:handle", "-b", "127.0.0.1:0"],
                cwd=workdir,
                stdout=subprocess.DEVNULL,
                stderr=log,
                process_group=0,
            )
        try:
            port = 0
            deadline = time.monotonic() + 20
            while not port and time.monotonic() < deadline:
                m = LISTEN_RE.search(log_path.read_text())
                port = int(m.group(1)) if m else 0
                time.sleep(0.05)
            worker = worker_of(proc.pid)
            time.sleep(0.5)
            before_p99, _ = client_p99(port, min(8.0, seconds))
            rss_before = rss_kb(worker)
            peak = [rss_before]
            stop = threading.Event()

            def sample() -> None:
                while not stop.wait(0.5):
                    peak[0] = max(peak[0], rss_kb(worker))

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            path = "/big" if mode == "X" else "/"
            stats = workdir / "stats"
            cmd = ["nice", "-n", "19", "slowhttptest", f"-{mode}", "-c", "1000", "-r", "200"]
            cmd += ["-i", "10", "-p", "3", "-l", f"{seconds:.0f}", "-g", "-o", str(stats)]
            cmd += ["-u", f"http://127.0.0.1:{port}{path}"]
            attack = subprocess.Popen(
                cmd,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            time.sleep(1.0)
            during_p99, failures = client_p99(port, min(8.0, seconds - 1))
            attack.wait(timeout=seconds + 60)
            stop.set()
            sampler.join()
            with (workdir / "stats.csv").open() as fh:
                rows = list(csv.DictReader(fh))
            unavailable = sum(1 for r in rows if r["Service Available"] == "0")
            cut = log_path.read_text().count(CUT[mode])
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=40)
        return {
            "unavailable": f"{unavailable} of {len(rows)} s",
            "cut": cut,
            "rss": f"{rss_before / 1024:.1f} / {peak[0] / 1024:.1f} MB",
            "p99": f"{before_p99:.1f} / {during_p99:.1f} ms",
            "failures": failures,
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=12.0)
    parser.add_argument("--modes", default="H,B,X")
    args = parser.parse_args()
    if shutil.which("slowhttptest") is None:
        raise SystemExit("slowhttptest is not on PATH (apt-get install slowhttptest)")
    print("slowhttptest -c 1000 -i 10 -r 200 -p 3, one worker, default settings")
    print(
        "| mode | unavailable | attackers cut | worker RSS before / peak"
        " | client p99 before / during | client failures |"
    )
    print("|---|--:|--:|--:|--:|--:|")
    for mode in args.modes.split(","):
        r = run_mode(mode, args.seconds)
        print(
            f"| -{mode} | {r['unavailable']} | {r['cut']} | {r['rss']} | {r['p99']}"
            f" | {r['failures']} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
