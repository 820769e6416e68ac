"""Requests lost while workers are replaced under load, prefork beside its peers (issue 15, part 2).

wrk keeps ``--connections`` keep-alive connections busy on a server with 2
workers while its master gets SIGHUP ``--hups`` times, then SIGTTIN, then
SIGTTOU (and, for the ``kill9`` row, one worker is SIGKILLed). wrk never
retries: a connection closed under a request it sent is a read error.

Every server runs the bench's own app (``apps/``, started by ``servers.py``
as ``run.py`` starts it, not pinned): ``GET /hello``; the POST row sends
512-byte bodies to ``/echo`` (nginx, which has no /echo, to ``/hello``,
where ``return 200`` discards the body). The signals go out on one
timeline for every server: step i at ``duration * 0.8 * i / (steps + 1)``,
or once the previous step has settled (a reload's old workers are gone,
the worker count is what TTIN/TTOU ask for), whichever is later. A signal
a server does not have is not sent (n/a in the table); a step that would
come within half a second of wrk's end is not sent and is counted as late.

    python bench/reload_under_load.py                   # every server and row, 24 s each
    python bench/reload_under_load.py --duration 12 --servers prefork,nginx --rows plain,post

Needs wrk on PATH, nginx for the nginx rows, the peers in bench/.venv
(``python bench/run.py --servers granian,gunicorn`` installs them); runs the
prefork on this checkout. Traffic stays on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import servers
from run import make_cert
from servers import VENV_PYTHON, Launch

POST_LUA = """
wrk.method = "POST"
wrk.body = string.rep("x", 512)
wrk.headers["Content-Type"] = "text/plain"
"""
ROWS = ("plain", "tls", "post", "kill9")
HUP, TTIN, TTOU = signal.SIGHUP, signal.SIGTTIN, signal.SIGTTOU


@dataclass(frozen=True)
class Peer:
    """What the script may ask of a server: the master's signals, and rows it cannot run."""

    signals: frozenset[signal.Signals]
    skip_rows: dict[str, str] = field(default_factory=dict)  # row -> why not
    env: dict[str, str] = field(default_factory=dict)  # added to the server's environment


PEERS: dict[str, Peer] = {
    "prefork": Peer(frozenset({HUP, TTIN, TTOU})),
    # nginx: HUP re-reads the config, starts new workers, and the old ones
    # finish gracefully. It has no signal that adds or removes one worker.
    "nginx": Peer(frozenset({HUP})),
    # granian: HUP respawns the workers one by one, waiting --respawn-interval
    # (3.5 s by default) between starting a new worker and stopping the old:
    # five HUPs on 2 workers would take 35 s and not fit the run, so 0.5 s.
    # A worker that dies within 5.5 s of its respawn counts as a crash loop
    # and granian exits, so a kill -9 after the reloads would stop the server.
    "granian": Peer(
        frozenset({HUP}),
        skip_rows={"kill9": "granian exits on a worker death this close to a respawn"},
        env={"GRANIAN_RESPAWN_INTERVAL": "0.5"},
    ),
    # gunicorn's arbiter: HUP starts new workers and stops the old ones; TTIN
    # and TTOU add and remove one (the oldest) worker.
    "gunicorn": Peer(frozenset({HUP, TTIN, TTOU})),
}


@dataclass
class Result:
    requests: int = 0
    read: int = 0
    connect: int = 0
    write: int = 0
    timeout: int = 0
    non2xx: int = 0
    sent: list[str] = field(default_factory=list)  # signal names, in order
    not_sent: list[str] = field(default_factory=list)  # "TTIN n/a", "HUP late"
    killed_sockets: int = 0
    note: str = ""


def _workers(master: int) -> list[int]:
    """The master's children: the workers for every server here (none runs helpers)."""
    try:
        text = Path(f"/proc/{master}/task/{master}/children").read_text()
    except OSError:
        return []
    return [int(pid) for pid in text.split()]


def _sockets(pid: int) -> int:
    """Sockets a process holds: its connections, its listen socket, any channel to its master."""
    count = 0
    with contextlib.suppress(OSError):
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                count += os.readlink(fd).startswith("socket:")
    return count


def _settle(master: int, want: int, old: set[int], until: float) -> None:
    """Until ``want`` workers run, none of them in ``old`` (a reload done); or until ``until``."""
    while time.monotonic() < until:
        now = set(_workers(master))
        if len(now) == want and not now & old:
            return
        time.sleep(0.05)


