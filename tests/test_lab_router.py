"""`bmctl lab up --router`: a real BGP router (FRR from Debian) in the lab, between the bridge and the
client. Bare nodes (sshd only): the BGP speakers here are FRR too, started by the test in two LB
nodes' namespaces (AS 64513, peer A.126, BFD on), each announcing the same Service IP A.160/32.

Measured here (printed with -s): a link cut is noticed by BFD (100 ms x 3) in about 0.3 s, a frozen
bgpd (its BFD still up) by the hold timer (3 s) in about 2.7 s, a stopped bgpd (Cease notification)
at once."""
from __future__ import annotations

import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import netaddr
import pytest
import yaml

from bmctl.config.loader import load_config
from bmctl.lab import router
from bmctl.errors import BmctlError
from bmctl.lab.lab import Lab
from bmctl.lab.net import MAX_NODES, LabNet, pick
from conftest import require
from lab.harness import NET, in_netns, lab_prerequisites

SERVICE = NET.ip(160)  # the first address of the BGP pool (same segment with a router)


def prerequisites() -> None:
    missing = lab_prerequisites(real_nodes=False) + router.missing()
    require(not missing, f"lab prerequisites for --router: {', '.join(missing)} (Debian's frr package)")


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    prerequisites()
    workdir = tmp_path_factory.mktemp("rt")  # short: FRR's sockets live in the state folder
    workspace = workdir / "ws"
    (workspace / "lab").mkdir(parents=True)
    the_lab = Lab(workspace / "lab" / "lab-state")
    started = time.monotonic()
    try:
        the_lab.up(1, 2, 0, host_address=False, subnet=NET.segment, real_nodes=False, router=True)
        print(f"\nlab up with a router: {time.monotonic() - started:.1f} s")
        the_lab.workspace = workspace
        yield the_lab
    finally:
        if the_lab.exists:
            the_lab.down()


@pytest.fixture(scope="module")
def state(lab):
    return lab.load()


def ns_inode(path: str) -> int:
    return os.stat(path).st_ino


def ip_json(netns: str, *args: str) -> list:
    return json.loads(subprocess.run(["ip", "-n", netns, "-j", *args], capture_output=True, text=True,
                                     check=True).stdout or "[]")


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


def ping(netns: str | None, dst: str, timeout: float = 2.0) -> bool:
    """One ICMP echo from `netns` (None: this process's own) to `dst` (a raw socket: this machine
    may have no ping binary)."""
    if netns is None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    else:
        with in_netns(netns):
            sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    with sock:
        ident = os.getpid() & 0xFFFF
        seq = int(time.monotonic() * 1000) & 0xFFFF
        body = b"bmctl-lab-router"
        header = struct.pack("!BBHHH", 8, 0, 0, ident, seq)
        sock.sendto(struct.pack("!BBHHH", 8, 0, _checksum(header + body), ident, seq) + body, (dst, 0))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                packet, (src, _) = sock.recvfrom(2048)
            except socket.timeout:
                return False
            ihl = (packet[0] & 0x0F) * 4
            kind, _, _, rid, rseq = struct.unpack("!BBHHH", packet[ihl:ihl + 8])
            if src == dst and kind == 0 and rid == ident and rseq == seq:
                return True
    return False


def until(cond, limit: float, step: float = 0.01) -> float | None:
    """Seconds until cond() holds, None if it did not within `limit`."""
    start = time.monotonic()
    while not cond():
        if time.monotonic() - start > limit:
            return None
        time.sleep(step)
    return time.monotonic() - start


