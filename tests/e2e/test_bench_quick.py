"""bench/run.py in quick mode, so that the harness cannot rot: S1, prefork and the ceiling.

Long runs (``python bench/run.py``) never go into the test suite.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(
    shutil.which("wrk") is None, reason="wrk is not installed (apt-get install wrk)"
)
@pytest.mark.skipif(shutil.which("taskset") is None, reason="taskset is not installed (util-linux)")
def test_quick_mode_measures_prefork_and_the_ceiling(tmp_path: Path) -> None:
    raw = tmp_path / "quick.json"
    report = tmp_path / "quick.md"
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "bench" / "run.py"),
            "--quick",
            "--servers",
            "prefork,ceiling",
            "--json",
            str(raw),
            "--output",
            str(report),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(raw.read_text())["scenarios"]["S1"]["rows"]
    assert set(rows) == {"prefork", "ceiling"}
    for name, row in rows.items():
        assert not row.get("error"), f"{name}: {row.get('error')}"
        assert row["rps"] > 0, name
        assert row["socket_errors"] == 0, name
        assert row["non_2xx"] == 0, name
    text = report.read_text()
    assert "| prefork | " in text
    assert "| design ceiling | " in text
    assert "## Goals (this run)" in text
    assert "S1 >= 0.65x the design ceiling" in text