def _parse_wrk(out: str, result: Result) -> None:
    m = re.search(r"(\d+) requests in", out)
    if m:
        result.requests = int(m.group(1))
    m = re.search(r"connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if m:
        result.connect, result.read, result.write, result.timeout = map(int, m.groups())
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if m:
        result.non2xx = int(m.group(1))


@contextlib.contextmanager
def _environ(extra: dict[str, str]) -> Iterator[None]:
    """``extra`` in os.environ while a server starts (servers.start passes os.environ on)."""
    saved = {key: os.environ.get(key) for key in extra}
    os.environ.update(extra)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _timeline(
    master: int, peer: Peer, steps: list[signal.Signals], duration: float, result: Result
) -> None:
    """Send ``steps``, from now (wrk has just started) to at most ``duration`` from now."""
    started = time.monotonic()
    end = started + duration
    gap = duration * 0.8 / (len(steps) + 1)
    want = 2
    for i, step in enumerate(steps, 1):
        time.sleep(max(0.0, started + gap * i - time.monotonic()))
        label = "kill -9" if step is signal.SIGKILL else step.name.removeprefix("SIG")
        if step is not signal.SIGKILL and step not in peer.signals:
            result.not_sent.append(f"{label} n/a")
            continue
        if time.monotonic() > end - 0.5:
            result.not_sent.append(f"{label} late")
            continue
        old = set(_workers(master))
        target = master
        if step is signal.SIGKILL:
            if not old:
                result.not_sent.append(f"{label}: no worker")
                continue
            target = min(old)  # any one worker
            result.killed_sockets = _sockets(target)
        try:
            os.kill(target, step)
        except ProcessLookupError:
            result.not_sent.append(f"{label}: no such process")
            continue
        result.sent.append(label)
        if step is not signal.SIGKILL:
            want += {TTIN: 1, TTOU: -1}.get(step, 0)
            _settle(master, want, old if step is HUP else set(), end)


def run_row(name: str, row: str, duration: float, hups: int, connections: int) -> Result:
    peer = PEERS[name]
    result = Result()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        (workdir / "post.lua").write_text(POST_LUA)
        tls = make_cert(workdir) if row == "tls" else None
        launch = Launch(workers=2, pinned_cpu=None, tls=tls)
        with _environ(peer.env):
            server = servers.start(name, launch, workdir)
        master = server.proc.pid
        wrk: subprocess.Popen[str] | None = None
        try:
            # The first workers may still be starting after the first answer.
            _settle(master, 2, set(), time.monotonic() + 20)
            path = "/echo" if row == "post" and name != "nginx" else "/hello"
            cmd = ["wrk", "-t2", f"-c{connections}", f"-d{duration:.0f}s", server.url + path]
            if row == "post":
                cmd[1:1] = ["-s", str(workdir / "post.lua")]
            wrk = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
            steps = [HUP] * hups + [TTIN, TTOU] + ([signal.SIGKILL] if row == "kill9" else [])
            _timeline(master, peer, steps, duration, result)
            out, _ = wrk.communicate(timeout=duration + 30)
            if server.proc.poll() is not None:
                result.note = f"server exited ({server.proc.returncode}) during the run"
        finally:
            if wrk is not None and wrk.poll() is None:
                wrk.kill()
                wrk.wait()
            servers.stop(server)
        _parse_wrk(out, result)
        return result


def _signals(result: Result) -> str:
    """What was sent ("HUP x5, TTIN, TTOU"), then in brackets what was not (n/a, late)."""
    parts: list[str] = []
    for names in (result.sent, result.not_sent):
        counted: dict[str, int] = {}
        for item in names:
            counted[item] = counted.get(item, 0) + 1
        parts.append(", ".join(k if n == 1 else f"{k} x{n}" for k, n in counted.items()))
    return parts[0] + (f" ({parts[1]})" if parts[1] else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--duration", "--seconds", type=float, default=24.0, help="wrk's run, s")
    parser.add_argument("--hups", type=int, default=5)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--servers", default=",".join(PEERS), help=",".join(PEERS))
    parser.add_argument("--rows", default=",".join(ROWS), help=",".join(ROWS))
    args = parser.parse_args()
    names = args.servers.split(",")
    rows = args.rows.split(",")
    unknown = [n for n in names if n not in PEERS] + [r for r in rows if r not in ROWS]
    if unknown:
        parser.error(f"unknown server or row: {', '.join(unknown)}")
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not on PATH")
    if "nginx" in names and not servers.have("nginx"):
        raise SystemExit("nginx is not on PATH")
    if {"granian", "gunicorn"} & set(names) and not VENV_PYTHON.exists():
        raise SystemExit(f"{VENV_PYTHON} is missing: python bench/run.py installs the peers")
    print(
        f"{datetime.date.today()}: wrk -t2 -c{args.connections}, 2 workers, "
        f"{args.duration:.0f} s: HUP x{args.hups}, TTIN, TTOU (kill9: then kill -9 of one worker)"
    )
    columns = ("server", "row", "signals", "requests", "read errors", "other socket errors")
    columns += ("non-2xx", "killed worker's sockets")
    print("| " + " | ".join(columns) + " |")
    print("|---|---|---|--:|--:|--:|--:|--:|", flush=True)
    try:
        for name in names:
            label = servers.SERVERS[name][0]
            for row in rows:
                why = PEERS[name].skip_rows.get(row)
                if why:
                    print(f"| {label} | {row} | n/a: {why} | | | | | |", flush=True)
                    continue
                try:
                    r = run_row(name, row, args.duration, args.hups, args.connections)
                except RuntimeError as exc:  # servers.start: it did not come up
                    first = str(exc).splitlines()[0]
                    print(f"| {label} | {row} | did not start: {first} | | | | | |", flush=True)
                    continue
                other = r.connect + r.write + r.timeout
                killed = r.killed_sockets or "-"
                signals_ = _signals(r) + (f"; {r.note}" if r.note else "")
                print(
                    f"| {label} | {row} | {signals_} | {r.requests:,} | {r.read} | {other} "
                    f"| {r.non2xx} | {killed} |",
                    flush=True,
                )
    finally:
        servers.stop_all()


if __name__ == "__main__":
    main()