def test_router_namespace_forwards_and_runs_frr(lab, state):
    net = Lab.net_of(state)
    assert net.routed and net.prefix == 25 and net.router_ip == NET.ip(126)
    rns = state["router"]["ns"]
    addrs = {link["ifname"]: [f"{a['local']}/{a['prefixlen']}" for a in link["addr_info"] if a["family"] == "inet"]
             for link in ip_json(rns, "addr", "show")}
    assert addrs == {"lo": ["127.0.0.1/8"], "eth0": [f"{NET.ip(126)}/25"], "client0": [f"{NET.ip(193)}/28"]}
    sysctl = subprocess.run(["ip", "netns", "exec", rns, "sysctl", "-n", "net.ipv4.ip_forward",
                             "net.ipv4.fib_multipath_hash_policy"], capture_output=True, text=True, check=True)
    assert sysctl.stdout.split() == ["1", "1"]
    folder = Path(state["router"]["dir"])
    assert folder == lab.state_dir / "frr"
    for daemon in ("zebra", "bfdd", "bgpd"):
        pid = state["router"]["pids"][daemon]
        assert router.alive(pid), daemon
        assert os.readlink(f"/proc/{pid}/exe") == f"/usr/lib/frr/{daemon}"
        assert ns_inode(f"/proc/{pid}/ns/net") == ns_inode(f"/run/netns/{rns}"), f"{daemon} is not in {rns}"
        assert (folder / f"{daemon}.pid").read_text().strip() == str(pid)
        assert (folder / f"{daemon}.vty").is_socket()
    assert (folder / "zserv.api").is_socket()
    running = router.vtysh(state, "show running-config")
    for line in ("router bgp 64512", f" bgp router-id {NET.ip(126)}", " no bgp ebgp-requires-policy",
                 " bgp bestpath as-path multipath-relax", " neighbor LB remote-as 64513", " neighbor LB timers 1 3",
                 " neighbor LB bfd", f" bgp listen range {NET.ip(0)}/25 peer-group LB", "  maximum-paths 16",
                 " profile lab", "  transmit-interval 100", "  receive-interval 100"):
        assert line in running.splitlines(), line
    # the nodes: a /25 on the bridge, the other half via the router
    for node in state["nodes"]:
        routes = {r["dst"]: r.get("gateway") for r in ip_json(node["netns"], "route", "show")}
        assert routes == {f"{NET.ip(0)}/25": None, f"{NET.ip(128)}/25": NET.ip(126)}, node["name"]


def test_lab_yaml_has_bgp_load_balancing(state):
    docs = list(yaml.safe_load_all(Path(state["config"]).read_text()))
    lb = docs[2]["spec"]["loadBalancer"]
    assert lb["type"] == "bgp" and lb["localASN"] == 64513
    assert lb["bgpPeers"] == [{"ip": NET.ip(126), "asn": 64512}]
    assert lb["addressPools"] == [{"name": "lab-services", "addresses": [f"{NET.ip(160)}-{NET.ip(175)}"]}]
    assert lb["vips"] == {"controlPlaneVIP": NET.ip(130)}  # behind the router: announced over BGP
    assert [n["address"] for n in lb["nodePoolSpec"]["nodes"]] == [NET.ip(12), NET.ip(13)]
    assert docs[2]["spec"]["clusterNetwork"]["services"]["cidrBlocks"] == [f"{NET.ip(224)}/28"]
    pool = netaddr.IPSet(netaddr.IPRange(NET.ip(160), NET.ip(175))) | netaddr.IPSet([NET.ip(130)])
    assert not pool & netaddr.IPSet([f"{NET.ip(0)}/25"])  # advertised, never on-link
    config = load_config(state["config"])
    assert config.lb.type == "bgp"


def test_the_client_reaches_the_nodes_only_through_the_router(state):
    client, rns = state["client_ns"], state["router"]["ns"]
    links = {link["ifname"] for link in ip_json(client, "link", "show")}
    assert links == {"lo", "eth0"}
    routes = {r["dst"]: r.get("gateway") for r in ip_json(client, "route", "show")}
    assert routes == {"default": NET.ip(193), f"{NET.ip(192)}/28": None}
    bridge_ports = {link["ifname"] for link in ip_json(state["bridge_ns"], "link", "show")}
    assert "client" not in bridge_ports and "router" in bridge_ports
    assert ping(client, NET.ip(11)), "client -> n1 through the router"
    assert ping(state["nodes"][0]["netns"], NET.ip(194)), "n1 -> client through the router"
    assert ping(client, NET.ip(126)) and ping(client, NET.ip(193))
    counters = ip_json(rns, "-s", "link", "show", "client0")[0]["stats64"]
    assert counters["rx"]["packets"] > 0 and counters["tx"]["packets"] > 0


def test_a_rebooted_node_gets_its_route_via_the_router_back(lab, state):
    node = state["nodes"][0]
    lab.reboot(node["name"])
    routes = {r["dst"]: r.get("gateway") for r in ip_json(node["netns"], "route", "show")}
    assert routes == {f"{NET.ip(0)}/25": None, f"{NET.ip(128)}/25": NET.ip(126)}
    assert ping(state["client_ns"], node["address"])


def _routes(netns: str) -> dict[str, tuple[str | None, bool]]:
    """destination -> (gateway, linkdown)."""
    return {r["dst"]: (r.get("gateway"), "linkdown" in r.get("flags", [])) for r in ip_json(netns, "route", "show")}


