"""Keepalived + HAProxy files for each load-balancer node (config -> files, nothing else)."""
from __future__ import annotations

import hashlib

from netaddr import IPAddress

from bmctl.config.model import APISERVER_PORT, ClusterConfig, Node
from bmctl import release as releases
from bmctl.render.engine import RenderedFile, render
from bmctl.render.facts import NodeFacts

KEEPALIVED_DIR = "/etc/keepalived"
HAPROXY_DIR = "/etc/haproxy"
MANIFEST_DIR = "/etc/kubernetes/manifests"
HAPROXY_CONTAINER_DIR = "/usr/local/etc/haproxy"
HAPROXY_HEALTH_PORT = 6445
CHECK_SCRIPT = f"{KEEPALIVED_DIR}/check_haproxy.sh"
# Where each LB pod's reloader writes the digest of the configuration its process runs with
# (bmctl waits for it after a change before touching the next node).
STATUS_DIR = "/var/lib/bmctl/lb"

# HAProxy timeouts: long enough that idle watches and `kubectl logs -f` are not cut.
TIMEOUTS = {"client": "24h", "server": "24h", "tunnel": "24h"}
BACKEND_CHECK = {"inter": "1s", "fall": 2, "rise": 2}
TRACK_SCRIPT = {"interval": 1, "timeout": 1, "fall": 2, "rise": 2}


def priority(config: ClusterConfig, node: Node) -> int:
    """Distinct VRRP priorities in the order of the LB node list (first = highest)."""
    addresses = [n.address for n in config.lb_nodes]
    return 200 - addresses.index(node.address)


def haproxy_cfg(config: ClusterConfig) -> str:
    vip = IPAddress(config.lb.vips.controlPlaneVIP)
    port = config.lb.ports.controlPlaneLBPort
    bind = f":::{port} v4v6" if vip.version == 6 else f"*:{port}"
    servers = [{"name": f"cp-{i + 1}", "address": f"[{n.ip}]" if ":" in n.ip else n.ip}
               for i, n in enumerate(config.control_plane_nodes)]
    return render("haproxy/haproxy.cfg.j2", cluster=config.name, bind=bind, health_port=HAPROXY_HEALTH_PORT,
                  timeouts=TIMEOUTS, servers=servers, apiserver_port=APISERVER_PORT,
                  check_inter=BACKEND_CHECK["inter"], check_fall=BACKEND_CHECK["fall"],
                  check_rise=BACKEND_CHECK["rise"])


def check_script() -> str:
    return render("keepalived/check_haproxy.sh.j2", health_port=HAPROXY_HEALTH_PORT,
                  timeout=TRACK_SCRIPT["timeout"])


def keepalived_conf(config: ClusterConfig, node: Node, facts: NodeFacts) -> str:
    vip = IPAddress(config.lb.vips.controlPlaneVIP)
    peers = [n.ip for n in config.lb_nodes if n.address != node.address]
    return render(
        "keepalived/keepalived.conf.j2",
        cluster=config.name,
        router_id=f"bmctl-{config.name}-{node.ip}".replace(":", "-"),
        instance=f"bmctl_{config.name}",
        interface=facts.interface,
        vrid=config.virtual_router_id,
        priority=priority(config, node),
        advert_int=f"{config.advert_interval:g}",
        unicast=config.lb.vrrp.unicast,
        node_ip=node.ip,
        peers=peers,
        vip=str(vip),
        vip_prefix=vip.netmask_bits(),
        check_script=CHECK_SCRIPT,
        check_interval=TRACK_SCRIPT["interval"],
        check_timeout=TRACK_SCRIPT["timeout"],
        check_fall=TRACK_SCRIPT["fall"],
        check_rise=TRACK_SCRIPT["rise"],
    )


def loaded_digest(*contents: str) -> str:
    """What the reloader writes to its status file: sha256 of the files' bytes, concatenated."""
    return hashlib.sha256("".join(contents).encode()).hexdigest()


def status_file(pod: str) -> str:
    return f"{STATUS_DIR}/{pod}.loaded"


