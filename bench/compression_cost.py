"""Compression cost: milliseconds of CPU per MiB for gzip and deflate at levels 1-9.

Compresses a realistic JSON API response (~100 KiB) and a 1 MiB one with
prefork.http.compression.compress_body and prints a markdown table, the ratio at each
level, and the body size that takes about 1 ms at the default level: the basis of
SLICE_BYTES (how much of a big body is compressed per event-loop turn).

    python bench/compression_cost.py [--repeat 5]
"""

from __future__ import annotations

import argparse
import json
import random
import time
import uuid
from typing import Any

from prefork.http.compression import SLICE_BYTES, compress_body

MIB = 1024 * 1024
DEFAULT_LEVEL = 6
TARGET_MS = 1.0

_WORDS = (
    "order",
    "shipped",
    "pending",
    "refund",
    "customer",
    "invoice",
    "account",
    "premium",
    "basic",
    "annual",
    "monthly",
    "warehouse",
    "north",
    "south",
    "east",
    "west",
    "express",
    "standard",
    "returned",
    "delivered",
    "cancelled",
    "note",
    "priority",
    "gift",
    "wrap",
    "coupon",
    "discount",
    "tax",
    "total",
    "subtotal",
    "currency",
    "address",
    "street",
    "city",
)
_CITIES = ("Lyon", "Porto", "Leeds", "Graz", "Turku", "Gdansk", "Bilbao", "Utrecht", "Brno")


def _record(rng: random.Random, n: int) -> dict[str, Any]:
    return {
        "id": n,
        "uuid": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
        "created_at": f"2024-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}T"
        f"{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:{rng.randint(0, 59):02d}Z",
        "status": rng.choice(("pending", "shipped", "delivered", "returned")),
        "customer": {
            "name": f"{rng.choice(_WORDS).title()} {rng.choice(_WORDS).title()}",
            "email": f"user{rng.randint(1, 99999)}@example.com",
            "city": rng.choice(_CITIES),
        },
        "items": [
            {
                "sku": f"SKU-{rng.randint(10000, 99999)}",
                "qty": rng.randint(1, 5),
                "price": round(rng.uniform(1, 500), 2),
            }
            for _ in range(rng.randint(1, 4))
        ],
        "total": round(rng.uniform(5, 2000), 2),
        "note": " ".join(rng.choice(_WORDS) for _ in range(rng.randint(3, 12))),
        "flags": {"gift": rng.random() < 0.1, "express": rng.random() < 0.3},
    }


def make_json(size: int, seed: int = 1) -> bytes:
    """A JSON document of about ``size`` bytes: a page of order records."""
    rng = random.Random(seed)
    records: list[dict[str, Any]] = []
    body = b""
    while len(body) < size:
        records.extend(_record(rng, len(records) + i) for i in range(32))
        body = json.dumps({"page": 1, "results": records}, separators=(",", ":")).encode()
    return body


def ms_per_mib(coding: str, level: int, data: bytes, repeat: int) -> float:
    """Best-of-``repeat`` wall time of one compress_body call, scaled to 1 MiB."""
    rounds = max(1, MIB // len(data))
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        for _ in range(rounds):
            compress_body(coding, level, data)
        best = min(best, (time.perf_counter() - start) / rounds)
    return best * 1000 * MIB / len(data)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()

    docs = {"100 KiB": make_json(100 * 1024), "1 MiB": make_json(MIB)}
    cols = [(coding, name) for name in docs for coding in ("gzip", "deflate")]
    costs: dict[tuple[str, str, int], float] = {}
    print(f"ms per MiB (best of {args.repeat}); ratio = compressed / original\n")
    header = " | ".join(f"{c} {n}" for c, n in cols)
    print(f"| level | {header} | ratio 100 KiB |")
    print("|---" * (len(cols) + 2) + "|")
    for level in range(1, 10):
        cells = []
        for coding, name in cols:
            cost = ms_per_mib(coding, level, docs[name], args.repeat)
            costs[coding, name, level] = cost
            cells.append(f"{cost:.2f}")
        small = docs["100 KiB"]
        ratio = len(compress_body("gzip", level, small)) / len(small)
        print(f"| {level} | {' | '.join(cells)} | {ratio:.3f} |")

    cost6 = costs["gzip", "100 KiB", DEFAULT_LEVEL]
    one_ms = int(MIB * TARGET_MS / cost6)
    print(
        f"\nAt level {DEFAULT_LEVEL}, gzip takes {TARGET_MS:g} ms for about {one_ms // 1024} KiB "
        f"({one_ms} bytes); SLICE_BYTES is {SLICE_BYTES} "
        f"(~{SLICE_BYTES * cost6 / MIB:.2f} ms at level {DEFAULT_LEVEL})."
    )


if __name__ == "__main__":
    main()
