"""BGP mode's files (loadBalancer.type: bgp): each load-balancer node's FRR static pod, which
announces the control-plane VIP while the local HAProxy answers, and the lines MetalLB's speaker
keeps in that same FRR (its bgpextras ConfigMap). Config -> text, nothing else.

One FRR per LB node speaks BGP for both the VIP and the Services: a router keeps one session per
neighbour address, so a second speaker on the node (MetalLB's own FRR container) would fight the
first for it. The static pod starts FRR before the API server exists; MetalLB's speaker, deployed
in FRR mode without its frr container (bmctl/render/metallb.py), drives that FRR through the
shared socket and configuration folders below.
"""
from __future__ import annotations

import netaddr
from netaddr import IPAddress

from bmctl import release as releases
from bmctl.config.addresses import parse_pool_entry
from bmctl.config.model import ClusterConfig, Node
from bmctl.render.controlplane_lb import HAPROXY_HEALTH_PORT, MANIFEST_DIR, STATUS_DIR, TRACK_SCRIPT
from bmctl.render.engine import RenderedFile, render

BOOT_DIR = "/etc/bmctl/frr"              # bmctl's files FRR boots with (daemons, vtysh.conf, frr.conf)
CONF_DIR = "/var/lib/bmctl/frr/etc"      # FRR's /etc/frr: its live frr.conf (MetalLB's once it runs), frr.log
SOCKETS_DIR = "/var/lib/bmctl/frr/run"   # FRR's /var/run/frr: the vty sockets vtysh and MetalLB use
BOOT_MOUNT = "/etc/bmctl-frr"
MANIFEST = f"{MANIFEST_DIR}/frr.yaml"
VIP_STATUS = f"{STATUS_DIR}/vip.json"

# Session timers (MetalLB's BGPPeer keepaliveTime/holdTime) and BFD, the same in the boot file and
# in MetalLB's objects so that MetalLB's first reload changes no session. BFD: a dead node's routes
# go after 3 x 200 ms without its packets; FRR's default is 3 x 300 ms.
KEEPALIVE, HOLD = 1, 3
CONNECT_RETRY = 5  # seconds between attempts to (re)open a session (FRR's default: 120)
BFD = {"name": "bmctl-bfd", "receive": 200, "transmit": 200, "multiplier": 3}
# MetalLB numbers its outbound route-map entries 1, 2, ... per peer; the VIP's entry comes after.
ROUTE_MAP_SEQ = 1000
# MetalLB's inbound route-map per peer is one `deny 20`: bmctl's entry before it lets the peers'
# routes in (see learn_lines).
ROUTE_MAP_IN_SEQ = 10
LEARN_LIST = "bmctl-from-peers"
# Announcements to a peer pass the prefix-list HOLD_LIST-PEER; the vip-health container adds
# `seq 5 deny any` to it while the node cannot serve (see templates/bgp/vip-health.sh.j2).
HOLD_LIST = "bmctl-hold"
HOLD_CAP_SECONDS = 30  # a hold never outlasts this after the session is back
STEADY_ROUTES = f"{STATUS_DIR}/routes.steady"  # the node's destinations when last steady
STEADY_CHECKS = 3  # ... seen unchanged this many checks (seconds) in a row


def _peers(config: ClusterConfig) -> list[dict]:
    return [{"ip": p.ip, "asn": p.asn} for p in config.lb.bgpPeers]


def vip_lines(config: ClusterConfig) -> str:
    """FRR lines that send the control-plane VIP (a /32 on lo, present only while HAProxy answers)
    to every peer: in the boot file, and in MetalLB's bgpextras so its reloads keep them."""
    return render("bgp/vip.conf.j2", vip=str(IPAddress(config.lb.vips.controlPlaneVIP)), peers=_peers(config),
                  local_asn=config.lb.localASN, route_map_seq=ROUTE_MAP_SEQ).rstrip("\n")


