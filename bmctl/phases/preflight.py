"""Preflight: SSH checks of every node (in parallel), then the checks that need the L2 segment."""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass

import netaddr

from bmctl.config.addresses import intersects, parse_ip, parse_pool_entry
from bmctl.config.model import APISERVER_PORT, MEMBERLIST_PORT, ClusterConfig
from bmctl.errors import BmctlError
from bmctl.host import Host, Inventory
from bmctl.host.ssh import SudoPasswordError
from bmctl.phases import facts as node_facts
from bmctl.phases.base import Context, Phase, Step
from bmctl.render.controlplane_lb import HAPROXY_HEALTH_PORT
from bmctl.render.facts import NodeFacts

VRRP_LISTEN_SECONDS = 3.0
ARP_SAMPLES_PER_RANGE = 4

# Which process may already hold a port (a re-run on a node bmctl set up).
OWN_PORT_HOLDERS = {APISERVER_PORT: "kube-apiserver", HAPROXY_HEALTH_PORT: "haproxy", MEMBERLIST_PORT: "speaker"}


@dataclass
class Check:
    node: str
    check: str
    status: str  # ok | warn | fail
    detail: str


class PreflightFailed(BmctlError):
    def __init__(self, checks: list[Check]) -> None:
        failed = [c for c in checks if c.status == "fail"]
        super().__init__(f"preflight found {len(failed)} problem(s): " +
                         "; ".join(f"{c.node}: {c.check}: {c.detail}" for c in failed),
                         "fix them and re-run, or pass --force to skip preflight (not recommended).")
        self.checks = checks


_NODE_SCRIPT = r'''
for b in "$@"; do
  if command -v "$b" >/dev/null 2>&1; then echo "bin $b ok"; else echo "bin $b missing"; fi
done
echo "swap $(tail -n +2 /proc/swaps | wc -l)"
if command -v timedatectl >/dev/null 2>&1; then
  echo "ntp $(timedatectl show -p NTPSynchronized --value 2>/dev/null || echo unknown)"
else
  echo "ntp unknown"
fi
echo "cgroupfs $(stat -fc %T /sys/fs/cgroup 2>/dev/null || echo unknown)"
ss -Hltnup 2>/dev/null | sed 's/^/sock /'
'''

# Captures IPv4 frames on the interface (like tcpdump, below the IP stack so nothing is filtered
# out) and prints "source vrid version" for each VRRP (IP protocol 112) sender seen.
_VRRP_LISTEN = r'''
import socket, sys, time
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0800))
s.bind((sys.argv[1], 0))
s.settimeout(0.2)
end = time.time() + float(sys.argv[2])
seen = set()
while time.time() < end:
    try:
        frame = s.recv(4096)
    except socket.timeout:
        continue
    ip = frame[14:]
    if len(ip) < 22 or ip[9] != 112:
        continue
    ihl = (ip[0] & 15) * 4
    if len(ip) > ihl + 1:
        seen.add((socket.inet_ntoa(ip[12:16]), ip[ihl + 1], ip[ihl] >> 4))
for src, vrid, version in sorted(seen):
    print(src, vrid, version)
'''

# Prints "<ip> <mac>" for each address that answers ARP (the MAC of whoever answered).
_ARPING = r'''
iface=$1; shift
if arping --help 2>&1 | grep -q Habets; then flavor=habets; else flavor=iputils; fi
for ip; do
  (
    if [ $flavor = habets ]; then out=$(arping -C 1 -c 2 -w 2 -i "$iface" "$ip" 2>/dev/null)
    else out=$(arping -c 2 -w 2 -I "$iface" "$ip" 2>/dev/null); fi
    mac=$(printf '%s\n' "$out" | grep -oE '([0-9a-fA-F]{2}:){5}[0-9a-fA-F]{2}' | head -n 1)
    [ -n "$mac" ] && echo "$ip $mac"
  ) &
done
wait
'''