def test_a_pulled_cable_keeps_the_routes_and_an_interface_brought_up_gets_them_back(lab, state):
    """The lab's two link faults behave as on a real machine. Carrier loss (the bridge's side of the
    veth down): the node keeps its routes, marked linkdown, and uses them again when the carrier
    returns. `ip link set eth0 down` on the node: every route through eth0 goes; `up`: the node's
    network configuration (as systemd-networkd or ifupdown) puts the configured route back."""
    node = state["nodes"][1]
    ns, port = node["netns"], node["name"]
    configured = {f"{NET.ip(0)}/25": (None, False), f"{NET.ip(128)}/25": (NET.ip(126), False)}
    assert _routes(ns) == configured
    subprocess.run(["ip", "-n", state["bridge_ns"], "link", "set", port, "down"], check=True)
    try:
        assert until(lambda: all(down for _, down in _routes(ns).values()), 5) is not None, _routes(ns)
        assert {d: gw for d, (gw, _) in _routes(ns).items()} == {d: gw for d, (gw, _) in configured.items()}
        assert not ping(state["client_ns"], node["address"], timeout=0.5)
    finally:
        subprocess.run(["ip", "-n", state["bridge_ns"], "link", "set", port, "up"], check=True)
    assert until(lambda: _routes(ns) == configured, 5) is not None, _routes(ns)
    assert until(lambda: ping(state["client_ns"], node["address"], timeout=0.2), 5) is not None
    subprocess.run(["ip", "-n", ns, "link", "set", "eth0", "down"], check=True)
    try:
        assert until(lambda: _routes(ns) == {}, 5) is not None, _routes(ns)
    finally:
        subprocess.run(["ip", "-n", ns, "link", "set", "eth0", "up"], check=True)
    took = until(lambda: _routes(ns) == configured, 5)
    assert took is not None, f"the configured route did not come back: {_routes(ns)}"
    print(f"configured route back {took:.2f} s after `ip link set eth0 up`")
    assert until(lambda: ping(state["client_ns"], node["address"], timeout=0.2), 5) is not None


def test_the_routed_layout():
    """Without a router nothing changes; with one, the node segment is split in two (net.py)."""
    plain = LabNet(**{"segment": "198.51.100.0/24", "pods": "203.0.113.0/24"})  # a state saved before --router
    assert (plain.routed, plain.prefix, plain.client_ip, plain.pool, plain.ingress_vip, plain.router_ip,
            plain.bgp_pool) == (False, 24, "198.51.100.2", "198.51.100.100-198.51.100.150", "198.51.100.100",
                                None, None)
    used = [netaddr.IPNetwork(c) for c in ("192.0.2.0/24", "192.0.2.2/32", "192.0.2.1/32")]
    net = pick(used=used, routed=True)
    assert net.to_dict() == {"segment": "198.51.100.0/24", "pods": "203.0.113.0/24", "routed": True}
    assert (net.prefix, net.bridge_cidr, net.router_ip, net.routed_cidr, net.bgp_pool, net.client_subnet,
            net.router_client_ip, net.client_ip, net.services, net.vip, net.registry_ip, net.host_ip,
            net.router_asn, net.cluster_asn, net.ingress_vip, net.pool) == (
        25, "198.51.100.0/25", "198.51.100.126", "198.51.100.128/25", "198.51.100.160-198.51.100.175",
        "198.51.100.192/28", "198.51.100.193", "198.51.100.194", "198.51.100.224/28", "198.51.100.130",
        "198.51.100.3", "198.51.100.1", 64512, 64513, None, "198.51.100.160-198.51.100.175")
    bridge = netaddr.IPNetwork(net.bridge_cidr)
    last = netaddr.IPAddress(net.node_ip(MAX_NODES - 1))
    assert last in bridge and last < netaddr.IPAddress(net.router_ip)
    behind = netaddr.IPNetwork(net.routed_cidr)
    for cidr in (net.client_subnet, net.services, f"{net.ip(160)}/28"):
        assert netaddr.IPNetwork(cidr) in behind and netaddr.IPNetwork(cidr) not in bridge
    assert not netaddr.IPSet([net.client_subnet]) & netaddr.IPSet([net.services])


def test_router_prerequisite_is_named(monkeypatch):
    require(os.geteuid() == 0, "root (the lab's prerequisite check starts with it)")
    monkeypatch.setattr(router, "missing", lambda: ["/usr/lib/frr/bgpd"])
    with pytest.raises(BmctlError, match=r"--router\) needs FRR: /usr/lib/frr/bgpd missing") as err:
        Lab.check_prerequisites(router=True)
    assert "apt-get install frr" in str(err.value.fix)
    Lab.check_prerequisites()  # without --router FRR is not asked for


