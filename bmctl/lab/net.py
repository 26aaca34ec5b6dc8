"""The lab's addresses: documentation ranges only, none that this machine already uses.

A machine's own network can itself be a documentation range (seen: eth0 192.0.2.2/24 with the
gateway at 192.0.2.1), so the lab reads this machine's addresses and routes and takes two /24s of
the three IPv4 documentation ranges that collide with none of them:
- the node segment A/24 (A.1 this machine, if it joins; A.2 the client; A.3 the registry; A.10 the
  API VIP; nodes from A.11; the Service pool A.100-A.150, whose first address is the ingress VIP)
  and, in its unused top, the Service CIDR A.224/28 (ClusterIPs never leave a node);
- the pod network B/24 (maxPodsPerNode 16 gives each node a /27 of it: up to 8 nodes run pods).

With a router (`bmctl lab up --router`, `LabNet.routed`), the same A/24 is split in two, and
everything outside the bridge's half is reached through the router, as from another rack:
- A.0/25 is the bridge (the node subnet, prefix /25): A.1 this machine, if it joins; A.3 the
  registry; nodes A.11-A.90; A.126 the router's eth0 (`router_ip`; BGP router-id and every LB
  node's peer);
- A.128/25 (`routed_cidr`) is behind the router: this machine and every node route it via A.126;
  - A.130 the API VIP: each LB node announces it over BGP while its HAProxy answers;
  - A.160-A.175 the BGP Service pool (`bgp_pool`): LB nodes advertise what they serve, the
    router installs one next hop per advertising node (ECMP); never on-link anywhere;
  - A.192/28 the client subnet (`client_subnet`): A.193 the router's client0, A.194 the client,
    whose only route is a default route via A.193 (it is not on the bridge);
  - A.224/28 the Service CIDR, as without a router (ClusterIPs never leave a node).
- the router's AS is 64512 (`router_asn`), the cluster's 64513 (`cluster_asn`); there is no
  ingress VIP (Services get their addresses from the BGP pool). The pod network B/24 is unchanged.
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
ROUTER_ASN = 64512
CLUSTER_ASN = 64513


@dataclass(frozen=True)
class LabNet:
    """One lab's addresses (saved in its state, so every command and test reads the same).
    `routed`: the lab has a BGP router (see the module's docstring); the router's fields are None
    without one."""
    segment: str  # the node segment, e.g. "198.51.100.0/24"
    pods: str
    routed: bool = False

    def ip(self, last: int) -> str:
        """The address of the node segment whose last octet is `last`."""
        return str(netaddr.IPNetwork(self.segment).network + last)

    @property
    def prefix(self) -> int:
        """The prefix length of the bridge (the node subnet)."""
        return 25 if self.routed else 24

    @property
    def bridge_cidr(self) -> str:
        return f"{self.ip(0)}/{self.prefix}"

    @property
    def host_ip(self) -> str:
        return self.ip(1)

    @property
    def client_ip(self) -> str:
        return self.ip(194) if self.routed else self.ip(2)

    @property
    def registry_ip(self) -> str:
        return self.ip(3)

    @property
    def vip(self) -> str:
        return self.ip(130) if self.routed else self.ip(10)

    @property
    def pool(self) -> str:
        """The Service pool lab.yaml names: the BGP pool with a router."""
        return self.bgp_pool if self.routed else f"{self.ip(100)}-{self.ip(150)}"

    @property
    def ingress_vip(self) -> str | None:
        return None if self.routed else self.ip(100)

    @property
    def services(self) -> str:
        return f"{self.ip(224)}/28"

    # -- with a router ------------------------------------------------------------------------
    @property
    def router_ip(self) -> str | None:
        """The router's address on the bridge (eth0)."""
        return self.ip(126) if self.routed else None

    @property
    def routed_cidr(self) -> str | None:
        """The half of the node segment behind the router (BGP pool, client subnet, Service CIDR)."""
        return f"{self.ip(128)}/25" if self.routed else None

    @property
    def bgp_pool(self) -> str | None:
        return f"{self.ip(160)}-{self.ip(175)}" if self.routed else None

    @property
    def client_subnet(self) -> str | None:
        return f"{self.ip(192)}/28" if self.routed else None

    @property
    def router_client_ip(self) -> str | None:
        """The router's address on the client's link (client0): the client's default gateway."""
        return self.ip(193) if self.routed else None

    @property
    def router_asn(self) -> int | None:
        return ROUTER_ASN if self.routed else None

    @property
    def cluster_asn(self) -> int | None:
        return CLUSTER_ASN if self.routed else None

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


def pick(subnet: str | None = None, used: list[netaddr.IPNetwork] | None = None, routed: bool = False) -> LabNet:
    """Two documentation /24s that collide with nothing on this machine; `subnet` chooses the
    node segment; `routed`: the layout with a router (the same two /24s)."""
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
    return LabNet(segment=free[0], pods=free[1], routed=routed)
