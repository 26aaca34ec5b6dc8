"""What `bmctl update loadbalancer` would change: the applied config against the desired one.

Pure comparison of two loaded configs (no SSH, no Kubernetes): the changes it may apply, grouped by
what they do, and every change SPEC.md forbids after create, as findings with the field path.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from bmctl.config.loader import locate
from bmctl.config.model import ClusterConfig, Node
from bmctl.config.problems import ConfigError, Problem
from bmctl.config.rules import LB, Finding

RECREATE = "or, to change it, `bmctl reset cluster` and create the cluster again"

# Groups, in the order the update applies them.
GROUPS = {
    "pools-add": "Address pools to add",
    "pools-change": "Address pool settings to change",
    "bgp-peers": "BGP peers to add, change or remove (MetalLB BGPPeer objects: sessions from every LB node)",
    "lb-remove": "Load-balancer nodes to remove (speaker, Keepalived and HAProxy stopped; label removed)",
    "lb-add": "Load-balancer nodes to add (joined if needed, labelled, speaker, Keepalived and HAProxy)",
    "backends": "Control-plane nodes in the HAProxy backends",
    "vrrp": "Keepalived settings",
    "ingress": "Bundled ingress (Traefik on the ingress VIP)",
}


@dataclass(frozen=True)
class Change:
    group: str
    path: tuple
    text: str


@dataclass
class ConfigChanges:
    applied: ClusterConfig
    desired: ClusterConfig
    changes: list[Change] = field(default_factory=list)
    refused: list[Finding] = field(default_factory=list)

    @property
    def lb_added(self) -> list[Node]:
        old = {n.address for n in self.applied.lb_nodes}
        return [n for n in self.desired.lb_nodes if n.address not in old]

    @property
    def lb_removed(self) -> list[Node]:
        new = {n.address for n in self.desired.lb_nodes}
        return [n for n in self.applied.lb_nodes if n.address not in new]

    @property
    def lb_kept(self) -> list[Node]:
        old = {n.address for n in self.applied.lb_nodes}
        return [n for n in self.desired.lb_nodes if n.address in old]

    def grouped(self) -> dict[str, list[Change]]:
        out: dict[str, list[Change]] = {}
        for key in GROUPS:
            items = [c for c in self.changes if c.group == key]
            if items:
                out[key] = items
        return out



def _immutable(out: list[Finding], path: tuple, what: str, old: object, new: object) -> None:
    if old != new:
        out.append(Finding(path, f"{what} cannot change after create (applied: {_show(old)}, now: {_show(new)})",
                           f"set it back to {_show(old)}, {RECREATE}"))


def _show(value: object) -> str:
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(str(v) for v in value) + "]"
    return str(value)


def node_settings(config: ClusterConfig) -> dict[tuple, object]:
    """Google's node settings (kubelet flags, taints, labels, API server flags), keyed by (path, what)."""
    spec = config.spec
    out: dict[tuple, object] = {
        (("spec", "nodeConfig", "podDensity", "maxPodsPerNode"), "maxPodsPerNode"): spec.nodeConfig.podDensity,
        (("spec", "controlPlane", "apiServerCertExtraSANs"), "apiServerCertExtraSANs"):
            spec.controlPlane.apiServerCertExtraSANs,
        (("spec", "authentication", "oidc"), "authentication.oidc"): spec.authentication.oidc,
    }
    pools = [(("spec", "controlPlane", "nodePoolSpec"), "the control-plane pool's", spec.controlPlane.nodePoolSpec),
             ((*LB, "nodePoolSpec"), "the load-balancer pool's", config.lb.nodePoolSpec),
             *((("spec",), f"node pool {p.metadata.name!r}'s", p.spec) for p in config.node_pools)]
    for path, whose, pool in pools:
        for key in ("kubeletConfig", "taints", "labels"):
            out[(path + (key,), f"{whose} {key}")] = getattr(pool, key, None)
    return out


