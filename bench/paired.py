"""Two servers' req/s ratio from interleaved rounds: paired, with a 95 % interval.

run.py measures the servers of a scenario in rounds: each round runs every
server once, one after the other, so round ``i`` of one server and round
``i`` of another ran seconds apart, in the same phase of the host. This
host's speed moves a lot, and in phases (a FastAPI hello: one server's
rounds 7.1k to 12.9k req/s in one run); a round pair shares its phase, so
the ratio within a pair holds far steadier than either server's req/s.

The ratio reported is therefore the median of the per-round ratios, with a
bootstrap 95 % interval for that median. On one 40-round FastAPI run the
paired interval was 1.16x-1.29x, where the ratio of the two medians had
1.06x-1.45x: the same data, a third of the width. The interval is drawn
with a fixed seed, so a report re-rendered from saved results is the same.
"""

from __future__ import annotations

import random
import statistics
from dataclasses import dataclass

RESAMPLES = 2000
LEVEL = 0.95


@dataclass(frozen=True)
class Paired:
    """The median of the per-round ratios ``a / b``, its interval and the rounds."""

    ratio: float
    low: float
    high: float
    rounds: int


def round_ratios(a: list[float], b: list[float]) -> list[float] | None:
    """``a[i] / b[i]`` for each round; None unless both have the same rounds, all > 0."""
    if len(a) != len(b) or not a or min(b) <= 0:
        return None
    return [x / y for x, y in zip(a, b, strict=True)]


def median_interval(values: list[float], seed: int = 0) -> tuple[float, float]:
    """A percentile-bootstrap ``LEVEL`` interval for the median of ``values``."""
    rng = random.Random(seed)
    n = len(values)
    medians = sorted(statistics.median(rng.choices(values, k=n)) for _ in range(RESAMPLES))
    tail = (1.0 - LEVEL) / 2.0
    return medians[int(tail * RESAMPLES)], medians[int((1.0 - tail) * RESAMPLES) - 1]


def paired(a: list[float], b: list[float]) -> Paired | None:
    """The paired ratio of two servers' rounds (req/s), or None if they do not pair."""
    ratios = round_ratios(a, b)
    if ratios is None:
        return None
    low, high = median_interval(ratios)
    return Paired(statistics.median(ratios), low, high, len(ratios))
