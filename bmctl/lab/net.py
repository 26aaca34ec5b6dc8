"""The lab's addresses: documentation ranges only, none that this machine already uses.

A machine's own network can itself be a documentation range (seen: eth0 192.0.2.2/24 with the
gateway at 192.0.2.1), so the lab reads this machine's addresses and routes and takes two /24s of
the three IPv4 documentation ranges that collide with none of them:
- the node segment A/24 (A.1 this machine, if it joins; A.2 the client; A.3 the registry; A.10 the
  API VIP; nodes from A.11; the Service pool A.100-A.150, whose first address is the ingress VIP)
  and, in its unused top, the Service CIDR A.224/28 (ClusterIPs never leave a node);
- the pod network B/24 (maxPodsPerNode 16 gives each node a /27 of it: up to 8 nodes run pods).
"""
from __future__ import annotations

import json
import subprocess
from dataclasses import asdict, dataclass

import netaddr

from bmctl.errors import BmctlError

CANDIDATES = ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24")
FIRST_NODE = 11
MAX_NODES = 80


@dataclass(frozen=True)
class LabNet:
    """One lab's addresses (saved in its state, so every command and test reads the same)."""
    segment: str  # the node segment, e.g. "198.51.100.0/24"
    pods: str

    def ip(self, last: int) -> str:
        """The address of the node segment whose last octet is `last`."""
        return str(netaddr.IPNetwork(self.segment).network + last)

    @property
    def prefix(self) -> int:
        return 24

    @property
    def bridge_cidr(self) -> str:
        return f"{self.ip(0)}/{self.prefix}"

    @property
    def host_ip(self) -> str:
        return self.ip(1)

    @property
    def client_ip(self) -> str:
        return self.ip(2)

    @property
    def registry_ip(self) -> str:
        return self.ip(3)

    @property
    def vip(self) -> str:
        return self.ip(10)

    @property
    def pool(self) -> str:
        return f"{self.ip(100)}-{self.ip(150)}"

    @property
    def ingress_vip(self) -> str:
        return self.ip(100)

    @property
    def services(self) -> str:
        return f"{self.ip(224)}/28"

    def node_ip(self, index: int) -> str:
        return self.ip(FIRST_NODE + index)

    def to_dict(self) -> dict:
        return asdict(self)


def host_networks() -> list[netaddr.IPNetwork]:
    """Every IPv4 network this machine has an address in or a route to (gateways as /32), in every
    routing table; the default route itself collides with nothing."""
    nets: list[netaddr.IPNetwork] = []
    addrs = json.loads(_ip("-4", "-j", "addr", "show"))
    for link in addrs:
        for a in link.get("addr_info", []):
            if a.get("family") == "inet":
                nets.append(netaddr.IPNetwork(f"{a['local']}/{a['prefixlen']}").cidr)
                nets.append(netaddr.IPNetwork(f"{a['local']}/32"))
    for route in json.loads(_ip("-4", "-j", "route", "show", "table", "all")):
        dst = route.get("dst", "")
        if dst and dst != "default" and route.get("type", "unicast") in ("unicast", "local", "blackhole",
                                                                           "unreachable", "prohibit"):
            nets.append(netaddr.IPNetwork(dst if "/" in dst else f"{dst}/32"))
        if route.get("gateway"):
            nets.append(netaddr.IPNetwork(f"{route['gateway']}/32"))
    return nets


def _ip(*args: str) -> str:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise BmctlError(f"`ip {' '.join(args)}` failed: {proc.stderr.strip()}")
    return proc.stdout or "[]"


def collisions(candidate: str, used: list[netaddr.IPNetwork]) -> list[str]:
    net = netaddr.IPNetwork(candidate)
    return sorted({str(u) for u in used if u in net or net in u or net.first <= u.first <= net.last})


def pick(subnet: str | None = None, used: list[netaddr.IPNetwork] | None = None) -> LabNet:
    """Two documentation /24s that collide with nothing on this machine; `subnet` chooses the
    node segment."""
    used = host_networks() if used is None else used
    free = [c for c in CANDIDATES if not collisions(c, used)]
    if subnet is not None:
        try:
            want = str(netaddr.IPNetwork(subnet).cidr)
        except (netaddr.AddrFormatError, ValueError):
            want = None
        if want not in CANDIDATES:
            raise BmctlError(f"--subnet {subnet}: the lab uses IPv4 documentation ranges only.",
                             f"choose one of {', '.join(CANDIDATES)}.")
        clash = collisions(want, used)
        if clash:
            raise BmctlError(f"--subnet {subnet} collides with this machine's network ({', '.join(clash)}).",
                             f"choose another: free here are {', '.join(free) or 'none'}.")
        free = [want] + [c for c in free if c != want]
    if len(free) < 2:
        taken = {c: collisions(c, used) for c in CANDIDATES}
        detail = "; ".join(f"{c} collides with {', '.join(v)}" for c, v in taken.items() if v)
        raise BmctlError(f"the lab needs two of the documentation ranges {', '.join(CANDIDATES)} that this "
                         f"machine does not use, and only {len(free)} is free ({detail}).",
                         "run the lab on a machine (or in a network namespace) where two of them are unused.")
    return LabNet(segment=free[0], pods=free[1])
