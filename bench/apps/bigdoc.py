"""The ~100 KiB JSON document that every server returns for ``GET /big``.

Built once at import, deterministically (a fixed linear congruential
generator, no ``random`` state), so that prefork, the ASGI peers and nginx's
static file serve the very same bytes. The records mix numbers, words and
free text, so gzip level 6 gets a realistic ratio (neither 1:1 nor 1:100).
"""

from __future__ import annotations

import json

TARGET_SIZE = 100 * 1024

_TEXT = (
    "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike "
    "november oscar papa quebec romeo sierra tango uniform victor whiskey xray yankee "
    "zulu amber basalt cobalt dune ember fjord garnet harbor iris jade kelp lumen "
    "meadow nectar onyx prism quartz raven saffron tundra umber vellum willow zephyr"
)
_WORDS = _TEXT.split()


def _numbers(seed: int):
    state = seed
    while True:
        state = (state * 6364136223846793005 + 1442695040888963407) % 2**64
        yield state >> 33


def build(target_size: int = TARGET_SIZE) -> bytes:
    """Return the document: a JSON object with an ``items`` list of records."""
    gen = _numbers(20240601)
    items = []
    size = 0
    while size < target_size:
        n = len(items)
        words = [_WORDS[next(gen) % len(_WORDS)] for _ in range(12)]
        item = {
            "id": n,
            "name": f"{words[0]}-{words[1]}-{n}",
            "price": (next(gen) % 100_000) / 100,
            "stock": next(gen) % 1000,
            "active": bool(next(gen) % 2),
            "tags": words[2:5],
            "description": " ".join(words[5:]),
            "sku": f"{next(gen):010x}",
        }
        items.append(item)
        size += len(json.dumps(item)) + 2
    return json.dumps({"count": len(items), "items": items}).encode()


BIG_JSON = build()
