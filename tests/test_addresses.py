"""Pool arithmetic: parsing rules, and property tests against brute force on small ranges."""
from __future__ import annotations

import netaddr
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bmctl.config.addresses import (AddressError, count_buggy, find_overlaps, parse_pool_entry,
                                    usable_count)

BASE = int(netaddr.IPAddress("198.51.100.0"))


def ip(n: int) -> str:
    return str(netaddr.IPAddress(BASE + n))


@pytest.mark.parametrize("text,first,last", [
    ("198.51.100.0/24", "198.51.100.0", "198.51.100.255"),
    ("198.51.100.7/32", "198.51.100.7", "198.51.100.7"),
    ("198.51.100.10-198.51.100.20", "198.51.100.10", "198.51.100.20"),
    ("198.51.100.10-198.51.100.10", "198.51.100.10", "198.51.100.10"),
    ("2001:db8::/64", "2001:db8::", "2001:db8::ffff:ffff:ffff:ffff"),
    ("2001:db8::1-2001:db8::ff", "2001:db8::1", "2001:db8::ff"),
])
def test_valid_entries(text, first, last):
    r = parse_pool_entry(text)
    assert (str(netaddr.IPAddress(r.first, r.version)), str(netaddr.IPAddress(r.last, r.version))) == (first, last)


@pytest.mark.parametrize("text,fragment,fix", [
    ("198.51.100.10 - 198.51.100.20", "spaces around the dash", "198.51.100.10-198.51.100.20"),
    ("198.51.100.20-198.51.100.10", "reversed", "198.51.100.10-198.51.100.20"),
    ("198.51.100.7", "single address", "198.51.100.7/32"),
    ("198.51.100.7/24", "host bits set", "198.51.100.0/24"),
    ("198.51.100.0/33", "invalid prefix", "/24"),
    ("198.51.100.1-2001:db8::1", "mixes IPv4 and IPv6", "same family"),
    ("198.51.100.1/", "invalid prefix", ""),
    ("198.51.100", "not an IP address", ""),
    ("pool", "not an IP address", ""),
    ("198.51.100.1--198.51.100.2", "not a range", "FIRST-LAST"),
    ("", "not an IP address", ""),
])
def test_invalid_entries_say_what_and_how(text, fragment, fix):
    with pytest.raises(AddressError) as info:
        parse_pool_entry(text)
    assert fragment in info.value.message
    assert fix in info.value.fix


def test_huge_pools_are_not_enumerated():
    # A /8 and an IPv6 /64 cost the same as a /32: these would take minutes (or forever)
    # if anything iterated addresses.
    a = parse_pool_entry("10.0.0.0/8")
    b = parse_pool_entry("2001:db8::/64")
    assert count_buggy(a) == 2 * 65536
    assert usable_count([a], True) == 2 ** 24 - 2 * 65536
    assert usable_count([b], True) == 2 ** 64
    assert find_overlaps([(a, "a"), (b, "b"), (parse_pool_entry("10.200.0.0-10.200.0.5"), "c")]) == [("a", "c")]


ranges = st.tuples(st.integers(0, 600), st.integers(0, 40)).map(lambda t: (t[0], t[0] + t[1]))


@settings(max_examples=300, deadline=None)
@given(st.lists(ranges, min_size=0, max_size=8))
def test_overlaps_match_brute_force(spans):
    items = [(parse_pool_entry(f"{ip(a)}-{ip(b)}"), i) for i, (a, b) in enumerate(spans)]
    pairs = find_overlaps(items)
    sets = [set(range(a, b + 1)) for a, b in spans]
    brute = {i for i in range(len(spans)) for j in range(len(spans)) if i != j and sets[i] & sets[j]}
    reported = {t for pair in pairs for t in pair}
    assert reported == brute
    for i, j in pairs:
        assert sets[i] & sets[j], "every reported pair really overlaps"


@settings(max_examples=300, deadline=None)
@given(ranges)
def test_buggy_count_matches_brute_force(span):
    a, b = span
    r = parse_pool_entry(f"{ip(a)}-{ip(b)}")
    brute = sum(1 for n in range(a, b + 1) if (BASE + n) % 256 in (0, 255))
    assert count_buggy(r) == brute
    assert usable_count([r], True) == (b - a + 1) - brute


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 600), st.integers(0, 600))
def test_range_order(a, b):
    text = f"{ip(a)}-{ip(b)}"
    if a <= b:
        assert parse_pool_entry(text).size == b - a + 1
    else:
        with pytest.raises(AddressError, match="reversed"):
            parse_pool_entry(text)


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 1023), st.integers(22, 32))
def test_cidr_host_bits(n, prefix):
    net = netaddr.IPNetwork(f"{ip(n)}/{prefix}")
    text = f"{ip(n)}/{prefix}"
    if net.ip == net.network:
        r = parse_pool_entry(text)
        assert (r.first, r.last) == (net.first, net.last)
    else:
        with pytest.raises(AddressError, match="host bits"):
            parse_pool_entry(text)
