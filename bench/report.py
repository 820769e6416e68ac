"""RESULTS.md: the tables of one run and the goals of the issue, each marked PASS or MISS.

Everything here reads the plain ``results`` dict that run.py also saves as
JSON, so a report can be re-rendered from a saved run
(``python bench/report.py bench/out/results.json``).
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable
from pathlib import Path

from paired import Paired, paired
from servers import APP_INTERFACE, PYTHON_PEERS, SERVERS, interface_row

PASS, MISS, NA = "PASS", "MISS", "n/a"


def _row(results: dict, sid: str, name: str) -> dict | None:
    row = results["scenarios"].get(sid, {}).get("rows", {}).get(name)
    if not row or row.get("error"):
        return None
    return row


def rps(results: dict, sid: str, name: str) -> float | None:
    row = _row(results, sid, name)
    return row["rps"] if row else None


def best_peer(results: dict, sid: str) -> tuple[str, float] | None:
    """The Python peer with the most req/s in scenario ``sid``."""
    found = [(n, r) for n in PYTHON_PEERS if (r := rps(results, sid, n)) is not None]
    return max(found, key=lambda x: x[1]) if found else None


def _fmt_int(x: float) -> str:
    return f"{x:,.0f}"


def _fmt_ms(x: float) -> str:
    if x is None or math.isnan(x):
        return "-"
    return f"{x:.2f} ms" if x < 100 else f"{x:.0f} ms"


def label(results: dict, sid: str, name: str) -> str:
    """A row's label: prefork on an app interface says which ("prefork (ASGI)")."""
    app = results["scenarios"].get(sid, {}).get("app", "bench")
    if interface_row(name, app):
        return f"{SERVERS[name][0]} ({APP_INTERFACE[app].upper()})"
    return SERVERS[name][0]


def _not_measured(results: dict, sid: str, names: tuple[str, ...]) -> str:
    """Why a goal has no figure: a row not available yet (an interface), else not measured."""
    for name in names:
        row = results["scenarios"].get(sid, {}).get("rows", {}).get(name)
        if row and row.get("unavailable"):
            return f"{label(results, sid, name)} not available"
    return "not measured"


def _ratio_goal(
    results: dict, sid: str, num: str, den: str | None, minimum: float, text: str
) -> tuple[str, str, str]:
    """``num``'s req/s over ``den``'s (None: the best Python peer) >= ``minimum``.

    Judged on the paired ratio (paired.py) when the servers ran in rounds
    together, else on the ratio of their medians.
    """
    a = rps(results, sid, num)
    if den is None:
        best = best_peer(results, sid)
        den, b = best if best else (None, None)
        den_label = SERVERS[den][0] if den else "best Python peer"
    else:
        den_label, b = SERVERS[den][0], rps(results, sid, den)
    if a is None or not b or den is None:
        return text, _not_measured(results, sid, (num,) if den is None else (num, den)), NA
    medians = f"{_fmt_int(a)} vs {den_label} {_fmt_int(b)} req/s"
    pair = _paired(results, sid, num, den)
    if pair is None:
        ratio = a / b
        return text, f"{ratio:.2f}x ({medians})", PASS if ratio >= minimum else MISS
    measured = (
        f"{pair.ratio:.2f}x paired (95 % interval {pair.low:.2f}-{pair.high:.2f}, "
        f"{pair.rounds} rounds; medians {medians})"
    )
    return text, measured, PASS if pair.ratio >= minimum else MISS


def _paired(results: dict, sid: str, num: str, den: str) -> Paired | None:
    """The median of the per-round ratios when ``sid``'s servers ran in rounds together."""
    if not results["meta"]["settings"].get("interleaved"):
        return None
    a, b = _row(results, sid, num), _row(results, sid, den)
    if not a or not b or "runs" not in a or "runs" not in b:
        return None
    return paired([r["rps"] for r in a["runs"]], [r["rps"] for r in b["runs"]])


def _p99_goal(
    results: dict, sid: str, text: str, num: str = "prefork", den: str = "granian"
) -> tuple[str, str, str]:
    a, b = _row(results, sid, num), _row(results, sid, den)
    if not a or not b:
        return text, _not_measured(results, sid, (num, den)), NA
    measured = f"{_fmt_ms(a['p99_ms'])} vs {SERVERS[den][0]} {_fmt_ms(b['p99_ms'])}"
    return text, measured, PASS if a["p99_ms"] <= b["p99_ms"] else MISS


