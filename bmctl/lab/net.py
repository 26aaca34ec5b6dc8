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

import concurrent.futures
import configparser
import json
import os
import re
import shutil
import socket
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import urlsplit

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


# Where this machine's own traffic goes, which the lab must never fence off (see `needed`).
PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy", "ftp_proxy", "HTTP_PROXY", "HTTPS_PROXY",
                   "ALL_PROXY", "FTP_PROXY", "GOPROXY", "PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "npm_config_registry")
PIP_CONFIGS = ("/etc/pip.conf", "~/.config/pip/pip.conf", "~/.pip/pip.conf")
RESOLVE_SECONDS = 3.0


def _hosts_in(text: str) -> list[str]:
    """The hosts of the URLs in `text` (a proxy variable, a GOPROXY list, an apt source line)."""
    hosts = []
    for url in re.findall(r"[a-z][a-z0-9+.-]*://[^\s,|\"';]+", text):
        host = urlsplit(url).hostname
        if host:
            hosts.append(host)
    if not hosts and text and "://" not in text and text not in ("direct", "off"):
        host = urlsplit(f"//{text.strip()}").hostname  # host:port without a scheme
        if host:
            hosts.append(host)
    return hosts


def _read(path: str | Path) -> str:
    try:
        return Path(os.path.expanduser(str(path))).read_text(errors="replace")
    except OSError:
        return ""


def _sources(env: dict) -> dict[str, str]:
    """host or address -> what this machine uses it for (before resolving)."""
    found: dict[str, str] = {}
    for line in _read("/etc/resolv.conf").splitlines():
        fields = line.split()
        if len(fields) >= 2 and fields[0] == "nameserver":
            found.setdefault(fields[1].split("%")[0], "DNS server (/etc/resolv.conf)")
    for name in PROXY_VARIABLES:
        for host in _hosts_in(env.get(name, "")):
            found.setdefault(host, f"${name}")
    apt = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*.list")),
           *sorted(Path("/etc/apt/sources.list.d").glob("*.sources")), *sorted(Path("/etc/apt/apt.conf.d").glob("*"))]
    for path in apt:
        for line in _read(path).splitlines():
            line = line.split("#", 1)[0]
            if line.startswith(("deb", "URIs:")) or "Proxy" in line:
                for host in _hosts_in(line):
                    found.setdefault(host, f"package source ({path})")
    pip_hosts = []
    for path in PIP_CONFIGS:
        parser = configparser.ConfigParser(interpolation=None)
        try:
            parser.read_string(_read(path))
        except configparser.Error:
            continue
        for section in parser.sections():
            for key in ("index-url", "extra-index-url", "proxy"):
                pip_hosts += _hosts_in(parser.get(section, key, fallback=""))
    if not pip_hosts and not env.get("PIP_INDEX_URL"):
        pip_hosts = _pip_default_hosts()
    for host in pip_hosts:
        found.setdefault(host, "Python package index")
    go = shutil.which("go") or ("/usr/local/go/bin/go" if os.path.exists("/usr/local/go/bin/go") else None)
    if go and "GOPROXY" not in env:
        try:
            proxy = subprocess.run([go, "env", "GOPROXY"], capture_output=True, text=True, timeout=10).stdout
        except (OSError, subprocess.TimeoutExpired):
            proxy = ""
        for host in _hosts_in(proxy):
            found.setdefault(host, "Go module proxy (go env GOPROXY)")
    return found


def _pip_default_hosts() -> list[str]:
    """The index and file hosts pip uses when nothing is configured, as pip itself names them."""
    try:
        from pip._internal.models.index import PyPI
    except ImportError:  # no pip here: nothing of it to keep reachable
        return []
    return [h for h in (urlsplit(PyPI.url).hostname, getattr(PyPI, "file_storage_domain", None)) if h]


def _resolve(host: str) -> list[str]:
    try:
        return [str(netaddr.IPAddress(host))] if netaddr.valid_ipv4(host) else \
            sorted({a[4][0] for a in socket.getaddrinfo(host, None, socket.AF_INET)})
    except (OSError, UnicodeError):
        return []


def needed(env: dict | None = None) -> dict[str, str]:
    """The IPv4 addresses this machine depends on, address -> what for: its DNS servers, the proxies
    in its environment, and the hosts of its package sources and module proxies (resolved, each
    within RESOLVE_SECONDS; a name that does not resolve in time is left out). The lab never makes
    one of them unreachable here."""
    sources = _sources(dict(os.environ) if env is None else env)
    out: dict[str, str] = {}
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=8)
    futures = {host: pool.submit(_resolve, host) for host in sources}
    done, _ = concurrent.futures.wait(futures.values(), timeout=RESOLVE_SECONDS)
    pool.shutdown(wait=False, cancel_futures=True)
    for host, future in futures.items():
        for address in (future.result() if future in done else []):
            out.setdefault(address, sources[host] if host == address else f"{host}: {sources[host]}")
    return out


def fence(cidr: str, keep: dict[str, str]) -> list[str]:
    """The CIDRs that make `cidr` unreachable from this machine except the addresses in `keep`."""
    kept = netaddr.IPSet(a for a in keep if netaddr.IPAddress(a) in netaddr.IPNetwork(cidr))
    return [str(c) for c in (netaddr.IPSet([cidr]) - kept).iter_cidrs()]


def _ip(*args: str) -> str:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise BmctlError(f"`ip {' '.join(args)}` failed: {proc.stderr.strip()}")
    return proc.stdout or "[]"


def collisions(candidate: str, used: list[netaddr.IPNetwork]) -> list[str]:
    net = netaddr.IPNetwork(candidate)
    return sorted({str(u) for u in used if u in net or net in u or net.first <= u.first <= net.last})


def pick(subnet: str | None = None, used: list[netaddr.IPNetwork] | None = None, routed: bool = False,
         keep: dict[str, str] | None = None) -> LabNet:
    """Two documentation /24s that collide with nothing on this machine; `subnet` chooses the
    node segment; `routed`: the layout with a router (the same two /24s). Ranges without an
    address of `keep` (see `needed`) come first: the node segment is one of them where it can be."""
    used = host_networks() if used is None else used
    holds = {c: [a for a in (keep or {}) if netaddr.IPAddress(a) in netaddr.IPNetwork(c)] for c in CANDIDATES}
    free = sorted((c for c in CANDIDATES if not collisions(c, used)), key=lambda c: bool(holds[c]))
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
                         "if another lab holds them, remove it (`bmctl lab down`; `bmctl lab prune` removes "
                         "labs whose processes are gone, as a killed run or a restart leaves them); otherwise "
                         "run the lab on a machine (or in a network namespace) where two of them are unused.")
    return LabNet(segment=free[0], pods=free[1], routed=routed)