def speaker_configs(node_ip: str, name: str) -> dict[str, str]:
    """A node's BGP speaker (what MetalLB's speaker does, as FRR): AS 64513, the router A.126 as its
    one peer with the router's timers and BFD profile, announcing SERVICE/32."""
    head = f"frr defaults traditional\nhostname {name}\n!\n"
    return {
        "zebra": head,
        "bfdd": head + "bfd\n profile lab\n  receive-interval 100\n  transmit-interval 100\n"
                       "  detect-multiplier 3\n exit\nexit\n",
        "bgpd": head + "\n".join([
            "router bgp 64513", f" bgp router-id {node_ip}", " bgp log-neighbor-changes",
            " no bgp ebgp-requires-policy", " no bgp network import-check",
            f" neighbor {NET.ip(126)} remote-as 64512", f" neighbor {NET.ip(126)} timers 1 3",
            f" neighbor {NET.ip(126)} timers connect 1", f" neighbor {NET.ip(126)} bfd",
            f" neighbor {NET.ip(126)} bfd profile lab",
            " address-family ipv4 unicast", f"  network {SERVICE}/32", " exit-address-family", "exit", ""]),
    }


def test_bgp_sessions_ecmp_and_withdrawals(lab, state, tmp_path_factory):
    rns = state["router"]["ns"]
    lbs = [n for n in state["nodes"] if n["role"] == "load-balancer"]
    a, b = lbs
    hops = lambda: router.routes(state, f"{SERVICE}/32")  # noqa: E731
    folder = tmp_path_factory.mktemp("spk")
    speakers: dict[str, tuple[dict, Path]] = {}
    timings = {}
    try:
        started = time.monotonic()
        for node in lbs:
            speakers[node["name"]] = (router.start_frr(node["netns"], folder / node["name"],
                                                       speaker_configs(node["address"], node["name"])),
                                      folder / node["name"])
            # the Service IP on each node's loopback, as kube-proxy (IPVS) would hold it
            subprocess.run(["ip", "-n", node["netns"], "addr", "add", f"{SERVICE}/32", "dev", "lo"], check=True)
        both = sorted([a["address"], b["address"]])
        took = until(lambda: hops() == both, 15)
        assert took is not None, (router.bgp_summary(state), hops())
        timings["speakers started -> ECMP route"] = time.monotonic() - started
        summary = router.bgp_summary(state)
        assert {ip: (s["state"], s["prefixes"], s["asn"]) for ip, s in summary.items()} == \
            {ip: ("Established", 1, 64513) for ip in both}
        route = ip_json(rns, "route", "show", "exact", f"{SERVICE}/32")[0]
        assert route["protocol"] == "bgp" and len(route["nexthops"]) == 2
        def bfd_up() -> list[str]:
            brief = router.vtysh(state, "show bfd peers brief").splitlines()
            return sorted(line.split()[2] for line in brief if line.split()[-1:] == ["up"])
        assert until(lambda: bfd_up() == both, 5, step=0.05) is not None, router.vtysh(state, "show bfd peers")

        # L4 hashing: a client's connections from different ports go to both nodes
        chosen = set()
        for sport in range(40000, 40032):
            got = ip_json(rns, "route", "get", SERVICE, "from", NET.ip(194), "iif", "client0", "ipproto", "tcp",
                          "sport", str(sport), "dport", "80")
            chosen.add(got[0]["gateway"])
        assert chosen == set(both)
        assert ping(state["client_ns"], SERVICE), "the client reaches the Service IP through the router"

        status = lab.router_status()
        assert all(d["running"] for d in status["daemons"].values()) and set(status["sessions"]) == set(both)
        cli = subprocess.run([sys.executable, "-m", "bmctl", "lab", "status"], capture_output=True, text=True,
                             env={**os.environ, "BMCTL_WORKSPACE": str(lab.workspace), "COLUMNS": "200"},
                             timeout=60)
        assert cli.returncode == 0, cli.stdout + cli.stderr
        assert f"Router {rns}" in cli.stdout and "bgpd running" in cli.stdout
        assert all(ip in cli.stdout for ip in both) and "Established" in cli.stdout

        # a cut link: BFD on both sides (100 ms x 3) takes the next hop away
        subprocess.run(["ip", "-n", state["bridge_ns"], "link", "set", a["name"], "down"], check=True)
        took = until(lambda: hops() == [b["address"]], 10)
        subprocess.run(["ip", "-n", state["bridge_ns"], "link", "set", a["name"], "up"], check=True)
        assert took is not None and took < 1.5, f"link cut: next hop withdrawn after {took} s (BFD: 0.3 s)"
        timings["link cut (BFD) -> withdrawn"] = took
        took = until(lambda: hops() == both, 15)
        assert took is not None, "the cut node's session did not come back"
        timings["link back -> next hop back"] = took

        # a frozen bgpd (its bfdd still answers): the hold timer, 3 s
        bgpd_b = speakers[b["name"]][0]["bgpd"]
        os.kill(bgpd_b, signal.SIGSTOP)
        try:
            took = until(lambda: hops() == [a["address"]], 10)
        finally:
            os.kill(bgpd_b, signal.SIGCONT)
        assert took is not None and 1.5 < took < 4.5, f"frozen bgpd: next hop withdrawn after {took} s (hold 3 s)"
        timings["bgpd frozen (hold timer) -> withdrawn"] = took
        assert until(lambda: hops() == both, 15) is not None

        # bgpd stopped: its Cease notification withdraws at once
        stop_at = time.monotonic()
        router.stop_frr({"bgpd": speakers[a["name"]][0]["bgpd"]}, speakers[a["name"]][1])
        took = until(lambda: hops() == [b["address"]], 10)
        assert took is not None and took < 1.0, f"stopped bgpd: withdrawn after {took} s"
        timings["bgpd stopped (Cease) -> withdrawn"] = time.monotonic() - stop_at
        assert set(router.bgp_summary(state)) == {b["address"]}
    finally:
        for pids, where in speakers.values():
            router.stop_frr(pids, where)
        print("\n" + "\n".join(f"  {what}: {secs:.2f} s" for what, secs in timings.items()))
    leftover = [pid for pids, _ in speakers.values() for pid in pids.values() if router.alive(pid)]
    assert not leftover