def _ports(config: ClusterConfig, address: str) -> list[tuple[str, int]]:
    ports: list[tuple[str, int]] = []
    if address in {n.address for n in config.control_plane_nodes}:
        ports.append(("tcp", APISERVER_PORT))
    if config.bundled and address in {n.address for n in config.lb_nodes}:
        ports += [("tcp", config.lb.ports.controlPlaneLBPort), ("tcp", HAPROXY_HEALTH_PORT),
                  ("tcp", MEMBERLIST_PORT), ("udp", MEMBERLIST_PORT)]
    return ports


def _binaries(config: ClusterConfig, address: str, kubernetes: bool) -> list[str]:
    need = ["sh", "ip", "ss", "sha256sum", "stat", "tar"]
    if kubernetes:
        need += ["flock"]
    if config.bundled and address in {n.address for n in config.lb_nodes}:
        need.append("curl")
        if address == config.lb_nodes[0].address and config.lb.type != "bgp":
            need += ["arping", "python3"]
    return need


def _listeners(lines: list[str]) -> dict[tuple[str, int], str]:
    out = {}
    for line in lines:
        parts = line.split()
        if len(parts) < 5:
            continue
        proto = parts[0]
        local = parts[4]
        port = local.rsplit(":", 1)[-1]
        if not port.isdigit():
            continue
        owner = re.search(r'users:\(\("([^"]+)"', line)
        out[(proto, int(port))] = owner.group(1) if owner else "?"
    return out


def node_checks(config: ClusterConfig, host: Host, facts: NodeFacts, kubernetes: bool = True) -> list[Check]:
    a = host.address
    os_check = Check(a, "os / kernel", "ok", f"{facts.os}; {facts.kernel}")
    need = _binaries(config, a, kubernetes)
    try:
        res = host.run(["sh", "-c", _NODE_SCRIPT, "sh", *need], step="preflight checks")
    except SudoPasswordError as exc:
        return [Check(a, "ssh + sudo", "fail", f"{host.access.user} cannot sudo without a password: {exc.fix}"),
                os_check]
    checks = [Check(a, "ssh + sudo", "ok", f"as {host.access.user}"), os_check]
    lines = res.stdout.splitlines()
    missing = [l.split()[1] for l in lines if l.startswith("bin ") and l.endswith(" missing")]
    checks.append(Check(a, "binaries", "fail" if missing else "ok",
                        f"missing: {', '.join(missing)}" if missing else ", ".join(need)))
    swap = next((l.split()[1] for l in lines if l.startswith("swap ")), "0")
    checks.append(Check(a, "swap off", "fail" if swap != "0" else "ok",
                        f"{swap} swap device(s) active: run swapoff -a and remove them from /etc/fstab"
                        if swap != "0" else "no swap"))
    ntp = next((l.split(" ", 1)[1] for l in lines if l.startswith("ntp ")), "unknown")
    checks.append(Check(a, "time sync", "ok" if ntp == "yes" else "warn",
                        "NTP synchronized" if ntp == "yes" else f"NTP synchronized: {ntp or 'unknown'} "
                        "(certificates and etcd need synchronized clocks)"))
    listeners = _listeners([l[5:] for l in lines if l.startswith("sock ")])
    own = dict(OWN_PORT_HOLDERS)
    own[config.lb.ports.controlPlaneLBPort] = "haproxy"
    taken = []
    for proto, port in _ports(config, a):
        holder = listeners.get((proto, port))
        if holder is not None and holder != own.get(port):
            taken.append(f"{proto}/{port} (held by {holder})")
    ports = ", ".join(f"{p}/{n}" for p, n in _ports(config, a))
    if ports:
        checks.append(Check(a, "ports free", "fail" if taken else "ok",
                            f"in use: {', '.join(taken)}" if taken else ports))
    checks.append(Check(a, "node IP", "ok", f"{config_node_ip(config, a)}/{facts.prefixlen} on {facts.interface}"))
    if kubernetes:
        fs = next((l.split(" ", 1)[1] for l in lines if l.startswith("cgroupfs ")), "unknown")
        checks.append(cgroup_check(config, a, fs))
    return checks


