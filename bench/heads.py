"""Varied request heads: thousands of distinct, realistic ~600-byte `GET /hello` heads.

Behind a load balancer no two request heads are the same (request ids, trace
context, session cookies, client addresses), so a server's per-head caches
never hit and its real per-request path decides. wrk repeats one
byte-identical request unless a Lua ``request()`` hands it others: this module
builds the heads and the script that replays them.

    python bench/heads.py 20000 heads.bin        # write the heads (one stream)
    wrk -s heads.lua ...                          # see lua_script()

Each head: a path with two query arguments, Host, User-Agent, Accept,
Accept-Language, a session Cookie, X-Request-Id, traceparent,
X-Forwarded-For and X-Forwarded-Proto; the ids, cookie, trace context,
query values and client address differ in every head, while the browser
lines repeat from small sets, as they do in real traffic. Deterministic (a
fixed linear congruential generator), so every server gets the same bytes.
The Host line holds ``@HOST@``, which the Lua script replaces with wrk's
host:port once, when a thread starts.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

HOST_MARK = b"@HOST@"
DEFAULT_COUNT = 20_000
HEAD_END = b"\r\n\r\n"

_USER_AGENTS = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/{v}.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/17.{m} Safari/605.1.15",
    "Mozilla/5.0 (X11; Linux x86_64; rv:{v}.0) Gecko/20100101 Firefox/{v}.0",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_{m} like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/17.{m} Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/{v}.0.0.0 Mobile Safari/537.36",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/{v}.0.0.0 Safari/537.36 Edg/{v}.0.0.0",
)
_ACCEPTS = (
    "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8",
    "application/json, text/plain, */*",
    "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
    "*/*",
)
_LANGUAGES = (
    "en-US,en;q=0.9",
    "de-DE,de;q=0.9,en-US;q=0.8,en;q=0.7",
    "fr-FR,fr;q=0.9,en;q=0.8",
    "en-GB,en;q=0.9",
    "es-ES,es;q=0.9,en;q=0.6",
    "ja-JP,ja;q=0.9,en-US;q=0.8",
)
_PATHS = ("/hello?item={a}&page={b}", "/hello?q=item{a}&offset={b}", "/hello?id={a}&ref=n{b}")
_THEMES = ("light", "dark", "auto")


def _numbers(seed: int) -> Iterator[int]:
    """31-bit pseudo-random numbers from a 64-bit LCG (no ``random`` state: reproducible)."""
    state = seed
    while True:
        state = (state * 6364136223846793005 + 1442695040888963407) % 2**64
        yield state >> 33


def _hex(gen: Iterator[int], digits: int) -> str:
    out = ""
    while len(out) < digits:
        out += f"{next(gen) & 0xFFFFFFF:07x}"
    return out[:digits]


def make_head(n: int, gen: Iterator[int], host: str = HOST_MARK.decode()) -> bytes:
    """The ``n``-th head (``n`` is folded into the ids, so heads are distinct by construction)."""
    r = [next(gen) for _ in range(8)]
    path = _PATHS[r[0] % len(_PATHS)].format(a=10_000 + r[1] % 90_000, b=r[2] % 500)
    agent = _USER_AGENTS[r[3] % len(_USER_AGENTS)].format(v=118 + r[4] % 13, m=r[4] % 7)
    rid = _hex(gen, 32)
    request_id = f"{rid[:8]}-{rid[8:12]}-4{rid[13:16]}-a{rid[17:20]}-{n:012x}"
    trace = f"00-{_hex(gen, 24)}{n:08x}-{_hex(gen, 16)}-01"
    session = _hex(gen, 40)
    csrf = _hex(gen, 32)
    client = f"203.0.{r[5] % 256}.{1 + r[6] % 254}"
    proxy = f"10.{r[7] % 4}.{r[5] % 256}.{1 + r[1] % 254}"
    lines = (
        f"GET {path} HTTP/1.1",
        f"Host: {host}",
        f"User-Agent: {agent}",
        f"Accept: {_ACCEPTS[r[6] % len(_ACCEPTS)]}",
        f"Accept-Language: {_LANGUAGES[r[7] % len(_LANGUAGES)]}",
        f"Cookie: sessionid={session}; csrftoken={csrf}; theme={_THEMES[r[2] % 3]}",
        f"X-Request-Id: {request_id}",
        f"traceparent: {trace}",
        f"X-Forwarded-For: {client}, {proxy}",
        "X-Forwarded-Proto: https",
    )
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")


def generate(
    count: int = DEFAULT_COUNT, host: str = HOST_MARK.decode(), seed: int = 14
) -> list[bytes]:
    """``count`` distinct heads, the same ones for the same arguments."""
    gen = _numbers(seed)
    return [make_head(n, gen, host) for n in range(count)]


# wrk's Lua: every thread loads the heads once (init) and hands them out in
# turn (request), each thread from its own offset; the work per request is a
# table lookup, so wrk stays cheap (the harness reports wrk's CPU).
LUA = """\
local path = "@FILE@"
local heads = {}
local count = 0
local index = 0
local offset = 0
local threads = 0

function setup(thread)
  thread:set("offset", threads * 7919)
  threads = threads + 1
end

function init(args)
  local f = assert(io.open(path, "rb"))
  local data = f:read("*a")
  f:close()
  local host = wrk.host .. ":" .. wrk.port
  local pos = 1
  while true do
    local stop = string.find(data, "\\r\\n\\r\\n", pos, true)
    if not stop then break end
    count = count + 1
    heads[count] = (string.gsub(string.sub(data, pos, stop + 3), "@HOST@", host, 1))
    pos = stop + 4
  end
  index = offset % count
end

function request()
  index = index + 1
  if index > count then index = 1 end
  return heads[index]
end
"""


def write(directory: Path, count: int = DEFAULT_COUNT) -> Path:
    """Write ``heads.bin`` and ``heads.lua`` into ``directory``; return the script's path."""
    data = directory / "heads.bin"
    data.write_bytes(b"".join(generate(count)))
    script = directory / "heads.lua"
    script.write_text(LUA.replace("@FILE@", str(data)))
    return script


def for_host(head: bytes, host: str) -> bytes:
    """``head`` with its Host filled in, as the Lua script sends it."""
    return head.replace(HOST_MARK, host.encode("ascii"), 1)


if __name__ == "__main__":
    count = int(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_COUNT
    heads = generate(count)
    if len(sys.argv) > 2:
        Path(sys.argv[2]).write_bytes(b"".join(heads))
    sizes = sorted(len(h) for h in heads)
    print(
        f"{count} heads, {len(set(heads))} distinct, bytes min {sizes[0]} median "
        f"{sizes[len(sizes) // 2]} max {sizes[-1]}"
    )
