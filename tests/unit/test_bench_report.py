"""bench/report.py: the goals of issues 14, 16 and 18 are marked from the ratios of one run."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import paired
import report


def _row(rps: float, p99: float = 2.0) -> dict:
    return {
        "rps": rps,
        "rps_min": rps,
        "rps_max": rps,
        "p50_ms": 1.0,
        "p99_ms": p99,
        "socket_errors": 0,
        "non_2xx": 0,
        "server_cpu": 100.0,
        "wrk_cpu": 50.0,
        "other_cpu": 0.0,
        "noisy_runs": 0,
    }


def _scenario(rows: dict, app: str = "bench") -> dict:
    return {"title": "t", "short": "s", "kind": "wrk", "workers": 1, "app": app, "rows": rows}


def _results() -> dict:
    return {
        "meta": {
            "date": "d",
            "machine": "m",
            "versions": {},
            "settings": {"warmup": 2, "runs": 3, "duration": 10},
        },
        "scenarios": {
            "V1": _scenario(
                {
                    "prefork": _row(80_000, p99=2.0),
                    "prefork-h11": _row(20_000),
                    "ceiling": _row(125_000),
                    "uvicorn-h11": _row(12_000),
                    "granian": _row(50_000, p99=2.5),
                    "granian-wsgi": _row(70_000),
                }
            ),
            "V9": _scenario({"prefork": _row(60_000)}),
            "AV": _scenario(
                {
                    "prefork": {"error": "did not start: exited with 2", "unavailable": True},
                    "granian": _row(50_000),
                    "uvicorn": _row(40_000),
                },
                app="asgi",
            ),
            "WV": _scenario(
                {
                    "prefork": _row(70_000),
                    "granian-wsgi": _row(68_000),
                    "gunicorn-gthread": _row(10_000),
                },
                app="wsgi",
            ),
        },
    }


def test_goals_are_marked_from_ratios_within_the_run() -> None:
    marks = {goal: (measured, result) for goal, measured, result in report.goals(_results())}
    assert marks["V1 >= 1.5x granian (ASGI)"][1] == "PASS"  # 1.6x
    assert marks["V1 >= 1.2x granian (WSGI)"][1] == "MISS"  # 1.14x
    assert marks["V1 >= 0.6x the design ceiling"][1] == "PASS"  # 0.64x
    assert marks["V1 p99 <= granian (ASGI)'s"][1] == "PASS"
    assert marks["V1 h11 >= 1.5x uvicorn-h11"][1] == "PASS"  # 1.67x
    assert marks["V9 (1,000 connections) within 15 % of V1, no socket errors"][1] == "MISS"
    assert marks["V2 (2 workers) >= 1.3x the best Python peer"] == ("not measured", "n/a")
    assert marks["AV ASGI varied >= 1.5x granian"] == ("prefork (ASGI) not available", "n/a")
    assert marks["WV WSGI varied >= 1.0x granian (WSGI)"][1] == "PASS"
    assert marks["WV WSGI varied >= 5x gunicorn gthread"][1] == "PASS"  # 7x
    assert marks["FLV Flask varied >= 1.1x granian (WSGI)"][1] == "n/a"


def test_report_labels_interface_rows_and_groups_the_goals() -> None:
    text = report.render(_results())
    assert "| prefork (ASGI) | not available: did not start: exited with 2 |" in text
    assert "| prefork (WSGI) | 70,000 |" in text
    assert "| prefork | 80,000 |" in text
    for heading in ("issue 14", "issue 16", "issue 18"):
        assert any(line.startswith("### ") and heading in line for line in text.splitlines())


def _rounds(*rps: float) -> dict:
    """A row of an interleaved run: its rounds' req/s in order, their median as rps."""
    return {**_row(sorted(rps)[len(rps) // 2]), "runs": [{"rps": x} for x in rps]}


def test_a_ratio_goal_of_an_interleaved_run_is_judged_on_the_paired_rounds() -> None:
    results = _results()
    results["meta"]["settings"]["interleaved"] = True
    # The host slows down and speeds up: each server's own req/s swings by
    # 2x, yet within every round prefork has 1.2x granian's.
    granian = [5_000.0, 9_000.0, 6_000.0, 10_000.0, 5_500.0, 8_000.0, 7_000.0]
    prefork = [1.2 * x for x in granian]
    uvicorn = [4_000.0] * 7
    results["scenarios"]["FAV"] = _scenario(
        {"prefork": _rounds(*prefork), "granian": _rounds(*granian), "uvicorn": _rounds(*uvicorn)},
        app="asgi",
    )
    marks = {text: (measured, mark) for text, measured, mark in report.goals(results)}
    measured, mark = marks["FAV FastAPI varied >= 1.15x granian"]
    assert mark == report.PASS
    assert measured.startswith("1.20x paired (95 % interval 1.20-1.20, 7 rounds; medians ")
    # Shifted by one round, the same req/s no longer pair: prefork's fast
    # rounds meet granian's slow ones and the other way round.
    results["scenarios"]["FAV"]["rows"]["prefork"] = _rounds(*(prefork[1:] + prefork[:1]))
    measured, mark = {t: (m, k) for t, m, k in report.goals(results)}[
        "FAV FastAPI varied >= 1.15x granian"
    ]
    assert not measured.startswith("1.20x")
    # Without rounds (a --sequential run) the medians' ratio is the measure.
    results["meta"]["settings"]["interleaved"] = False
    measured, mark = {t: (m, k) for t, m, k in report.goals(results)}[
        "FAV FastAPI varied >= 1.15x granian"
    ]
    assert measured.startswith("1.20x (8,400 vs granian (ASGI) 7,000 req/s)")


def test_the_paired_interval_widens_with_the_rounds_spread() -> None:
    steady = paired.paired([120.0, 121.0, 119.0, 120.0, 120.5], [100.0] * 5)
    assert steady is not None
    assert steady.rounds == 5
    assert 1.19 <= steady.low <= steady.ratio <= steady.high <= 1.21
    loose = paired.paired([90.0, 150.0, 110.0, 130.0, 120.0], [100.0] * 5)
    assert loose is not None
    assert loose.high - loose.low > 0.2
    assert paired.paired([1.0, 2.0], [1.0]) is None
    assert paired.paired([1.0], [0.0]) is None