CGROUP_V1_REFUSED_FROM = 35  # the kubelet's failCgroupV1 defaults to true from Kubernetes v1.35


def cgroup_check(config: ClusterConfig, address: str, fs: str) -> Check:
    """The node's cgroup version (the file system type of /sys/fs/cgroup: cgroup2fs is v2, a tmpfs
    of v1 controllers is v1) against what the Kubernetes version accepts."""
    version = config.spec.kubernetesVersion
    if fs == "cgroup2fs":
        return Check(address, "cgroup v2", "ok", "cgroup v2 (/sys/fs/cgroup is cgroup2fs)")
    if fs != "tmpfs":
        return Check(address, "cgroup v2", "warn", f"cannot tell the cgroup version: /sys/fs/cgroup is {fs or 'unknown'}")
    fix = (f"boot the node with cgroup v2 (kernel parameter systemd.unified_cgroup_hierarchy=1, then reboot), "
           f"or set spec.nodeConfig.allowCgroupV1: true in {config.path or 'the cluster config'} to run on it "
           "anyway (deprecated upstream)")
    if config.spec.nodeConfig.allowCgroupV1:
        return Check(address, "cgroup v2", "warn", "cgroup v1, allowed by spec.nodeConfig.allowCgroupV1 (deprecated "
                     "upstream: the kubelet runs with failCgroupV1: false)")
    m = re.match(r"^v1\.(\d+)\.", version)
    if m and int(m.group(1)) >= CGROUP_V1_REFUSED_FROM:
        return Check(address, "cgroup v2", "fail", f"cgroup v1: Kubernetes {version} refuses it (the kubelet's "
                     f"failCgroupV1, kubeadm's SystemVerification); {fix}")
    return Check(address, "cgroup v2", "warn", f"cgroup v1: Kubernetes {version} still runs on it, v1.35 and later "
                 f"refuse it; before upgrading, {fix}")


# Arguments: HOST PORT pairs; prints "reach HOST:PORT ok|fail" for each (a TCP connect, 3 s at most).
_REACH = r'''
while [ $# -ge 2 ]; do
  if timeout 3 bash -c 'exec 3<>"/dev/tcp/$0/$1"' "$1" "$2" 2>/dev/null; then r=ok; else r=fail; fi
  echo "reach $1:$2 $r"
  shift 2
done
'''


def software_checks(config: ClusterConfig, host: Host, facts: NodeFacts) -> list[Check]:
    """The node software already there (a kubelet or kubeadm of another version is refused, with the
    fix) and the registry endpoints the nodes pull from (a TCP connect to each)."""
    from bmctl import release as releases
    from bmctl.config.registries import access
    from bmctl.phases.provision import REQUIRED, VERSIONS, node_family, parse_versions, source, version_of, \
        wrong_versions
    a = host.address
    release = releases.of(config)
    found = parse_versions(host.run(["sh", "-c", VERSIONS], step="read installed versions", sudo=False).stdout)
    wrong = wrong_versions(found, release.kubernetes)
    checks = []
    if wrong:
        name, path, version = wrong[0]
        how = (f"delete {path} (or `apt-get remove {name}` / `dnf remove {name}` if a package installed it)"
               if path.startswith("/usr/local/") else f"remove the package (`apt-get remove {name}` or "
               f"`dnf remove {name}`; `apt-mark unhold {name}` first if it is held)")
        checks.append(Check(a, "node software", "fail",
                            f"{name} {version} is installed at {path}, but this cluster runs Kubernetes "
                            f"{release.kubernetes}: {how} so that bmctl installs {release.kubernetes}, or set "
                            f"spec.kubernetesVersion to {version} with a bundle of that version "
                            f"(bmctl bundle build --kubernetes {version})"))
    else:
        there = ", ".join(f"{n} {version_of(v)}" for n, (_, v) in sorted(found.items()))
        how = "from the bundle" if source(config) == "bundle" else "from the package manager"
        checks.append(Check(a, "node software", "ok", (f"installed: {there}; " if there else "none installed; ")
                            + f"missing or different parts are installed {how}"))
        if source(config) == "packages" and node_family(facts) is None and not all(n in found for n in REQUIRED):
            checks.append(Check(a, "package manager", "fail",
                                f"{facts.os} has no package manager bmctl installs with (apt on Debian/Ubuntu, "
                                "dnf on the RHEL family): build an offline bundle (`bmctl bundle build`) "
                                "and set bundlePath in the config's header"))
    endpoints = access(config).endpoints()
    if endpoints:
        failed = _unreachable(host, [(e.hostname, e.port) for e in endpoints], "reach the registries")
        checks.append(Check(a, "registries reachable", "fail" if failed else "ok",
                            f"no TCP connection to {', '.join(failed)} (registryMirrors / privateRegistries): "
                            "check the address, the port and the firewall between this node and the registry"
                            if failed else ", ".join(f"{e.hostname}:{e.port}" for e in endpoints)))
    return checks