def _scale_goal(results: dict, sid: str, base: str, text: str) -> tuple[str, str, str]:
    """prefork's req/s in ``sid`` (1,000 connections) within 15 % of ``base`` (64), no errors."""
    s1, s9 = rps(results, base, "prefork"), _row(results, sid, "prefork")
    if not s1 or not s9:
        return text, "not measured", NA
    ratio = s9["rps"] / s1
    measured = f"{ratio:.2f}x {base}, {s9['socket_errors']} socket errors"
    return text, measured, PASS if ratio >= 0.85 and s9["socket_errors"] == 0 else MISS


def _memory_goal(results: dict, sid: str, kib: float, text: str) -> tuple[str, str, str]:
    """prefork's growth per idle keep-alive connection in ``sid`` <= ``kib``."""
    row = results["scenarios"].get(sid, {}).get("rows", {}).get("prefork")
    if not row or row.get("error"):
        return text, _not_measured(results, sid, ("prefork",)), NA
    return text, f"{row['per_conn']:.2f} KiB", PASS if row["per_conn"] <= kib else MISS


def goals_identical(results: dict) -> list[tuple[str, str, str]]:
    """The goals of the identical-head scenarios (S), as before the varied heads."""
    out = [
        _ratio_goal(results, "S1", "prefork", "granian", 1.5, "S1 >= 1.5x granian"),
        _ratio_goal(results, "S1", "prefork", "ceiling", 0.65, "S1 >= 0.65x the design ceiling"),
        _p99_goal(results, "S1", "S1 p99 <= granian's"),
        _ratio_goal(results, "S1", "prefork-h11", "uvicorn-h11", 1.0, "S1 h11 >= 1.0x uvicorn-h11"),
        _ratio_goal(results, "S2", "prefork", None, 1.2, "S2 >= 1.2x the best Python peer"),
        _ratio_goal(results, "S3", "prefork", "granian", 0.95, "S3 >= 0.95x granian"),
        _ratio_goal(results, "S4", "prefork", None, 1.0, "S4 >= 1.0x the best Python peer"),
        _ratio_goal(results, "S5", "prefork", "granian", 1.0, "S5 >= 1.0x granian"),
    ]
    mem = results["scenarios"].get("S6", {}).get("rows", {})
    pm, um = mem.get("prefork"), mem.get("uvicorn")
    out.append(_memory_goal(results, "S6", 4.0, "S6 <= 4 KiB per idle connection"))
    text = "S6 rest RSS per worker <= uvicorn's"
    if pm and um and not pm.get("error") and not um.get("error"):
        measured = f"{pm['worker_rss'] / 1024:.1f} MiB vs {um['worker_rss'] / 1024:.1f} MiB"
        out.append((text, measured, PASS if pm["worker_rss"] <= um["worker_rss"] else MISS))
    else:
        out.append((text, "not measured", NA))
    out.append(_ratio_goal(results, "S8", "prefork", "nginx", 1.0, "S8 >= 1.0x nginx"))
    text = "S8 >= 1.0x nginx, prefork's compressed-body cache off (deflate on every response)"
    out.append(_ratio_goal(results, "S8", "prefork-nocache", "nginx", 1.0, text))
    out.append(_p99_goal(results, "S8", "S8 p99 <= granian's"))
    out.append(_scale_goal(results, "S9", "S1", "S9 req/s within 15 % of S1, no socket errors"))
    s1, acc = rps(results, "S1", "prefork"), rps(results, "S1", "prefork-access")
    text = "access log on costs <= 20 % of S1"
    if s1 and acc:
        cost = 1 - acc / s1
        out.append((text, f"costs {100 * cost:.0f} %", PASS if cost <= 0.20 else MISS))
    else:
        out.append((text, "not measured", NA))
    return out