def _reloader(name: str, files: list[str], command: str, signal: str, check: str, note: str,
              stop_signal: str = "") -> str:
    return render("static-pods/reload-on-change.sh.j2", name=name, files=files, command=command, signal=signal,
                  check=check, status_file=status_file(name), reload_note=note,
                  stop_signal=stop_signal).rstrip("\n")


# The files lb_node_files writes, in its order (configs first, static pod manifests last).
LB_NODE_PATHS = [f"{HAPROXY_DIR}/haproxy.cfg", CHECK_SCRIPT, f"{KEEPALIVED_DIR}/keepalived.conf",
                 f"{MANIFEST_DIR}/haproxy.yaml", f"{MANIFEST_DIR}/keepalived.yaml"]


def vip_holder_manifest(config: ClusterConfig) -> str:
    """The static pod that holds the VIP on an LB node (removed first when the node stops serving):
    Keepalived's in layer 2, FRR's in BGP mode."""
    if config.lb.type == "bgp":
        from bmctl.render.bgp import MANIFEST
        return MANIFEST
    return f"{MANIFEST_DIR}/keepalived.yaml"


def lb_node_paths(config: ClusterConfig) -> list[str]:
    """The paths lb_node_files writes on an LB node of this config, in its order."""
    if config.lb.type == "bgp":
        from bmctl.render.bgp import BGP_NODE_PATHS
        return [f"{HAPROXY_DIR}/haproxy.cfg", *BGP_NODE_PATHS[:-1], f"{MANIFEST_DIR}/haproxy.yaml", BGP_NODE_PATHS[-1]]
    return LB_NODE_PATHS


def lb_node_files(config: ClusterConfig, node: Node, facts: NodeFacts) -> list[RenderedFile]:
    """Every file bmctl writes on one LB node, in the order they must land.

    Configs first, static pod manifests last: the kubelet starts a pod as soon as its
    manifest appears, so the config it mounts must already be in place.
    """
    cfg = haproxy_cfg(config)
    container_cfg = f"{HAPROXY_CONTAINER_DIR}/haproxy.cfg"
    haproxy_run = _reloader("haproxy", [container_cfg], f"haproxy -W -db -f {container_cfg}", "USR2",
                            f"haproxy -c -q -f {container_cfg}",
                            "SIGUSR2: a new worker takes over the listening sockets",
                            # the official image's STOPSIGNAL (HAProxy's soft stop)
                            stop_signal="USR1")
    haproxy_pod = render("haproxy/haproxy.yaml.j2", cluster=config.name, image=releases.of(config).image("haproxy"),
                         health_port=HAPROXY_HEALTH_PORT, container_config_dir=HAPROXY_CONTAINER_DIR,
                         host_config_dir=HAPROXY_DIR, wrapper=haproxy_run, status_dir=STATUS_DIR)
    if config.lb.type == "bgp":  # the VIP goes to the routers over BGP (bmctl/render/bgp.py), no VRRP
        from bmctl.render.bgp import bgp_node_files
        files = {f.path: f for f in (RenderedFile(f"{HAPROXY_DIR}/haproxy.cfg", cfg),
                                     RenderedFile(f"{MANIFEST_DIR}/haproxy.yaml", haproxy_pod, mode=0o600),
                                     *bgp_node_files(config, node))}
        return [files[path] for path in lb_node_paths(config)]
    kconf = keepalived_conf(config, node, facts)
    script = check_script()
    kconf_path = f"{KEEPALIVED_DIR}/keepalived.conf"
    keepalived_run = _reloader("keepalived", [kconf_path, CHECK_SCRIPT],
                               f"keepalived --dont-fork --log-console --vrrp --use-file={kconf_path}", "HUP", "",
                               "SIGHUP: the VRRP instance keeps its state, a master stays master")
    keepalived_pod = render("keepalived/keepalived.yaml.j2", cluster=config.name, image=releases.of(config).image("keepalived"),
                            container_config_dir=KEEPALIVED_DIR, host_config_dir=KEEPALIVED_DIR,
                            wrapper=keepalived_run, status_dir=STATUS_DIR)
    contents = [(cfg, 0o644), (script, 0o755), (kconf, 0o644), (haproxy_pod, 0o600), (keepalived_pod, 0o600)]
    return [RenderedFile(path, text, mode=mode) for path, (text, mode) in zip(LB_NODE_PATHS, contents)]