def _unreachable(host: Host, targets: list[tuple[str, int]], step: str) -> list[str]:
    """The HOST:PORT of `targets` to which `host` opens no TCP connection within 3 s (one command)."""
    out = host.run(["sh", "-c", _REACH, "sh", *(x for h, p in targets for x in (h, str(p)))], step=step,
                   timeout=60, sudo=False).stdout
    return [line.split()[1] for line in out.splitlines() if line.startswith("reach ") and line.endswith(" fail")]


def config_node_ip(config: ClusterConfig, address: str) -> str:
    return next(n.ip for n in config.all_nodes if n.address == address)


def _segment(config: ClusterConfig, facts: dict[str, NodeFacts]) -> tuple[list[Check], netaddr.IPNetwork | None]:
    first = config.lb_nodes[0].address
    nets = {}
    for node in config.lb_nodes:
        f = facts[node.address]
        nets[node.address] = netaddr.IPNetwork(f"{node.ip}/{f.prefixlen}").cidr
    distinct = set(nets.values())
    if config.lb.type == "bgp":
        return [_routed_check(config, first, sorted(distinct))], None
    if len(distinct) > 1:
        detail = ", ".join(f"{a} in {n}" for a, n in nets.items())
        return [Check(first, "one L2 subnet", "fail", f"load-balancer nodes are in different subnets: {detail}")], None
    net = distinct.pop()
    outside = [f"{name} {vip}" for name, vip in (("controlPlaneVIP", config.lb.vips.controlPlaneVIP),
                                                 ("ingressVIP", config.lb.vips.ingressVIP))
               if vip and parse_ip(vip) not in net]
    for pool in config.lb.addressPools:
        for text in pool.addresses:
            r = parse_pool_entry(text)
            if not (r.version == net.version and r.first >= net.first and r.last <= net.last):
                outside.append(f"pool {pool.name} {text}")
    checks = [Check(first, "one L2 subnet", "fail" if outside else "ok",
                    f"outside the load-balancer nodes' subnet {net}: {', '.join(outside)}" if outside
                    else f"LB nodes, control-plane VIP, ingress VIP and pools in {net}")]
    return checks, net