def goals_varied(results: dict) -> list[tuple[str, str, str]]:
    """Issue 14: real traffic, every request head different (V)."""
    r = results
    return [
        _ratio_goal(r, "V1", "prefork", "granian", 1.5, "V1 >= 1.5x granian (ASGI)"),
        _ratio_goal(r, "V1", "prefork", "granian-wsgi", 1.2, "V1 >= 1.2x granian (WSGI)"),
        _ratio_goal(r, "V1", "prefork", "ceiling", 0.6, "V1 >= 0.6x the design ceiling"),
        _p99_goal(r, "V1", "V1 p99 <= granian (ASGI)'s"),
        _ratio_goal(r, "V1", "prefork-h11", "uvicorn-h11", 1.5, "V1 h11 >= 1.5x uvicorn-h11"),
        _ratio_goal(r, "V2", "prefork", None, 1.3, "V2 (2 workers) >= 1.3x the best Python peer"),
        _scale_goal(r, "V9", "V1", "V9 (1,000 connections) within 15 % of V1, no socket errors"),
    ]


def goals_asgi(results: dict) -> list[tuple[str, str, str]]:
    """Issue 16: prefork's ASGI interface (A: the plain ASGI app, FA: FastAPI)."""
    r = results
    return [
        _ratio_goal(r, "A1", "prefork", "granian", 1.5, "A1 ASGI >= 1.5x granian"),
        _ratio_goal(r, "A1", "prefork", "uvicorn", 2.0, "A1 ASGI >= 2x uvicorn"),
        _ratio_goal(r, "AV", "prefork", "granian", 1.5, "AV ASGI varied >= 1.5x granian"),
        _ratio_goal(r, "AV", "prefork", "uvicorn", 2.0, "AV ASGI varied >= 2x uvicorn"),
        _ratio_goal(r, "FAV", "prefork", "granian", 1.15, "FAV FastAPI varied >= 1.15x granian"),
        _memory_goal(r, "AM", 4.0, "AM ASGI <= 4 KiB per idle keep-alive connection"),
    ]


def goals_wsgi(results: dict) -> list[tuple[str, str, str]]:
    """Issue 18: prefork's WSGI interface (W: the plain WSGI app, FL: Flask)."""
    r = results
    g, t = "granian-wsgi", "gunicorn-gthread"
    return [
        _ratio_goal(r, "W1", "prefork", g, 1.0, "W1 WSGI >= 1.0x granian (WSGI)"),
        _ratio_goal(r, "W1", "prefork", t, 5.0, "W1 WSGI >= 5x gunicorn gthread"),
        _ratio_goal(r, "WV", "prefork", g, 1.0, "WV WSGI varied >= 1.0x granian (WSGI)"),
        _ratio_goal(r, "WV", "prefork", t, 5.0, "WV WSGI varied >= 5x gunicorn gthread"),
        _ratio_goal(r, "FLV", "prefork", g, 1.1, "FLV Flask varied >= 1.1x granian (WSGI)"),
    ]


GOAL_GROUPS: tuple[tuple[str, Callable[[dict], list[tuple[str, str, str]]]], ...] = (
    ("Every request head different (issue 14)", goals_varied),
    ("Identical heads and the other scenarios", goals_identical),
    ("ASGI apps (issue 16)", goals_asgi),
    ("WSGI apps (issue 18)", goals_wsgi),
)


def goals(results: dict) -> list[tuple[str, str, str]]:
    """(goal, measured, PASS/MISS/n/a) for every goal, all groups in order."""
    return [g for _, group in GOAL_GROUPS for g in group(results)]


