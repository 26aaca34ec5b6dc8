"""BGP mode: what each LB node's FRR lets in from its peers (bmctl/render/bgp.py learn_lines).

A peer's routes (a default route, or the clients' prefixes) are installed, so the node's replies
to the clients that peer sends its way go back the way they came while the session is up; no peer
may route one of the cluster's own addresses. Checked on the rendered lines as FRR evaluates them
(a route-map entry before MetalLB's `deny 20`, the prefix-list's first match), and by Debian's FRR
parsing every LB node's boot file (`vtysh -C`)."""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

import netaddr
import pytest

from bmctl.config.addresses import parse_pool_entry
from bmctl.config.loader import load_config
from bmctl.render import bgp, metallb
from conftest import require_tool

EXAMPLE = Path(__file__).resolve().parent.parent / "cluster-examples" / "bgp-routed-services.yaml"


@pytest.fixture(scope="module")
def config():
    return load_config(EXAMPLE)


def prefix_list(lines: str, name: str) -> list[tuple[str, netaddr.IPNetwork, int]]:
    """(action, prefix, le) per entry, in sequence order."""
    entries = []
    for m in re.finditer(rf"^ip prefix-list {name} seq (\d+) (permit|deny) (\S+)(?: le (\d+))?$", lines, re.M):
        net = netaddr.IPNetwork("0.0.0.0/0" if m.group(3) == "any" else m.group(3))
        le = 32 if m.group(3) == "any" else int(m.group(4) or net.prefixlen)
        entries.append((int(m.group(1)), m.group(2), net, le))
    return [(action, net, le) for _, action, net, le in sorted(entries, key=lambda e: e[0])]


def accepted(entries, route: str) -> bool:
    """FRR's prefix-list semantics: the first entry whose prefix covers the route, with the route's
    length between the entry's and `le`, decides; no match denies."""
    r = netaddr.IPNetwork(route)
    for action, net, le in entries:
        if r.network in net and net.prefixlen <= r.prefixlen <= le:
            return action == "permit"
    return False


def test_a_peers_default_route_and_client_prefixes_are_let_in_but_never_the_clusters_own(config):
    lines = bgp.learn_lines(config)
    entries = prefix_list(lines, bgp.LEARN_LIST)
    assert entries, lines
    for route in ("0.0.0.0/0", "192.0.2.0/24", "203.0.113.128/25"):
        assert accepted(entries, route), route
    lb = config.lb
    own = [f"{lb.vips.controlPlaneVIP}/32", "10.244.3.0/24", "10.96.0.10/32",
           *(f"{n.ip}/32" for n in config.all_nodes)]
    own += [f"{parse_pool_entry(entry)[-1]}/32" for pool in lb.addressPools for entry in pool.addresses]
    for route in own:
        assert not accepted(entries, route), route


def test_every_peer_lets_them_in_before_metallbs_deny(config):
    lines = bgp.learn_lines(config)
    for peer in config.lb.bgpPeers:
        entry = re.search(rf"^route-map {re.escape(peer.ip)}-in permit (\d+)\n\s+match ip address prefix-list "
                          rf"{bgp.LEARN_LIST}$", lines, re.M)
        assert entry and int(entry.group(1)) < 20, lines  # MetalLB's own entry is `deny 20`
    # in the boot file and in MetalLB's bgpextras alike (MetalLB's reloads keep them)
    node = config.lb_nodes[0]
    assert lines in bgp.frr_conf(config, node)
    assert lines in metallb.bgp_settings(config)["extras"]


def test_frr_parses_every_lb_nodes_boot_file(config, tmp_path):
    vtysh = require_tool("vtysh")
    for node in config.lb_nodes:
        path = tmp_path / f"{node.ip}.conf"
        path.write_text(bgp.frr_conf(config, node))
        proc = subprocess.run([vtysh, "-C", "-f", str(path)], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stdout + proc.stderr
    broken = bgp.frr_conf(config, config.lb_nodes[0]).replace(" permit any", " permit nothing")
    path.write_text(broken)
    assert subprocess.run([vtysh, "-C", "-f", str(path)], capture_output=True).returncode != 0
