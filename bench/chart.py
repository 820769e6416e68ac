"""The PNG chart of one run: req/s per scenario relative to the best Python peer.

Run by run.py with the peers' venv (it holds matplotlib):
``bench/.venv/bin/python bench/chart.py results.json results.png``.
Left: one group of bars per throughput scenario (the varied-heads V1 first,
the headline), each bar a server's req/s
divided by the fastest Python peer's in that scenario (1.0 = parity). Right:
S6, KiB per idle keep-alive connection (lower is better).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

LABELS = {
    "prefork": "prefork",
    "prefork-pure": "prefork (pure Python)",
    "prefork-h11": "prefork (h11)",
    "prefork-access": "prefork (access log)",
    "prefork-metrics": "prefork (metrics on)",
    "prefork-nocache": "prefork (gzip cache off)",
    "ceiling": "design ceiling",
    "uvicorn": "uvicorn (httptools)",
    "uvicorn-h11": "uvicorn (h11)",
    "granian": "granian (ASGI)",
    "granian-wsgi": "granian (WSGI)",
    "gunicorn": "gunicorn + uvicorn",
    "gunicorn-gthread": "gunicorn gthread",
    "nginx": "nginx",
}
COLORS = {
    "prefork": "#d62728",
    "prefork-pure": "#ff7f0e",
    "prefork-h11": "#ff9896",
    "prefork-access": "#e377c2",
    "prefork-metrics": "#f7b6d2",
    "prefork-nocache": "#8c564b",
    "ceiling": "#7f7f7f",
    "uvicorn": "#1f77b4",
    "uvicorn-h11": "#aec7e8",
    "granian": "#2ca02c",
    "granian-wsgi": "#98df8a",
    "gunicorn": "#9467bd",
    "gunicorn-gthread": "#c5b0d5",
    "nginx": "#bcbd22",
}
PYTHON_PEERS = ("uvicorn", "uvicorn-h11", "granian", "granian-wsgi", "gunicorn", "gunicorn-gthread")
CAP = 4.0


def _ok(row: dict) -> bool:
    return not row.get("error")


def draw(results: dict, out: Path) -> None:
    wrk = {s: v for s, v in results["scenarios"].items() if v["kind"] == "wrk"}
    mem = results["scenarios"].get("S6")
    fig, axes = plt.subplots(
        1,
        2 if mem else 1,
        # One group of bars per scenario: wide enough for the ~18 of a full run.
        figsize=(max(12, 1.1 * len(wrk)) + (3 if mem else 0), 6.5),
        squeeze=False,
        gridspec_kw={"width_ratios": [4, 1]} if mem else None,
    )
    ax = axes[0][0]
    names = [n for n in LABELS if any(n in v["rows"] for v in wrk.values())]
    width = 0.8 / max(len(names), 1)
    for i, name in enumerate(names):
        xs, ys = [], []
        for x, (_sid, scenario) in enumerate(wrk.items()):
            rows = scenario["rows"]
            peers = [rows[p]["rps"] for p in PYTHON_PEERS if p in rows and _ok(rows[p])]
            base = (
                max(peers) if peers else max((r["rps"] for r in rows.values() if _ok(r)), default=0)
            )
            row = rows.get(name)
            if row and _ok(row) and base:
                xs.append(x - 0.4 + width * (i + 0.5))
                ys.append(row["rps"] / base)
        # A bar far above the rest (a cache hit on every request) is cut at CAP and labelled.
        shown = [min(y, CAP) for y in ys]
        bars = ax.bar(xs, shown, width, label=LABELS[name], color=COLORS[name])
        labels = [
            f"{y:.0f} (cut)" if y > CAP else f"{y:.2f}" if name == "prefork" else "" for y in ys
        ]
        ax.bar_label(bars, labels=labels, fontsize=8, padding=2)
    ax.axhline(1.0, color="black", linewidth=0.8, linestyle="--")
    ax.set_ylim(0, CAP * 1.08)
    ax.set_xticks(range(len(wrk)), [f"{s}\n{v['short']}" for s, v in wrk.items()], fontsize=8)
    ax.set_ylabel("req/s relative to the best Python peer (1.0)")
    ax.set_title(f"prefork benchmark, {results['meta']['date']}")
    ax.legend(fontsize=8, ncols=5, loc="upper center", bbox_to_anchor=(0.5, -0.12))
    ax.grid(axis="y", alpha=0.3)
    if mem:
        ax2 = axes[0][1]
        rows = [(n, r) for n, r in mem["rows"].items() if _ok(r)]
        bars = ax2.bar(
            [LABELS[n] for n, _ in rows],
            [r["per_conn"] for _, r in rows],
            color=[COLORS[n] for n, _ in rows],
        )
        ax2.bar_label(bars, fmt="%.1f", fontsize=8, padding=2)
        ax2.axhline(4.0, color="black", linewidth=0.8, linestyle="--")
        ax2.set_title("S6: KiB per idle connection", fontsize=10)
        ax2.tick_params(axis="x", labelrotation=60, labelsize=8)
        ax2.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=110)


if __name__ == "__main__":
    draw(json.loads(Path(sys.argv[1]).read_text()), Path(sys.argv[2]))
