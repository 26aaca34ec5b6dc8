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

from netaddr import IPAddress

from bmctl import release as releases
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


def _peers(config: ClusterConfig) -> list[dict]:
    return [{"ip": p.ip, "asn": p.asn} for p in config.lb.bgpPeers]


def vip_lines(config: ClusterConfig) -> str:
    """FRR lines that send the control-plane VIP (a /32 on lo, present only while HAProxy answers)
    to every peer: in the boot file, and in MetalLB's bgpextras so its reloads keep them."""
    return render("bgp/vip.conf.j2", vip=str(IPAddress(config.lb.vips.controlPlaneVIP)), peers=_peers(config),
                  local_asn=config.lb.localASN, route_map_seq=ROUTE_MAP_SEQ).rstrip("\n")


def frr_conf(config: ClusterConfig, node: Node) -> str:
    return render("bgp/frr.conf.j2", cluster=config.name, node_ip=node.ip, hostname=f"bmctl-{node.ip}",
                  peers=_peers(config), local_asn=config.lb.localASN, keepalive=KEEPALIVE, hold=HOLD,
                  connect=CONNECT_RETRY, bfd=BFD, vip_lines=vip_lines(config))


def health_script(config: ClusterConfig) -> str:
    return render("bgp/vip-health.sh.j2", vip=str(IPAddress(config.lb.vips.controlPlaneVIP)),
                  health_port=HAPROXY_HEALTH_PORT, interval=TRACK_SCRIPT["interval"],
                  timeout=TRACK_SCRIPT["timeout"], fall=TRACK_SCRIPT["fall"], rise=TRACK_SCRIPT["rise"],
                  status_file=VIP_STATUS).rstrip("\n")


# The files bgp_node_files writes, in its order (boot files first, the static pod last).
BGP_NODE_PATHS = [f"{BOOT_DIR}/daemons", f"{BOOT_DIR}/vtysh.conf", f"{BOOT_DIR}/frr.conf", MANIFEST]


def bgp_node_files(config: ClusterConfig, node: Node) -> list[RenderedFile]:
    pod = render("bgp/frr.yaml.j2", cluster=config.name, image=releases.of(config).image("frr"),
                 boot_dir=BOOT_DIR, boot_mount=BOOT_MOUNT, conf_dir=CONF_DIR, sockets_dir=SOCKETS_DIR,
                 status_dir=STATUS_DIR, health=health_script(config))
    contents = [(render("bgp/daemons.j2"), 0o644), (render("bgp/vtysh.conf.j2"), 0o644),
                (frr_conf(config, node), 0o644), (pod, 0o600)]
    return [RenderedFile(path, text, mode=mode) for path, (text, mode) in zip(BGP_NODE_PATHS, contents)]
