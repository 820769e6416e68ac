"""Run the Autobahn testsuite's fuzzingclient against prefork and summarise it.

    python tests/autobahn/run.py                 # all 517 cases (a few minutes)
    python tests/autobahn/run.py --cases '1.*,2.*'

Starts ``prefork run tests.autobahn.echo_app:handle`` on a free port (one
worker), runs ``wstest -m fuzzingclient`` (Python 2.7, installed with pip into
``--autobahn-dir``) with a spec naming those cases, then prints the count of
cases per behavior (OK, NON-STRICT, INFORMATIONAL, FAILED, UNIMPLEMENTED) and
the FAILED ones. Exits 1 when any case FAILED, 2 when it could not run.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PYTHON2 = Path("/root/.pyenv/versions/2.7.18/bin/python")
AUTOBAHN_DIR = Path("/opt/autobahn")
LISTEN_RE = re.compile(r"listening on https?://[\d.]+:(\d+)")
BEHAVIORS = ("OK", "NON-STRICT", "INFORMATIONAL", "UNIMPLEMENTED", "FAILED")
# wstest is started through this so the target folder's .pth files (zope's
# namespace package) are read, as they would be from site-packages.
WSTEST = (
    "import site, sys; site.addsitedir(sys.argv[1]); sys.argv = ['wstest'] + sys.argv[2:]; "
    "from autobahntestsuite.wstest import run; run()"
)


def installed(python2: Path = PYTHON2, autobahn_dir: Path = AUTOBAHN_DIR) -> bool:
    return python2.exists() and (autobahn_dir / "autobahntestsuite").is_dir()


def start_server(
    target: str, extra: list[str], log_path: Path
) -> tuple[subprocess.Popen[bytes], int]:
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    cmd = [sys.executable, "-m", "prefork", "run", target, "-b", "127.0.0.1:0", "-w", "1", *extra]
    with log_path.open("wb") as log:  # the child keeps its own descriptor
        proc = subprocess.Popen(
            cmd,
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            env=env,
            process_group=0,
        )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        m = LISTEN_RE.search(log_path.read_text(errors="replace"))
        if m and "ready" in log_path.read_text(errors="replace"):
            return proc, int(m.group(1))
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    stop_server(proc)
    raise RuntimeError(f"prefork did not start:\n{log_path.read_text(errors='replace')}")


def stop_server(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)


def run_fuzzingclient(
    port: int,
    cases: list[str],
    outdir: Path,
    python2: Path = PYTHON2,
    autobahn_dir: Path = AUTOBAHN_DIR,
    timeout: float = 1800,
) -> dict[str, dict[str, str]]:
    """Run the cases against ws://127.0.0.1:PORT; returns {case: {behavior, behaviorClose}}."""
    spec = {
        "outdir": str(outdir / "report"),
        "servers": [{"agent": "prefork", "url": f"ws://127.0.0.1:{port}"}],
        "cases": cases,
        "exclude-cases": [],
        "exclude-agent-cases": {},
    }
    spec_path = outdir / "fuzzingclient.json"
    spec_path.write_text(json.dumps(spec, indent=2))
    with (outdir / "wstest.log").open("wb") as log:
        subprocess.run(
            [
                str(python2),
                "-c",
                WSTEST,
                str(autobahn_dir),
                "-m",
                "fuzzingclient",
                "-s",
                str(spec_path),
            ],
            cwd=outdir,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            timeout=timeout,
            check=True,
        )
    index = json.loads((outdir / "report" / "index.json").read_text())
    results: dict[str, dict[str, str]] = index["prefork"]
    return results


def summarise(results: dict[str, dict[str, str]]) -> tuple[collections.Counter[str], list[str]]:
    counts: collections.Counter[str] = collections.Counter()
    failed = []
    for case, result in results.items():
        behavior = result["behavior"]
        if result.get("behaviorClose") == "FAILED":
            behavior = "FAILED"
        counts[behavior] += 1
        if behavior == "FAILED":
            failed.append(case)
    failed.sort(key=lambda c: [int(p) for p in c.split(".")])
    return counts, failed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--cases", default="*", help="comma-separated case ids or globs (default: all)"
    )
    parser.add_argument("--target", default="tests.autobahn.echo_app:handle")
    parser.add_argument("--python2", type=Path, default=PYTHON2)
    parser.add_argument("--autobahn-dir", type=Path, default=AUTOBAHN_DIR)
    parser.add_argument("--outdir", type=Path, help="keep the report here (default: a temp dir)")
    parser.add_argument("server_args", nargs="*", help="more `prefork run` flags, after --")
    args = parser.parse_args(argv)
    if not installed(args.python2, args.autobahn_dir):
        print(f"autobahntestsuite not found ({args.python2}, {args.autobahn_dir})", file=sys.stderr)
        return 2
    outdir = args.outdir or Path(tempfile.mkdtemp(prefix="autobahn-"))
    outdir.mkdir(parents=True, exist_ok=True)
    proc, port = start_server(args.target, args.server_args, outdir / "prefork.log")
    try:
        started = time.monotonic()
        cases = [c.strip() for c in args.cases.split(",") if c.strip()]
        results = run_fuzzingclient(port, cases, outdir, args.python2, args.autobahn_dir)
    finally:
        stop_server(proc)
    counts, failed = summarise(results)
    took = time.monotonic() - started
    print(f"autobahn fuzzingclient: {len(results)} cases in {took:.0f}s (report: {outdir}/report)")
    for behavior in BEHAVIORS:
        print(f"  {behavior:14s} {counts.get(behavior, 0)}")
    if failed:
        print("  failed: " + " ".join(failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
