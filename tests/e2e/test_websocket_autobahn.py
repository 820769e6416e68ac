"""Autobahn's fuzzingclient against prefork: RFC 6455 sections 1-7 and 10, none FAILED.

Section 9 (limits and performance, minutes) and 12-13 (permessage-deflate,
minutes) run in the full suite: ``python tests/autobahn/run.py``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.autobahn.run import installed, run_fuzzingclient, start_server, stop_server, summarise

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.autobahn,
    pytest.mark.skipif(
        not installed(),
        reason="autobahntestsuite is not installed (.ci/run installs it where Python 2.7 exists)",
    ),
]

CASES = ["1.*", "2.*", "3.*", "4.*", "5.*", "6.*", "7.*", "10.*"]


@pytest.mark.parametrize(
    "target", ["tests.autobahn.echo_app:handle", "tests.autobahn.asgi_echo_app:app"]
)
def test_autobahn_sections_1_to_7_and_10_have_no_failure(tmp_path: Path, target: str) -> None:
    proc, port = start_server(target, [], tmp_path / "prefork.log")
    try:
        results = run_fuzzingclient(port, CASES, tmp_path, timeout=300)
    finally:
        stop_server(proc)
    counts, failed = summarise(results)
    assert len(results) > 240, counts  # the sections really ran
    assert failed == [], f"FAILED: {failed} (report in {tmp_path}/report)"