def own_prefixes(config: ClusterConfig) -> list[str]:
    """The cluster's own IPv4 addresses, which no peer may route for it: the VIPs, the Service
    pools, the pod and Service CIDRs and every node's address (CIDRs, merged)."""
    nets: list[netaddr.IPNetwork] = []
    vips = config.lb.vips
    for vip in (vips.controlPlaneVIP, vips.ingressVIP):
        if vip:
            nets.append(netaddr.IPNetwork(f"{vip}/{IPAddress(vip).netmask_bits()}"))
    for pool in config.lb.addressPools:
        for entry in pool.addresses:
            nets += parse_pool_entry(entry).cidrs()
    network = config.spec.clusterNetwork
    for block in (*network.pods.cidrBlocks, *network.services.cidrBlocks):
        nets.append(netaddr.IPNetwork(block))
    nets += [netaddr.IPNetwork(f"{n.ip}/{IPAddress(n.ip).netmask_bits()}") for n in config.all_nodes]
    return [str(n) for n in netaddr.cidr_merge([n for n in nets if n.version == 4])]


def learn_lines(config: ClusterConfig) -> str:
    """FRR lines that install the routes the peers send (a default route, or the prefixes of the
    clients behind them) in the node's kernel, except any for the cluster's own addresses. The node
    then has a way back to every client that the peers send its way exactly while their sessions
    are up: a link that comes back without its configured routes gets them back with the sessions."""
    return render("bgp/learn.conf.j2", peers=_peers(config), own=own_prefixes(config), prefix_list=LEARN_LIST,
                  route_map_seq=ROUTE_MAP_IN_SEQ).rstrip("\n")


def hold_lines(config: ClusterConfig) -> str:
    """FRR lines that pass everything announced to each peer through the prefix-list
    HOLD_LIST-PEER (`permit any`; the vip-health container puts a `deny any` before it while this
    node cannot serve what it would announce)."""
    return render("bgp/hold.conf.j2", peers=_peers(config), local_asn=config.lb.localASN,
                  hold_list=HOLD_LIST).rstrip("\n")


def extra_lines(config: ClusterConfig) -> str:
    """bmctl's lines in every LB node's FRR, in the boot file and in MetalLB's bgpextras (so
    MetalLB's reloads keep them): the control-plane VIP out, the peers' routes in, the hold."""
    return "\n".join([vip_lines(config), learn_lines(config), hold_lines(config)])


def frr_conf(config: ClusterConfig, node: Node) -> str:
    return render("bgp/frr.conf.j2", cluster=config.name, node_ip=node.ip, hostname=f"bmctl-{node.ip}",
                  peers=_peers(config), local_asn=config.lb.localASN, keepalive=KEEPALIVE, hold=HOLD,
                  connect=CONNECT_RETRY, bfd=BFD, vip_lines=extra_lines(config))


def health_script(config: ClusterConfig) -> str:
    return render("bgp/vip-health.sh.j2", vip=str(IPAddress(config.lb.vips.controlPlaneVIP)),
                  health_port=HAPROXY_HEALTH_PORT, interval=TRACK_SCRIPT["interval"],
                  timeout=TRACK_SCRIPT["timeout"], fall=TRACK_SCRIPT["fall"], rise=TRACK_SCRIPT["rise"],
                  status_file=VIP_STATUS, hold_list=HOLD_LIST,
                  hold_cap=HOLD_CAP_SECONDS, routes_file=STEADY_ROUTES, stable=STEADY_CHECKS).rstrip("\n")


# The files bgp_node_files writes, in its order (boot files first, the static pod last).
BGP_NODE_PATHS = [f"{BOOT_DIR}/daemons", f"{BOOT_DIR}/vtysh.conf", f"{BOOT_DIR}/frr.conf", MANIFEST]


def bgp_node_files(config: ClusterConfig, node: Node) -> list[RenderedFile]:
    pod = render("bgp/frr.yaml.j2", cluster=config.name, image=releases.of(config).image("frr"),
                 boot_dir=BOOT_DIR, boot_mount=BOOT_MOUNT, conf_dir=CONF_DIR, sockets_dir=SOCKETS_DIR,
                 status_dir=STATUS_DIR, health=health_script(config))
    contents = [(render("bgp/daemons.j2"), 0o644), (render("bgp/vtysh.conf.j2"), 0o644),
                (frr_conf(config, node), 0o644), (pod, 0o600)]
    return [RenderedFile(path, text, mode=mode) for path, (text, mode) in zip(BGP_NODE_PATHS, contents)]