def _wrk_table(results: dict, sid: str) -> list[str]:
    scenario = results["scenarios"][sid]
    best = best_peer(results, sid)
    lines = [
        "| server | req/s (median) | min-max | p50 | p99 | socket errors | non-2xx "
        "| server CPU | wrk CPU | other CPU | vs best peer |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for name, row in scenario["rows"].items():
        name_label = label(results, sid, name)
        if row.get("error"):
            what = "not available" if row.get("unavailable") else "failed"
            lines.append(f"| {name_label} | {what}: {_one_line(row['error'])} ||||||||||")
            continue
        ratio = f"{row['rps'] / best[1]:.2f}x" if best else "-"
        cpu = f"{row['server_cpu']:.0f} %"
        wrk_cpu = f"{row['wrk_cpu']:.0f} %"
        if row["wrk_cpu"] >= 90 and row["server_cpu"] < 90 * scenario["workers"]:
            wrk_cpu += " (wrk-bound)"
        other = f"{row['other_cpu']:.0f} %"
        if row["noisy_runs"]:
            other += f" ({row['noisy_runs']} noisy)"
        lines.append(
            f"| {name_label} | {_fmt_int(row['rps'])} | {_fmt_int(row['rps_min'])}-"
            f"{_fmt_int(row['rps_max'])} | {_fmt_ms(row['p50_ms'])} | {_fmt_ms(row['p99_ms'])} "
            f"| {row['socket_errors']} | {row['non_2xx']} | {cpu} | {wrk_cpu} | {other} | {ratio} |"
        )
    return lines


def _memory_table(results: dict, sid: str) -> list[str]:
    scenario = results["scenarios"][sid]
    lines = [
        "| server | workers | tree RSS at rest | tree PSS at rest | RSS per worker "
        "| KiB per idle connection | connections held |",
        "|---|--:|--:|--:|--:|--:|--:|",
    ]
    for name, row in scenario["rows"].items():
        name_label = label(results, sid, name)
        if row.get("error"):
            lines.append(f"| {name_label} | failed: {_one_line(row['error'])} ||||||")
            continue
        lines.append(
            f"| {name_label} | {row['workers']} | {row['tree_rss'] / 1024:.1f} MiB "
            f"| {row['tree_pss'] / 1024:.1f} MiB | {row['worker_rss'] / 1024:.1f} MiB "
            f"| {row['per_conn']:.2f} | {row['held']} |"
        )
    return lines


def _one_line(text: str) -> str:
    first = text.strip().splitlines()[0] if text.strip() else "error"
    return first.replace("|", "/")[:160]


INTERLEAVED = """The servers of a scenario start together and
are measured in rounds: each round runs every server once, the order turning
by one server each round, so that the machine's drift in speed over minutes
(seen here: 15 %) falls on every server alike; only the loaded server uses
the CPU. A goal that is a ratio of two servers is judged on the median of the
per-round ratios, shown with a bootstrap 95 % interval: the two runs of a
round share the host's phase, so that ratio holds steadier than either
server's req/s (bench/paired.py); the medians of each server are shown
beside it."""
SEQUENTIAL = "The servers of a scenario run one after another (--sequential)."
METHOD = """\
Method: every scenario starts a fresh server, checks one answer, runs an
unmeasured warm-up of {warmup} s, then {runs} runs of `wrk -t1 -c64 -d{duration}s
--latency` (V9 and S9: `-c1000`). {order} Scenarios run in the order V1, V9, S1, S9,
V2, S2, S3, S4, S5, S6, S8, then the app scenarios (V9's goal is a ratio to
V1 and S9's to S1, so each pair is measured close together in time). The
server's whole process tree runs under `taskset -c 0` and wrk under
`taskset -c 1`, except V2 and S2 where the server (2 workers) is not pinned.
Reported: the median req/s of the runs and their min-max; the median p50 and
p99; socket errors and non-2xx summed over the runs; the server tree's and
wrk's CPU in % of one core (a run where wrk is near 100 % and the server is
not is limited by wrk and marked so), and the CPU that every other process
on the machine used meanwhile ("other CPU": the machine may be shared; each
run first waits up to {wait_quiet:.0f} s for other processes to use at most
{max_other:.0f} % of a core, a run where they used more is redone, at most
{retries} times, keeping the quietest, and one still above is marked
"noisy"). Access logging is off for every server except the "access log on"
row. "vs best peer" is the ratio to the fastest Python peer (uvicorn,
granian ASGI and WSGI, gunicorn with the uvicorn worker and gthread) in the
same scenario and run.

Request heads. In the V scenarios (and AV, WV, FAV, FLV) every request head
is different, as behind a load balancer: wrk replays 20,000 distinct
~600-byte heads (`bench/heads.py`: `GET /hello` with two query arguments,
User-Agent, Accept, Accept-Language, a session cookie, X-Request-Id,
traceparent, X-Forwarded-For and X-Forwarded-Proto; ids, cookies, trace
context and addresses differ in every head, the browser lines repeat from
small sets) in turn from a Lua `request()`. In the S scenarios wrk repeats
one byte-identical request: a server that caches work per identical request
(prefork keeps per-worker caches of parsed request heads and of compressed
bodies) hits that cache on every request, which real traffic would not do,
so S1 measures those caches rather than the request path.

App scenarios. A (the plain ASGI app), W (the plain WSGI app), FA (a FastAPI
hello) and FL (a Flask hello) run the same app on prefork's ASGI or WSGI
interface (`--interface asgi|wsgi`, rows "prefork (ASGI)" and "prefork
(WSGI)") and on the peers that serve that interface; "1" is identical heads,
"V" varied heads, 1 worker; AM and WM measure memory as S6 does, with the
plain ASGI and WSGI apps. A prefork row that is "not available" is an
interface that did not start or answered wrongly in this build.

S6 memory: one worker at rest (after 100 warm-up requests and 1 s), as the
sum over the server's process tree of RSS (shared pages counted in every
process), PSS (shared pages divided among the processes that share them),
and the mean RSS of the serving processes (the workers, or the single
process). Then 1,000 keep-alive connections each send one `GET /hello`,
read the answer and stay open, idle; "KiB per idle connection" is the growth
of the tree's USS (private memory) divided by 1,000. Kernel socket buffers
are not process memory and are not counted for any server.

Settings: prefork runs `bench/apps/prefork.toml` (connection_limit 2048,
backlog 4096, so that 1,000 connections are admitted; otherwise defaults;
the "metrics on" row adds `metrics_bind`); uvicorn and gunicorn keep idle
connections 60 s; gunicorn's gthread worker runs 4 threads; granian runs
with its defaults (`--http 1`, uvloop for ASGI); nginx has
`worker_connections 4096`, `gzip_comp_level 6`, TLS 1.2/1.3. The ASGI and
WSGI apps gzip `/big` at level 6 on every request, as prefork and nginx do.
"""

GOALS_NOTE = (
    "Each goal is a ratio of two rows of this run. n/a: a row it needs was not "
    "measured in this run, or is not available in this build."
)

SCENARIO_NOTES = {
    "V1": "The headline: real traffic, where no two request heads are alike. prefork's "
    "per-worker cache of parsed heads never hits here; the design ceiling still parses every "
    "head with llhttp but reads no header, and nginx answers `return 200`.",
    "S1": "Identical heads: every request is the same bytes, so this measures caches (prefork's "
    "parsed-head cache hits on every request). See V1 for real traffic.",
    "V2": "nginx and the peers also run 2 workers; the ceiling is single-process and not run.",
    "S2": "nginx and the peers also run 2 workers; the ceiling is single-process and not run.",
    "S8": "wrk runs with `--timeout 10s` here: at ~2.5 ms of gzip per response, 64 connections "
    "queue for longer than wrk's default 2 s, which would drop the slowest answers from p99. "
    "prefork keeps a per-worker cache of compressed bodies, so with one document it deflates "
    "once; nginx and the ASGI app deflate on every request. The row with the cache off "
    "(`compression.cache_bytes = 0`) deflates every response at the same level 6 as they do, "
    "with zlib-ng (nginx and the ASGI app use zlib; for this document zlib-ng's output is "
    "0.5 % bigger).",
    "S4": "nginx is not run: `return 200` would discard the body, which is not the same work.",
}


def render(results: dict, chart: str | None = None) -> str:
    meta = results["meta"]
    settings = meta["settings"]
    out = [f"# prefork benchmark, {meta['date']}", ""]
    if settings.get("quick"):
        out += ["Quick mode (a smoke test of the harness, not a measurement).", ""]
    out += [
        f"Machine: {meta['machine']}.",
        "",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in meta["versions"].items()) + ".",
        "",
        METHOD.format(
            **{"max_other": 100, "retries": 0, "wait_quiet": 0, **settings},
            order=INTERLEAVED if settings.get("interleaved") else SEQUENTIAL,
        ),
    ]
    if settings.get("note"):
        out += [settings["note"], ""]
    if chart:
        out += [f"![req/s relative to the best Python peer]({chart})", ""]
    for sid, scenario in results["scenarios"].items():
        out += [f"## {sid}: {scenario['title']}", ""]
        if sid in SCENARIO_NOTES:
            out += [SCENARIO_NOTES[sid], ""]
        table: Callable[[dict, str], list[str]]
        table = _memory_table if scenario["kind"] == "memory" else _wrk_table
        out += [*table(results, sid), ""]
    out += ["## Goals (this run)", "", GOALS_NOTE, ""]
    for title, group in GOAL_GROUPS:
        out += [f"### {title}", "", "| goal | measured | result |", "|---|---|---|"]
        out += [f"| {g} | {m} | {r} |" for g, m, r in group(results)]
        out += [""]
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    data = json.loads(Path(sys.argv[1]).read_text())
    sys.stdout.write(render(data))
