"""wrk's own CPU per request, with the one fixed request and replaying the varied heads.

    python bench/wrk_cost.py            # 2 x (identical, varied), 5 s each, against the ceiling

The varied-heads scenarios make wrk call a Lua ``request()`` for every
request and write ~600-byte heads: this checks that wrk stays far from
saturating its core at the rates the servers reach. Per request: wrk's CPU
time (user + system) over the requests it completed.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import heads
import servers
from measure import Load, run_wrk


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="prefork-wrk-cost-") as name:
        tmp = Path(name)
        lua = heads.write(tmp)
        server = servers.start("ceiling", servers.Launch(), tmp / "ceiling")
        try:
            for _ in range(args.rounds):
                for label, load in (("identical", Load()), ("varied", Load(script=str(lua)))):
                    r = run_wrk(server, load, args.duration)
                    per = r.wrk_cpu / 100 / r.rps * 1e6
                    print(
                        f"{label:9} {r.rps:9,.0f} req/s  wrk CPU {r.wrk_cpu:3.0f} % = {per:.2f} us"
                        f" per request; server CPU {r.server_cpu:.0f} %, other CPU"
                        f" {r.other_cpu:.0f} %, non-2xx {r.non_2xx}",
                        flush=True,
                    )
        finally:
            servers.stop_all()
    return 0


if __name__ == "__main__":
    sys.exit(main())
