"""Address-pool arithmetic on ranges, never on individual addresses.

Every pool entry becomes a netaddr.IPRange; overlap, containment and counting are
done on the (first, last) integers, so a 10.0.0.0/8 or an IPv6 /64 costs the same
as a /32.
"""
from __future__ import annotations

import re
from typing import Iterable, Sequence, TypeVar

import netaddr

T = TypeVar("T")

_RANGE = re.compile(r"^([0-9A-Fa-f:.]+)-([0-9A-Fa-f:.]+)$")


class AddressError(ValueError):
    """A pool entry that is neither a CIDR nor an A-B range; carries the fix."""

    def __init__(self, message: str, fix: str) -> None:
        super().__init__(message)
        self.message = message
        self.fix = fix


def parse_ip(text: str) -> netaddr.IPAddress:
    """A single IPv4 or IPv6 address, strictly (no '1.2.3' or zero-padded octets)."""
    if not isinstance(text, str) or not text or text != text.strip():
        raise AddressError(f"{text!r} is not an IP address", "write an address like 198.51.100.10")
    try:
        if ":" in text:
            return netaddr.IPAddress(text, 6)
        return netaddr.IPAddress(text, 4, flags=netaddr.INET_PTON)
    except (netaddr.AddrFormatError, ValueError, TypeError):
        raise AddressError(f"{text!r} is not an IP address",
                           "write an address like 198.51.100.10 or 2001:db8::10") from None


def parse_cidr(text: str) -> netaddr.IPNetwork:
    """A network in CIDR form with no host bits set (198.51.100.0/24)."""
    if not isinstance(text, str) or "/" not in text or text != text.strip():
        raise AddressError(f"{text!r} is not a CIDR block", "write a block like 198.51.100.0/24")
    addr, _, prefix = text.partition("/")
    ip = parse_ip(addr)
    if not prefix.isdigit() or int(prefix) > ip.netmask_bits() or prefix != str(int(prefix)):
        raise AddressError(f"{text!r} has an invalid prefix length",
                           f"use a prefix between 0 and {ip.netmask_bits()}, e.g. {addr}/24")
    net = netaddr.IPNetwork(f"{ip}/{int(prefix)}")
    if net.ip != net.network:
        raise AddressError(f"{text!r} has host bits set (the block starts at {net.network})",
                           f"write {net.network}/{net.prefixlen} for the whole block, or {ip}/{ip.netmask_bits()} "
                           "for the single address")
    return net


def as_range(net: netaddr.IPNetwork) -> netaddr.IPRange:
    return netaddr.IPRange(netaddr.IPAddress(net.first, net.version), netaddr.IPAddress(net.last, net.version))


def parse_pool_entry(text: str) -> netaddr.IPRange:
    """A pool `addresses` entry: a CIDR block or an A-B range with A <= B, same family."""
    if not isinstance(text, str):
        raise AddressError(f"{text!r} is not a string",
                           "write the entry as a CIDR block (198.51.100.0/28) or a range "
                           "(198.51.100.10-198.51.100.20)")
    if "/" in text:
        return as_range(parse_cidr(text))
    if "-" in text:
        if " " in text or "\t" in text:
            compact = "".join(text.split())
            raise AddressError(f"{text!r} has spaces around the dash",
                               f"write it without spaces: {compact!r}")
        match = _RANGE.match(text)
        if not match:
            raise AddressError(f"{text!r} is not a range of two addresses",
                               "write a range as FIRST-LAST, e.g. 198.51.100.10-198.51.100.20")
        first, last = parse_ip(match.group(1)), parse_ip(match.group(2))
        if first.version != last.version:
            raise AddressError(f"{text!r} mixes IPv4 and IPv6", "use two addresses of the same family")
        if first > last:
            raise AddressError(f"{text!r} is reversed: {first} comes after {last}",
                               f"write it as {last}-{first}")
        return netaddr.IPRange(first, last)
    ip = parse_ip(text)
    raise AddressError(f"{text!r} is a single address, not a CIDR block or range",
                       f"write {ip}/{ip.netmask_bits()} for exactly this address")


def contains(r: netaddr.IPRange, ip: netaddr.IPAddress) -> bool:
    return r.version == ip.version and r.first <= int(ip) <= r.last


def intersects(a: netaddr.IPRange | netaddr.IPNetwork, b: netaddr.IPRange | netaddr.IPNetwork) -> bool:
    return a.version == b.version and a.first <= b.last and b.first <= a.last


def find_overlaps(items: Sequence[tuple[netaddr.IPRange, T]]) -> list[tuple[T, T]]:
    """Pairs (earlier tag, later tag) whose ranges overlap; O(n log n), no enumeration.

    Every range that overlaps anything appears in at least one pair, paired with the
    range that reaches furthest among those that start before it.
    """
    ordered = sorted(enumerate(items), key=lambda e: (e[1][0].version, e[1][0].first, e[1][0].last, e[0]))
    out: list[tuple[T, T]] = []
    reach: tuple[int, int, int] | None = None  # (version, last, position in items)
    for pos, (rng, _tag) in ordered:
        if reach is not None and reach[0] == rng.version and rng.first <= reach[1]:
            i, j = sorted((reach[2], pos))
            out.append((items[i][1], items[j][1]))
        if reach is None or reach[0] != rng.version or rng.last > reach[1]:
            reach = (rng.version, rng.last, pos)
    return out


def count_buggy(r: netaddr.IPRange) -> int:
    """How many IPv4 addresses in r end in .0 or .255 (MetalLB's avoidBuggyIPs)."""
    if r.version != 4:
        return 0

    def upto(n: int, residue: int) -> int:  # count x in [0, n] with x % 256 == residue
        return 0 if n < residue else (n - residue) // 256 + 1

    return sum(upto(r.last, res) - upto(r.first - 1, res) for res in (0, 255))


def usable_count(ranges: Iterable[netaddr.IPRange], avoid_buggy: bool) -> int:
    return sum(r.size - (count_buggy(r) if avoid_buggy else 0) for r in ranges)


def is_buggy(ip: netaddr.IPAddress) -> bool:
    return ip.version == 4 and int(ip) % 256 in (0, 255)
