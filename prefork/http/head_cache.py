"""A worker's memory of the requests it built for request heads it has seen twice.

Parsing and checking a head is a pure function of its bytes (and of the
worker's fixed limits and parser), and clients repeat byte-identical heads
(load balancer probes, API clients, keep-alive loops): a worker remembers the
requests it built for up to ``MAX_ENTRIES`` distinct heads and hands out
copies. Full, it starts over, so varied traffic cannot pin stale entries;
heads longer than ``MAX_HEAD_BYTES`` are not kept (at most 2 MiB in all). A
head seen once is only noted (None); its request is kept when it comes
again: where every head differs no request is copied for nothing.

Where every head differs (behind a load balancer: request ids, trace
context, cookies) even the noting costs: hashing each head, a dict that
churns, and 512 dead heads kept from being freed. So after ``MISS_RUN``
heads in a row that were all new, only one head in ``SAMPLE_EVERY`` is
looked up and noted until one of them repeats: then the cache is back in
full use, at most ``2 * SAMPLE_EVERY`` heads after the repeating begins.
The cache flatters traffic that repeats heads (wrk's one request); the
sampling keeps it from taxing traffic that does not.

No asyncio, socket or ssl here.
"""

from __future__ import annotations

from typing import Final

from prefork.http.request import Request

MAX_ENTRIES: Final = 512
MAX_HEAD_BYTES: Final = 4096
# New heads in a row (four times what the cache holds) before it samples.
MISS_RUN: Final = 4 * MAX_ENTRIES
# While sampling, one head in this many is looked up and noted.
SAMPLE_EVERY: Final = 32


class HeadCache:
    """Requests by the bytes of their head (one per worker, shared by its readers)."""

    __slots__ = ("_misses", "_noting", "_skip", "entries")

    def __init__(self) -> None:
        self.entries: dict[bytes, Request | None] = {}
        self._misses = 0  # heads in a row that were new
        self._skip = 0  # heads to pass by, while sampling
        self._noting = True  # the last lookup was made: ``remember`` its head

    def lookup(self, head: bytes) -> Request | None:
        """A copy of the request built for ``head`` before, or None (then
        ``remember`` the one built now)."""
        if self._skip:
            self._skip -= 1
            self._noting = False
            return None
        self._noting = True
        template = self.entries.get(head)
        if template is None:
            return None
        self._misses = 0
        return template.clone()

    def remember(self, head: bytes, req: Request) -> None:
        """After a ``lookup`` of ``head`` found nothing: note a head seen for the
        first time, keep its request when it comes again."""
        if not self._noting or len(head) > MAX_HEAD_BYTES:
            return
        entries = self.entries
        if head in entries:
            entries[head] = req.clone()
            self._misses = 0
            return
        if len(entries) >= MAX_ENTRIES:
            entries.clear()
        entries[head] = None
        self._misses += 1
        if self._misses >= MISS_RUN:
            self._skip = SAMPLE_EVERY - 1
