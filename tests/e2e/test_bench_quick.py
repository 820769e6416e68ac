"""bench/run.py in quick mode, so that the harness cannot rot: S1, prefork and the ceiling.

Long runs (``python bench/run.py``) never go into the test suite.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "bench"))
import heads  # noqa: E402

needs_wrk = pytest.mark.skipif(
    shutil.which("wrk") is None, reason="wrk is not installed (apt-get install wrk)"
)
needs_taskset = pytest.mark.skipif(
    shutil.which("taskset") is None, reason="taskset is not installed (util-linux)"
)


def _quick(tmp_path: Path, *extra: str) -> tuple[dict, str]:
    """Run bench/run.py --quick with ``extra``; the raw results and the report's text."""
    raw, report = tmp_path / "quick.json", tmp_path / "quick.md"
    # The sources: the compiled build (a minute, gcc) is .ci/run's own step.
    argv = [sys.executable, str(REPO / "bench" / "run.py"), "--quick", "--build", "source", *extra]
    proc = subprocess.run(
        [*argv, "--json", str(raw), "--output", str(report)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(raw.read_text()), report.read_text()


@needs_wrk
@needs_taskset
def test_quick_mode_measures_prefork_and_the_ceiling(tmp_path: Path) -> None:
    results, text = _quick(tmp_path, "--servers", "prefork,ceiling")
    rows = results["scenarios"]["S1"]["rows"]
    assert set(rows) == {"prefork", "ceiling"}
    for name, row in rows.items():
        assert not row.get("error"), f"{name}: {row.get('error')}"
        assert row["rps"] > 0, name
        assert row["socket_errors"] == 0, name
        assert row["non_2xx"] == 0, name
    assert "| prefork | " in text
    assert "| design ceiling | " in text
    assert "## Goals (this run)" in text
    assert "S1 >= 0.65x the design ceiling" in text


@needs_wrk
@needs_taskset
def test_quick_varied_heads_scenario_serves_every_head(tmp_path: Path) -> None:
    results, text = _quick(tmp_path, "--scenarios", "V1", "--servers", "prefork,ceiling")
    rows = results["scenarios"]["V1"]["rows"]
    assert set(rows) == {"prefork", "ceiling"}
    for name, row in rows.items():
        assert not row.get("error"), f"{name}: {row.get('error')}"
        assert row["rps"] > 0, name
        assert row["non_2xx"] == 0, name  # every varied head was answered 200
        assert row["socket_errors"] == 0, name
    assert "## V1: every request head different" in text
    assert "| V1 >= 0.6x the design ceiling | " in text


class _Recorder(asyncio.Protocol):
    """Records every request head it is sent and answers each with a tiny 200."""

    seen: list[bytes]
    transports: list[asyncio.Transport]

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.transports.append(transport)
        self.buf = b""

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while (end := self.buf.find(heads.HEAD_END)) >= 0:
            self.seen.append(self.buf[: end + 4])
            self.buf = self.buf[end + 4 :]
            self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")


@needs_wrk
def test_wrk_sends_the_heads_in_turn_with_the_host_filled_in(tmp_path: Path) -> None:
    count = 500
    script = heads.write(tmp_path, count)
    seen: list[bytes] = []
    transports: list[asyncio.Transport] = []
    loop = asyncio.new_event_loop()

    def factory() -> _Recorder:
        recorder = _Recorder()
        recorder.seen = seen
        recorder.transports = transports
        return recorder

    server = loop.run_until_complete(loop.create_server(factory, "127.0.0.1", 0))
    port = server.sockets[0].getsockname()[1]
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        proc = subprocess.run(
            ["wrk", "-t1", "-c2", "-d1s", "-s", str(script), f"http://127.0.0.1:{port}/"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        # Close what wrk left open and let the loop finish closing it (no
        # "unclosed transport" warning later, in another test).
        server.close()
        for transport in transports:
            transport.close()
        loop.run_until_complete(server.wait_closed())
        loop.run_until_complete(asyncio.sleep(0.05))
        loop.close()
    assert proc.returncode == 0, proc.stderr
    assert len(seen) > count, f"only {len(seen)} requests in 1 s"
    expected = {heads.for_host(h, f"127.0.0.1:{port}") for h in heads.generate(count)}
    # Every head sent is one of the generated heads, Host filled in; all of them were sent.
    assert set(seen) == expected