def compare(applied: ClusterConfig, desired: ClusterConfig) -> ConfigChanges:
    result = ConfigChanges(applied, desired)
    refused, changes = result.refused, result.changes
    a_lb, d_lb = applied.lb, desired.lb

    if applied.name != desired.name:
        refused.append(Finding(("metadata", "name"),
                               f"this file describes cluster {desired.name!r}, but the applied config is cluster "
                               f"{applied.name!r}", f"use the config of cluster {applied.name!r}"))
        return result

    _immutable(refused, (*LB, "mode"), "spec.loadBalancer.mode", a_lb.mode, d_lb.mode)
    _immutable(refused, (*LB, "type"), "spec.loadBalancer.type", a_lb.type, d_lb.type)
    _immutable(refused, (*LB, "localASN"), "the cluster's AS number (every BGP session would restart)",
               a_lb.localASN, d_lb.localASN)
    old_peers = {p.ip: p for p in a_lb.bgpPeers}
    new_peers = {p.ip: (i, p) for i, p in enumerate(d_lb.bgpPeers)}
    for ip, (i, peer) in new_peers.items():
        old = old_peers.get(ip)
        if old is None:
            changes.append(Change("bgp-peers", (*LB, "bgpPeers", i), f"add peer {ip} (AS {peer.asn})"))
        elif old != peer:
            changes.append(Change("bgp-peers", (*LB, "bgpPeers", i), f"peer {ip}: AS {old.asn} -> {peer.asn}"
                                  if old.asn != peer.asn else f"peer {ip}: controlPlaneNodes "
                                  f"{_show(old.controlPlaneNodes)} -> {_show(peer.controlPlaneNodes)}"))
    for ip, peer in old_peers.items():
        if ip not in new_peers:
            changes.append(Change("bgp-peers", (*LB, "bgpPeers"), f"remove peer {ip} (AS {peer.asn})"))
    _immutable(refused, (*LB, "ports", "controlPlaneLBPort"), "the control-plane LB port",
               a_lb.ports.controlPlaneLBPort, d_lb.ports.controlPlaneLBPort)
    _immutable(refused, (*LB, "vips", "controlPlaneVIP"), "the control-plane VIP",
               a_lb.vips.controlPlaneVIP, d_lb.vips.controlPlaneVIP)
    _immutable(refused, (*LB, "vips", "ingressVIP"), "the ingress VIP", a_lb.vips.ingressVIP, d_lb.vips.ingressVIP)
    _immutable(refused, (*LB, "vrrp", "virtualRouterID"), "the VRRP router id (two ids would mean two routers)",
               applied.virtual_router_id, desired.virtual_router_id)
    _immutable(refused, (*LB, "vrrp", "unicast"), "VRRP unicast (nodes on either side would not hear each other)",
               a_lb.vrrp.unicast, d_lb.vrrp.unicast)
    _immutable(refused, (*LB, "vrrp", "interface"), "the VRRP interface", a_lb.vrrp.interface, d_lb.vrrp.interface)
    if applied.advert_interval != desired.advert_interval:
        changes.append(Change("vrrp", (*LB, "vrrp", "advertInterval"),
                              f"advert interval {applied.advert_interval:g} s -> {desired.advert_interval:g} s"))

    if applied.runs_ingress != desired.runs_ingress:
        changes.append(Change("ingress", ("spec", "clusterNetwork", "bundledIngress"),
                              "turn the bundled ingress on" if desired.runs_ingress else
                              "turn the bundled ingress off (namespace bmctl-ingress deleted, the ingress VIP "
                              "released; the Gateway API CRDs and your routes stay)"))
    elif desired.runs_ingress and a_lb.ingress.tlsSecret != d_lb.ingress.tlsSecret:
        changes.append(Change("ingress", (*LB, "ingress", "tlsSecret"),
                              f"TLS Secret on port 443: {a_lb.ingress.tlsSecret or 'self-signed'} -> "
                              f"{d_lb.ingress.tlsSecret or 'self-signed'}"))

    # Settings outside the load balancer are not this command's business: refuse rather than
    # record a config as applied when part of it was not.
    spec_a, spec_d = applied.spec, desired.spec
    for key, what in (("type", "spec.type"), ("kubernetesVersion", "spec.kubernetesVersion")):
        if getattr(spec_a, key) != getattr(spec_d, key):
            refused.append(Finding(("spec", key), f"{what} changed ({_show(getattr(spec_a, key))} -> "
                                   f"{_show(getattr(spec_d, key))}); `update loadbalancer` changes only "
                                   "spec.loadBalancer and the control-plane backends",
                                   f"set it back to {_show(getattr(spec_a, key))}"))
    net_a, net_d = spec_a.clusterNetwork, spec_d.clusterNetwork
    for key in ("pods", "services"):
        _immutable(refused, ("spec", "clusterNetwork", key, "cidrBlocks"), f"the {key[:-1]} CIDR blocks",
                   list(getattr(net_a, key).cidrBlocks), list(getattr(net_d, key).cidrBlocks))
    _immutable(refused, ("spec", "clusterNetwork", "kubeProxyMode"), "kube-proxy's mode",
               net_a.kubeProxyMode, net_d.kubeProxyMode)
    _immutable(refused, ("spec", "clusterNetwork", "cni"), "the pod network (cni)", net_a.cni, net_d.cni)
    before = node_settings(applied)
    for (path, what), value in node_settings(desired).items():
        if before.get((path, what)) != value:
            refused.append(Finding(path, f"{what} changed; `update loadbalancer` does not reconfigure nodes",
                                   f"set it back as applied, {RECREATE}"))
    workers_a = {n.address for n in applied.worker_nodes}
    workers_d = {n.address for n in desired.worker_nodes}
    if workers_a != workers_d:
        diff = sorted(workers_a ^ workers_d)
        refused.append(Finding(("spec",), f"worker nodes changed ({', '.join(diff)}); `update loadbalancer` does "
                               "not add or remove workers", "run `bmctl create cluster` to join new workers, "
                               "and keep the NodePool documents as applied here"))

    # Address pools: added freely; never removed; name/addresses fixed; the two booleans mutable.
    old_pools = {p.name: p for p in a_lb.addressPools}
    new_names = {p.name for p in d_lb.addressPools}
    for name in old_pools:
        if name not in new_names:
            refused.append(Finding((*LB, "addressPools"), f"address pool {name!r} was removed (pools may be added, "
                                   "never removed: Services may hold its addresses)",
                                   f"put pool {name!r} back with its addresses "
                                   f"{_show(old_pools[name].addresses)}"))
    for i, pool in enumerate(d_lb.addressPools):
        path = (*LB, "addressPools", i)
        old = old_pools.get(pool.name)
        if old is None:
            flags = [f for f, on in (("avoidBuggyIPs", pool.avoidBuggyIPs), ("manualAssign", pool.manualAssign)) if on]
            changes.append(Change("pools-add", path, f"pool {pool.name}: {', '.join(pool.addresses)}"
                                  + (f" ({', '.join(flags)})" if flags else "")))
            continue
        if list(old.addresses) != list(pool.addresses):
            refused.append(Finding((*path, "addresses"),
                                   f"the addresses of pool {pool.name!r} cannot change after create (applied: "
                                   f"{_show(old.addresses)}, now: {_show(pool.addresses)})",
                                   f"set them back and add a new pool for the new addresses, {RECREATE}"))
        for flag in ("avoidBuggyIPs", "manualAssign"):
            before, after = getattr(old, flag), getattr(pool, flag)
            if before != after:
                changes.append(Change("pools-change", (*path, flag),
                                      f"pool {pool.name}: {flag} {_show(before)} -> {_show(after)}"))

    # LB nodes: the section cannot appear or vanish; nodes come and go; k8sIP fixed.
    if a_lb.nodePoolSpec is None and d_lb.nodePoolSpec is not None:
        refused.append(Finding((*LB, "nodePoolSpec"), "a load-balancer node pool cannot be added after create (the "
                               "control-plane nodes are this cluster's load-balancer nodes)",
                               f"remove spec.loadBalancer.nodePoolSpec, {RECREATE}"))
    elif a_lb.nodePoolSpec is not None and d_lb.nodePoolSpec is None:
        refused.append(Finding((*LB,), "spec.loadBalancer.nodePoolSpec was removed (that would move the "
                               "load balancers to the control-plane nodes)",
                               "put the section back; to change LB nodes, edit its node list"))
    else:
        old_nodes = {n.address: n for n in applied.lb_nodes}
        base = (*LB, "nodePoolSpec", "nodes") if d_lb.nodePoolSpec is not None else \
            ("spec", "controlPlane", "nodePoolSpec", "nodes")
        for i, node in enumerate(desired.lb_nodes):
            old = old_nodes.get(node.address)
            if old is not None and old.ip != node.ip:
                refused.append(Finding((*base, i, "k8sIP"), f"the k8sIP of load-balancer node {node.address} "
                                       f"cannot change after create (applied: {old.ip}, now: {node.ip})",
                                       f"set it back to {old.ip}, or remove the node in one update and add it "
                                       "back with the new address in another"))
        for node in result.lb_added:
            i = [n.address for n in desired.lb_nodes].index(node.address)
            changes.append(Change("lb-add", (*base, i), f"{node.address}" +
                                  (f" (node IP {node.ip})" if node.ip != node.address else "")))
        for node in result.lb_removed:
            changes.append(Change("lb-remove", base, node.address))
        if not desired.lb_nodes:
            refused.append(Finding(base, "no load-balancer node would be left", "keep at least one"))

    old_cp = [n.ip for n in applied.control_plane_nodes]
    new_cp = [n.ip for n in desired.control_plane_nodes]
    cp_path = ("spec", "controlPlane", "nodePoolSpec", "nodes")
    for ip in new_cp:
        if ip not in old_cp:
            changes.append(Change("backends", cp_path, f"add backend {ip}:6444"))
    for ip in old_cp:
        if ip not in new_cp:
            changes.append(Change("backends", cp_path, f"remove backend {ip}:6444"))
    if applied.control_plane_nodes and desired.control_plane_nodes and \
            applied.control_plane_nodes[0].address != desired.control_plane_nodes[0].address:
        refused.append(Finding((*cp_path, 0), "the first control-plane node (the one kubeadm initialized) "
                               f"changed from {applied.control_plane_nodes[0].address}",
                               "keep it first in the list"))
    return result


def refusal(config: ClusterConfig, refused: list[Finding], context: str, fix: str) -> ConfigError:
    """The error for changes a running cluster cannot take: each one at its line in the file, then
    one closing problem (`context`, how many, nothing changed, and `fix`)."""
    problems = locate(config, refused)
    return ConfigError(problems + [Problem(
        "", f"{context}{len(problems)} change(s) above cannot be made to a running cluster; nothing was changed",
        fix, config.path)])
