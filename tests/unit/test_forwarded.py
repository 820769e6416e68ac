"""prefork.http.forwarded: which peers are trusted, and what their fields say."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from prefork.http.forwarded import Trust, resolve

TRUST = Trust(["127.0.0.1", "::1", "10.0.0.0/8"])


@pytest.mark.parametrize(
    ("address", "trusted"),
    [
        ("127.0.0.1", True),
        ("::1", True),
        ("10.1.2.3", True),
        ("::ffff:10.1.2.3", True),
        ("127.0.0.2", False),
        ("11.0.0.1", False),
        ("not-an-ip", False),
    ],
)
def test_trust_by_address_and_cidr(address: str, trusted: bool) -> None:
    assert TRUST.trusts(address) is trusted


def test_star_trusts_everyone_and_empty_nobody() -> None:
    assert Trust(["*"]).trusts("203.0.113.9")
    assert Trust([]).nobody
    assert not Trust([]).trusts("127.0.0.1")


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"x-forwarded-for": "203.0.113.7"}, ("203.0.113.7", None, None)),
        # The right-most untrusted hop is the client; left of it may be forged.
        ({"x-forwarded-for": "1.2.3.4, 203.0.113.7, 10.0.0.5"}, ("203.0.113.7", None, None)),
        ({"x-forwarded-for": "10.0.0.9, 10.0.0.5"}, ("10.0.0.9", None, None)),
        ({"x-forwarded-for": "garbage"}, (None, None, None)),
        ({"x-forwarded-for": "1.2.3.4, junk"}, (None, None, None)),
        ({"x-forwarded-proto": "https"}, (None, "https", None)),
        ({"x-forwarded-proto": "HTTPS, http"}, (None, "https", None)),
        ({"x-forwarded-proto": "gopher"}, (None, None, None)),
        ({"x-forwarded-host": "example.com"}, (None, None, "example.com")),
        ({"x-forwarded-host": "evil.com/path"}, (None, None, None)),
        (
            {"forwarded": 'for=192.0.2.60;proto=https;host=example.com, for="[2001:db8::1]:443"'},
            ("2001:db8::1", None, None),
        ),
        (
            {"forwarded": "for=192.0.2.60;proto=https;host=example.com"},
            ("192.0.2.60", "https", "example.com"),
        ),
        ({"forwarded": 'for="192.0.2.43:47011"'}, ("192.0.2.43", None, None)),
        ({"forwarded": "for=unknown"}, (None, None, None)),
        # Forwarded is the standard: it wins over X-Forwarded-*.
        (
            {"forwarded": "for=192.0.2.60", "x-forwarded-for": "198.51.100.1"},
            ("192.0.2.60", None, None),
        ),
    ],
)
def test_resolve(headers: dict[str, str], expected: tuple[str | None, ...]) -> None:
    assert resolve(headers, TRUST) == expected


def _ipaddress_says(text: str) -> str | None:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return None
    return text


# Addresses near the edges of the dotted-quad fast path: each must be judged
# exactly as ipaddress judges it.
EDGE_ADDRESSES = [
    "0.0.0.0",
    "255.255.255.255",
    "256.1.1.1",
    "1.2.3.256",
    "01.2.3.4",
    "1.2.3.04",
    "1.2.3.00",
    "1.2.3",
    "1.2.3.4.5",
    "1.2.3.4.",
    ".1.2.3.4",
    "1..2.3",
    "1.2.3.4 ",
    "1.2.3.4\n",
    "\u0661.2.3.4",  # an Arabic-Indic digit: not ASCII, refused
    "1.2.3.4:80",
    "::ffff:1.2.3.4",
    "2001:db8::1",
    "fe80::1%eth0",
    "",
]


@pytest.mark.parametrize("address", EDGE_ADDRESSES)
def test_forwarded_address_validity_matches_ipaddress(address: str) -> None:
    # A single hop (stripped) from a trusted proxy is the client when, and only
    # when, it is an address.
    assert resolve({"x-forwarded-for": address}, TRUST)[0] == _ipaddress_says(address.strip())


@given(st.from_regex(r"[0-9]{1,4}(\.[0-9]{1,4}){2,4}", fullmatch=True))
def test_dotted_numbers_judged_as_ipaddress_does(address: str) -> None:
    assert resolve({"x-forwarded-for": address}, TRUST)[0] == _ipaddress_says(address)


def _client_by_the_rule(hops: list[str], trust: Trust = TRUST) -> str | None:
    """The module's rule: the right-most hop not trusted, else the left-most; None when
    a hop looked at on the way is not an address."""
    for hop in reversed(hops):
        if _ipaddress_says(hop) is None:
            return None
        if not trust.trusts(hop):
            return hop
    return hops[0]


_HOPS = ["10.0.0.5", "127.0.0.1", "::1", "203.0.113.7", "198.51.100.1", "junk", "", "1.2.3.04"]


# CIDR ranges (read hop by hop), exact addresses and everyone (read by one
# scan, Trust.client_in_xff, where every hop it comes to is a dotted quad).
_TRUSTS = [
    TRUST,
    Trust(["127.0.0.1", "::1", "10.0.0.5"]),
    Trust(["127.0.0.1", "10.0.0.5", *(f"192.0.2.{n}" for n in range(20))]),  # (a set)
    Trust(["*"]),
    Trust([]),
]


@given(
    st.lists(st.sampled_from(_HOPS), min_size=1, max_size=5),
    st.sampled_from([",", ", ", " ,\t"]),
    st.sampled_from(_TRUSTS),
)
def test_x_forwarded_for_chain_follows_the_rule(hops: list[str], sep: str, trust: Trust) -> None:
    expected = _client_by_the_rule(hops, trust)
    assert resolve({"x-forwarded-for": sep.join(hops)}, trust)[0] == expected