def _routed_check(config: ClusterConfig, first: str, nets: list[netaddr.IPNetwork]) -> Check:
    """BGP mode: the VIPs and the pools are routed to the LB nodes (which need no common segment), so
    none may lie in an LB node's subnet: a host there would ARP for the address and get no answer."""
    inside = []
    vips = [("controlPlaneVIP", config.lb.vips.controlPlaneVIP), ("ingressVIP", config.lb.vips.ingressVIP)]
    ranges = [(f"{name} {vip}", netaddr.IPRange(parse_ip(vip), parse_ip(vip))) for name, vip in vips if vip]
    ranges += [(f"pool {pool.name} {text}", parse_pool_entry(text))
               for pool in config.lb.addressPools for text in pool.addresses]
    for what, r in ranges:
        hit = [n for n in nets if intersects(r, n)]
        if hit:
            inside.append(f"{what} (in {hit[0]})")
    where = ", ".join(map(str, nets))
    return Check(first, "VIPs and pools routed", "fail" if inside else "ok",
                 f"in a load-balancer node's subnet: {', '.join(inside)}. With type: bgp they are routed to the LB "
                 "nodes: give them addresses outside every node subnet (e.g. a range the routers do not have on "
                 "any interface)" if inside else f"control-plane VIP, ingress VIP and pools outside {where}")