HOST_CHECK = """
import json, subprocess, sys
from pathlib import Path
from bmctl.lab.lab import Lab
from test_lab_router import ping
lab = Lab(Path(sys.argv[1]))
state = lab.up(1, 0, 0, host_address=True, real_nodes=False, router=True)
try:
    net = Lab.net_of(state)
    def ip(*args):
        return json.loads(subprocess.run(["ip", "-j", *args], capture_output=True, text=True, check=True).stdout)
    print(json.dumps({"net": net.to_dict(), "veth": state["host_veth"],
                      "routes": [[r["dst"], r.get("gateway"), r.get("dev")] for r in ip("route", "show")],
                      "addrs": [f"{a['local']}/{a['prefixlen']}" for a in
                                ip("addr", "show", "dev", state["host_veth"])[0]["addr_info"] if a["family"] == "inet"],
                      "to_client": ping(None, net.client_ip), "to_node": ping(None, net.node_ip(0)),
                      "from_client": ping(state["client_ns"], net.host_ip)}))
finally:
    lab.down()
"""


def test_this_machine_reaches_the_routed_half_like_a_workstation_in_another_rack(tmp_path):
    """With --router and this machine on the bridge (the default of `bmctl lab up`): A.1/25 and a
    route to A.128/25 via the router. Run in a network namespace of its own (`unshare --net`), so
    this machine's own addresses and routes, which other tests read, stay as they are."""
    prerequisites()
    proc = subprocess.run(["unshare", "--net", "--", sys.executable, "-c", HOST_CHECK, str(tmp_path / "lab-state")],
                          capture_output=True, text=True, timeout=120, cwd=Path(__file__).parent,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent),
                                                                           os.environ.get("PYTHONPATH", "")])})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    net = got["net"]
    a = netaddr.IPNetwork(net["segment"]).network
    assert net["routed"] is True
    assert got["addrs"] == [f"{a + 1}/25"]
    assert [f"{a + 128}/25", str(a + 126), got["veth"]] in got["routes"]
    assert [f"{a}/25", None, got["veth"]] in got["routes"]
    assert got["to_client"] and got["to_node"] and got["from_client"], got
    assert not (tmp_path / "lab-state").exists()


def test_lab_down_leaves_nothing_of_frr(lab, state):
    pids = list(state["router"]["pids"].values())
    prefix = f"bl{state['id']}-"
    run_frr = sorted(os.listdir("/var/run/frr")) if os.path.isdir("/var/run/frr") else None
    lab.down()
    assert not [pid for pid in pids if router.alive(pid)]
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    assert prefix not in netns
    assert not lab.state_dir.exists()
    # nothing of FRR outside the lab's state folder: no new socket under this machine's /var/run/frr,
    # no crash-log folder of one of its daemons under /var/tmp/frr
    assert (sorted(os.listdir("/var/run/frr")) if os.path.isdir("/var/run/frr") else None) == run_frr
    if os.path.isdir("/var/tmp/frr"):
        assert not [d for d in os.listdir("/var/tmp/frr") if d.rsplit(".", 1)[-1] in {str(p) for p in pids}]