def _arp_candidates(config: ClusterConfig) -> list[str]:
    if config.lb.type == "bgp":  # the VIPs and pools are routed, not on the segment: nothing there to ask
        return []
    ips = [config.lb.vips.controlPlaneVIP]
    if config.lb.vips.ingressVIP:
        ips.append(config.lb.vips.ingressVIP)
    for pool in config.lb.addressPools:
        for text in pool.addresses:
            r = parse_pool_entry(text)
            if r.version != 4:
                continue
            n = min(r.size, ARP_SAMPLES_PER_RANGE)
            picks = {r.first + i for i in range(n // 2 + n % 2)} | {r.last - i for i in range(n // 2)}
            ips += [str(netaddr.IPAddress(p)) for p in sorted(picks)]
    return list(dict.fromkeys(ips))


def bgp_checks(config: ClusterConfig, inventory: Inventory) -> list[Check]:
    """Each LB node opens a TCP connection to each BGP peer's port 179."""
    if config.lb.type != "bgp" or not config.lb.bgpPeers:
        return []
    def reach(host: Host) -> Check:
        failed = _unreachable(host, [(p.ip, 179) for p in config.lb.bgpPeers], "reach the BGP peers")
        return Check(host.address, "BGP peers reachable", "fail" if failed else "ok",
                     f"no TCP connection to {', '.join(failed)}: check that the router listens for this node "
                     "(its neighbor or listen range) and that nothing filters port 179" if failed else
                     ", ".join(f"{p.ip}:179" for p in config.lb.bgpPeers))
    found = inventory.parallel([n.address for n in config.lb_nodes], reach)
    return [found[n.address] for n in config.lb_nodes]


def cluster_checks(config: ClusterConfig, inventory: Inventory, facts: dict[str, NodeFacts],
                   also_ours: frozenset[str] = frozenset()) -> list[Check]:
    """Segment, free addresses and VRRP id. `also_ours`: IPs of LB nodes an update is removing (still
    ours while it runs); their MACs are ours too when `facts` has them."""
    if not config.bundled:
        return []
    checks, net = _segment(config, facts)
    first = config.lb_nodes[0]
    host = inventory[first.address]
    iface = facts[first.address].interface
    held = {a.split("/")[0] for f in facts.values() for a in f.addresses}
    candidates = [ip for ip in _arp_candidates(config) if ip not in held]
    if net is not None and candidates:
        res = host.run(["sh", "-c", _ARPING, "sh", iface, *candidates], step="arping VIPs and pools", timeout=60)
        # An address answered by one of our LB nodes is a Service IP our own MetalLB announces (a re-run).
        ours_macs = {m.lower() for f in facts.values() for m in f.macs}
        replies = [line.split() for line in res.stdout.splitlines() if len(line.split()) == 2]
        answering = sorted({ip for ip, mac in replies if mac.lower() not in ours_macs}, key=netaddr.IPAddress)
        checks.append(Check(first.address, "addresses free", "fail" if answering else "ok",
                            f"already answering ARP: {', '.join(answering)}" if answering else
                            f"no answer from {len(candidates)} VIP and pool address(es)"))
    if config.lb.type == "bgp":  # no VRRP: the VIP goes to the routers over BGP
        return checks
    ours = {n.ip for n in config.lb_nodes} | set(also_ours)
    vrid = config.virtual_router_id
    res = host.run(["python3", "-c", _VRRP_LISTEN, iface, str(VRRP_LISTEN_SECONDS)],
                   step="listen for VRRP adverts", timeout=VRRP_LISTEN_SECONDS + 30)
    foreign = []
    for line in res.stdout.splitlines():
        src, rid, _version = line.split()
        if int(rid) == vrid and src not in ours:
            foreign.append(src)
    checks.append(Check(first.address, "VRRP router id free", "fail" if foreign else "ok",
                        f"virtual_router_id {vrid} is already used by VRRP router(s) {', '.join(foreign)}: set "
                        "spec.loadBalancer.vrrp.virtualRouterID to an unused id" if foreign else
                        f"no other router with id {vrid} in {VRRP_LISTEN_SECONDS:g} s"))
    return checks


def run_preflight(config: ClusterConfig, inventory: Inventory,
                  kubernetes: bool = True) -> tuple[list[Check], dict[str, NodeFacts]]:
    """All checks; `kubernetes` adds what the kubeadm phase needs (False with --until before it)."""
    facts = node_facts.gather(config, inventory)
    per_node = inventory.parallel(list(facts), lambda h: node_checks(config, h, facts[h.address], kubernetes)
                                  + software_checks(config, h, facts[h.address]))
    checks = [c for a in facts for c in per_node[a]]
    if not any(c.check == "ssh + sudo" and c.status == "fail" for c in checks):
        checks += cluster_checks(config, inventory, facts)
        checks += bgp_checks(config, inventory)
    return checks, facts


def checks_json(checks: list[Check]) -> list[dict]:
    return [asdict(c) for c in checks]


class Preflight(Phase):
    name = "preflight"
    title = "Preflight checks"

    def plan(self, ctx: Context) -> list[Step]:
        config = ctx.config
        steps = []
        for node in config.all_nodes:
            a = node.address
            steps.append(Step(a, f"SSH as {config.spec.nodeAccess.loginUser} and sudo; OS, kernel, binaries, "
                                 "time sync, swap off, cgroup version"))
            steps.append(Step(a, f"node IP {node.ip} present; subnet read from the node"))
            steps.append(Step(a, f"kubelet and kubeadm, if installed, are {ctx.release.kubernetes}; "
                                 "the registries the node pulls from answer"))
            ports = _ports(config, a)
            if ports:
                steps.append(Step(a, "ports free: " + ", ".join(f"{p}/{n}" for p, n in ports)))
        if config.bundled:
            first = config.lb_nodes[0].address
            steps.append(Step(first, "all load-balancer nodes, VIPs and pools in one L2 subnet"))
            steps.append(Step(first, "VIPs and pool addresses not answering ARP"))
            steps.append(Step(first, f"no other VRRP router uses virtual_router_id {config.virtual_router_id}"))
            if config.lb.type == "bgp":
                steps.append(Step(first, "pools outside the LB nodes' subnet (routed); every LB node reaches "
                                         + ", ".join(f"{p.ip}:179" for p in config.lb.bgpPeers)))
        return steps

    def run(self, ctx: Context) -> None:
        checks, facts = run_preflight(ctx.config, ctx.inventory, ctx.options.get("kubernetes", True))
        ctx.facts.update(facts)
        ctx.options["preflight"] = checks
        report(ctx, checks)
        ctx.progress.note(f"{len(checks)} checks passed on {len(facts)} node(s)")


def report(ctx: Context, checks: list[Check]) -> None:
    """Show what is not ok per node; stop the run if anything failed."""
    for c in checks:
        if c.status != "ok":
            ctx.progress.host(c.node, f"{c.check}: {c.detail}", c.status)
    if any(c.status == "fail" for c in checks):
        raise PreflightFailed(checks)
