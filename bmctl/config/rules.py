"""Validation rules that can be decided from the file alone (SPEC.md "Validation rules").

Each rule yields Findings: a path inside one document, what is wrong, and the fix.
Subnet membership needs the nodes and is checked by preflight.
"""
from __future__ import annotations

import os
import re
from typing import Iterator, NamedTuple

import netaddr

from bmctl.config import model
from bmctl.config.registries import EndpointError, docker_credentials, parse_endpoint, parse_proxy, valid_host
from bmctl.config.source import format_path
from bmctl.config.addresses import (AddressError, as_range, contains, find_overlaps, intersects,
                                    is_buggy, parse_cidr, parse_ip, parse_pool_entry, usable_count)

DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
UNIX_USER = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
IFNAME = re.compile(r"^[A-Za-z0-9_.-]{1,15}$")
K8S_VERSION = re.compile(r"^v1\.[0-9]{1,3}\.[0-9]{1,3}$")
RESERVED_PORTS = {model.APISERVER_PORT: "kube-apiserver", model.MEMBERLIST_PORT: "MetalLB memberlist",
                  10250: "kubelet", 2379: "etcd", 2380: "etcd"}

LB = ("spec", "loadBalancer")
INGRESS_POOL = "bmctl-ingress-vip"  # the MetalLB pool bmctl makes for the ingress VIP


class Finding(NamedTuple):
    path: tuple
    message: str
    fix: str
    severity: str = "error"
    doc_index: int | None = None


def _ip(value: str, path: tuple, out: list[Finding]) -> netaddr.IPAddress | None:
    try:
        return parse_ip(value)
    except AddressError as exc:
        out.append(Finding(path, exc.message, exc.fix))
        return None


def check_cluster(config: model.ClusterConfig, expected_name: str | None) -> list[Finding]:
    out: list[Finding] = []
    name = config.name
    if not DNS_LABEL.match(name) or len(name) > 50:
        out.append(Finding(("metadata", "name"), f"{name!r} is not a valid cluster name",
                           "use at most 50 lowercase letters, digits and '-', starting and ending "
                           "with a letter or digit"))
    elif expected_name is not None and name != expected_name:
        out.append(Finding(("metadata", "name"), f"the cluster is named {name!r}, but -c asked for "
                           f"{expected_name!r}", f"set metadata.name to {expected_name!r} or pass -c {name}"))
    if not K8S_VERSION.match(config.spec.kubernetesVersion):
        out.append(Finding(("spec", "kubernetesVersion"),
                           f"{config.spec.kubernetesVersion!r} is not a Kubernetes version",
                           f"write it like {model.DEFAULT_KUBERNETES_VERSION!r}"))
    if config.spec.clusterNetwork.kubeProxyMode == "ipvs":
        out.append(Finding(("spec", "clusterNetwork", "kubeProxyMode"),
                           "kube-proxy's ipvs mode is deprecated upstream since Kubernetes v1.35 (disabled by "
                           "default in a later release, then removed)",
                           "use nftables (kubeProxyMode: nftables, Linux 5.13 or later) or iptables; the mode "
                           "is fixed at create, so a running cluster keeps ipvs until it is rebuilt", "warning"))
    if config.spec.nodeConfig.allowCgroupV1:
        out.append(Finding(("spec", "nodeConfig", "allowCgroupV1"),
                           "Kubernetes runs on cgroup v1 nodes, which upstream deprecated: from v1.35 the "
                           "kubelet refuses them unless told otherwise, and a later release drops them",
                           "boot the nodes with cgroup v2 (kernel parameter systemd.unified_cgroup_hierarchy=1) "
                           "and remove allowCgroupV1", "warning"))
    out.extend(_check_network(config))
    out.extend(_check_load_balancer(config))
    out.extend(_check_nodes_settings(config))
    out.extend(_check_node_software(config, os.path.dirname(os.path.abspath(config.path)) if config.path else None))
    user = config.spec.nodeAccess.loginUser
    if not UNIX_USER.match(user):
        out.append(Finding(("spec", "nodeAccess", "loginUser"), f"{user!r} is not a valid login name",
                           "use a Unix user name (lowercase letters, digits, '_' and '-') that has "
                           "passwordless sudo on every node"))
    return out


def check_header(header: model.Header, base: str | None = None) -> list[Finding]:
    """`base`: the config file's folder (relative paths in the header are relative to it)."""
    out: list[Finding] = []
    key = header.sshPrivateKeyPath
    if key is not None and not os.path.isfile(os.path.expanduser(key)):
        out.append(Finding(("sshPrivateKeyPath",), f"no file at {key!r}",
                           "point sshPrivateKeyPath at the private key that logs in to the nodes "
                           "(preflight will fail without it unless an SSH agent holds the key)", "warning"))
    if header.bundlePath is not None and not os.path.isfile(model.workstation_path(header.bundlePath, base)):
        out.append(Finding(("bundlePath",), f"no bundle at {header.bundlePath!r}",
                           "build one with `bmctl bundle build --kubernetes "
                           f"{model.DEFAULT_KUBERNETES_VERSION}` and point bundlePath at it (relative paths are "
                           "relative to the config file)"))
    seen: dict[str, int] = {}
    for i, mirror in enumerate(header.registryMirrors):
        path = ("registryMirrors", i)
        try:
            endpoint = parse_endpoint(mirror.endpoint)
        except EndpointError as exc:
            out.append(Finding(path + ("endpoint",), exc.message, exc.fix))
            continue
        out += _registry_files(path, endpoint.host, endpoint.scheme, mirror.caCertPath,
                               mirror.pullCredentialConfigPath, base)
        for j, host in enumerate(mirror.hosts or ["docker.io"]):
            if mirror.hosts and not valid_host(host):
                out.append(Finding(path + ("hosts", j), f"{host!r} is not a registry host",
                                   "write the registry's host as images name it, e.g. registry.k8s.io or docker.io"))
            elif host in seen:
                out.append(Finding(path + (("hosts", j) if mirror.hosts else ("endpoint",)),
                                   f"{host} is mirrored by registryMirrors[{seen[host]}] already",
                                   "list each host under one mirror only (containerd tries one mirror list per "
                                   "host; put the mirrors of one host in order under one entry)"))
            else:
                seen[host] = i
    return out


def _registry_files(path: tuple, host: str, scheme: str, ca: str | None, creds: str | None,
                    base: str | None) -> list[Finding]:
    """caCertPath and pullCredentialConfigPath of a mirror or private registry."""
    out: list[Finding] = []
    if ca is not None:
        file = model.workstation_path(ca, base)
        if scheme == "http":
            out.append(Finding(path + ("caCertPath",), "a CA certificate for a plain-HTTP (http://) endpoint",
                               "use an https endpoint, or remove caCertPath"))
        elif not os.path.isfile(file):
            out.append(Finding(path + ("caCertPath",), f"no file at {ca!r}",
                               "point caCertPath at the registry's CA certificate (PEM) on this workstation"))
        elif b"-----BEGIN CERTIFICATE-----" not in open(file, "rb").read(1 << 20):
            out.append(Finding(path + ("caCertPath",), f"{ca!r} holds no PEM certificate",
                               "point caCertPath at the CA certificate in PEM form (-----BEGIN CERTIFICATE-----)"))
    if creds is not None:
        file = model.workstation_path(creds, base)
        if not os.path.isfile(file):
            out.append(Finding(path + ("pullCredentialConfigPath",), f"no file at {creds!r}",
                               "point it at a Docker config.json on this workstation that holds the "
                               "registry's credential (`docker login HOST` writes one)"))
        else:
            try:
                found = docker_credentials(file, host)
            except EndpointError as exc:
                out.append(Finding(path + ("pullCredentialConfigPath",), exc.message, exc.fix))
            else:
                if found is None:
                    out.append(Finding(path + ("pullCredentialConfigPath",), f"{creds!r} has no credential for {host}",
                                       f"add auths.\"{host}\" to it (`docker login {host}` does)"))
    return out


def _check_node_software(config: model.ClusterConfig, base: str | None) -> list[Finding]:
    """Google's privateRegistries and proxy."""
    out: list[Finding] = []
    for i, reg in enumerate(config.spec.nodeConfig.privateRegistries):
        path = ("spec", "nodeConfig", "privateRegistries", i)
        if not valid_host(reg.host):
            out.append(Finding(path + ("host",), f"{reg.host!r} is not a registry host",
                               "write HOST or HOST:PORT as the images name it, e.g. registry.example.com:5000"))
            continue
        out += _registry_files(path, reg.host, "https", reg.caCertPath, reg.pullCredentialConfigPath, base)
    proxy = config.spec.proxy
    if proxy is not None:
        try:
            parse_proxy(proxy.url)
        except EndpointError as exc:
            out.append(Finding(("spec", "proxy", "url"), exc.message, exc.fix))
        for i, entry in enumerate(proxy.noProxy):
            if not entry or any(c in entry for c in " ,\"'\n\t"):
                out.append(Finding(("spec", "proxy", "noProxy", i), f"{entry!r} is not a host, domain or CIDR",
                                   "write one host, .domain, IP or CIDR per entry (no spaces or commas)"))
    return out


def _cidrs(config: model.ClusterConfig) -> Iterator[tuple[tuple, netaddr.IPNetwork | None, Finding | None]]:
    """Each pod/service CIDR block: (path, parsed block or None, the error if it did not parse)."""
    net = config.spec.clusterNetwork
    for kind, blocks in (("pods", net.pods), ("services", net.services)):
        for i, text in enumerate(blocks.cidrBlocks):
            path = ("spec", "clusterNetwork", kind, "cidrBlocks", i)
            try:
                yield path, parse_cidr(text), None
            except AddressError as exc:
                yield path, None, Finding(path, exc.message, exc.fix)


def _check_network(config: model.ClusterConfig) -> list[Finding]:
    out: list[Finding] = []
    parsed = []
    for path, net, err in _cidrs(config):
        if err is not None:
            out.append(err)
        else:
            parsed.append((as_range(net), path))
    for a, b in find_overlaps(parsed):
        out.append(Finding(b, f"overlaps {format_path(a)}", "give pods and services separate, non-overlapping "
                           "CIDR blocks"))
    return out


ASN_RANGE = (1, 4294967294)  # 0 and 4294967295 (AS_TRANS's neighbour, RFC 7300) are reserved
AS_TRANS = 23456  # RFC 6793: stands in for a 4-byte ASN to old speakers, never a real AS


def _check_bgp(config: model.ClusterConfig) -> list[Finding]:
    """loadBalancer.type: bgp (Google's fields). What bmctl checks from the file: the ASNs, the peers
    (an address that is no node, VIP or pool address; each once; controlPlaneNodes naming control-plane
    nodes), and that bundled mode is on. That the pools lie outside the LB nodes' subnet (a routed
    pool is advertised, not answered for on the segment) and that each peer answers on TCP 179 need
    the nodes: preflight checks them."""
    out: list[Finding] = []
    lb = config.lb
    if lb.mode != "bundled":
        out.append(Finding(LB + ("type",), "type: bgp is a setting of bundled load balancing",
                           "set mode: bundled, or remove type, localASN and bgpPeers"))
        return out
    if lb.localASN is None:
        out.append(Finding(LB + ("localASN",), "BGP load balancing needs the cluster's own AS number",
                           "set localASN, e.g. a private ASN from 64512-65534 or 4200000000-4294967294"))
    for key, asn in (("localASN", lb.localASN), *((f"bgpPeers[{i}].asn", p.asn) for i, p in enumerate(lb.bgpPeers))):
        if asn is None:
            continue
        path = LB + ((key,) if key == "localASN" else ("bgpPeers", int(key[9:key.index("]")]), "asn"))
        if not ASN_RANGE[0] <= asn <= ASN_RANGE[1] or asn == AS_TRANS:
            out.append(Finding(path, f"{asn} is not a usable AS number",
                               "use 1 to 4294967294 except 23456 (AS_TRANS); private ASNs are 64512-65534 and "
                               "4200000000-4294967294"))
    if not lb.bgpPeers:
        out.append(Finding(LB + ("bgpPeers",), "BGP load balancing needs at least one peer",
                           "add bgpPeers: [{ip: ROUTER_IP, asn: ROUTER_ASN}] (the routers the LB nodes peer with)"))
    nodes = {n.address for n in config.all_nodes} | {n.ip for n in config.all_nodes}
    cps = {n.address for n in config.control_plane_nodes}
    seen: dict[str, int] = {}
    pools = []
    for pool in lb.addressPools:
        for text in pool.addresses:
            try:
                pools.append(parse_pool_entry(text))
            except AddressError:
                pass
    for i, peer in enumerate(lb.bgpPeers):
        path = LB + ("bgpPeers", i)
        ip = _ip(peer.ip, path + ("ip",), out)
        if ip is None:
            continue
        if str(ip) in nodes:
            out.append(Finding(path + ("ip",), f"{ip} is a node of this cluster",
                               "name the router's address: nodes do not peer with each other"))
        elif str(ip) in (lb.vips.controlPlaneVIP, lb.vips.ingressVIP) or any(contains(r, ip) for r in pools):
            out.append(Finding(path + ("ip",), f"{ip} is a VIP or a pool address of this cluster",
                               "name the router's own address"))
        if str(ip) in seen:
            out.append(Finding(path + ("ip",), f"{ip} is already bgpPeers[{seen[str(ip)]}]",
                               "list each router once"))
        seen.setdefault(str(ip), i)
        for j, node in enumerate(peer.controlPlaneNodes):
            if node not in cps:
                out.append(Finding(path + ("controlPlaneNodes", j), f"{node} is not a control-plane node address",
                                   "list addresses of spec.controlPlane.nodePoolSpec.nodes, or leave "
                                   "controlPlaneNodes out (every control-plane node)"))
    return out


def _check_load_balancer(config: model.ClusterConfig) -> list[Finding]:
    out: list[Finding] = []
    lb = config.lb
    if lb.type == "bgp":
        out.extend(_check_bgp(config))
    elif lb.localASN is not None or lb.bgpPeers:
        key = "localASN" if lb.localASN is not None else "bgpPeers"
        out.append(Finding(LB + (key,), f"{key} is for BGP load balancing, but type is {lb.type!r}",
                           "remove localASN and bgpPeers (layer 2 needs no router)"))
    port = lb.ports.controlPlaneLBPort
    if not 1 <= port <= 65535:
        out.append(Finding(LB + ("ports", "controlPlaneLBPort"), f"{port} is not a TCP port",
                           "use a port between 1 and 65535; 443 is usual"))
    elif port in RESERVED_PORTS and lb.mode == "bundled":  # manual: the port is on the external LB
        out.append(Finding(LB + ("ports", "controlPlaneLBPort"),
                           f"port {port} is used by {RESERVED_PORTS[port]} on the nodes",
                           "use another port for the API VIP, e.g. 443"))

    cp_vip = _ip(lb.vips.controlPlaneVIP, LB + ("vips", "controlPlaneVIP"), out)
    ingress_vip = None
    if lb.vips.ingressVIP is not None:
        ingress_vip = _ip(lb.vips.ingressVIP, LB + ("vips", "ingressVIP"), out)
        if config.spec.type == "admin":
            out.append(Finding(LB + ("vips", "ingressVIP"), "admin clusters take no ingress VIP",
                               "remove ingressVIP (admin clusters run no ingress)"))
        if cp_vip is not None and ingress_vip is not None and cp_vip == ingress_vip:
            out.append(Finding(LB + ("vips", "ingressVIP"), "is the same address as controlPlaneVIP",
                               "give the ingress Service its own address from an address pool"))

    vrrp = lb.vrrp
    if vrrp.virtualRouterID is not None and not 1 <= vrrp.virtualRouterID <= 255:
        out.append(Finding(LB + ("vrrp", "virtualRouterID"), f"{vrrp.virtualRouterID} is out of range",
                           "use a VRRP router id between 1 and 255, or leave it out to derive one "
                           "from the cluster name"))
    if vrrp.advertInterval is not None and not 0.01 <= vrrp.advertInterval <= 40.95:
        out.append(Finding(LB + ("vrrp", "advertInterval"), f"{vrrp.advertInterval} s is out of range",
                           "VRRPv3 adverts go from 0.01 to 40.95 seconds; leave it out for bmctl's "
                           "measured default"))
    if vrrp.interface is not None and not IFNAME.match(vrrp.interface):
        out.append(Finding(LB + ("vrrp", "interface"), f"{vrrp.interface!r} is not an interface name",
                           "use the name `ip link` shows (at most 15 letters, digits, '.', '_' or '-'), "
                           "or leave it out to use the interface that holds the node IP"))

    tls = lb.ingress.tlsSecret
    if tls is not None:
        if not config.runs_ingress:
            why = ("spec.clusterNetwork.bundledIngress is false" if not config.spec.clusterNetwork.bundledIngress
                   else "admin clusters run no ingress" if config.spec.type == "admin"
                   else "the load balancer is manual" if lb.mode == "manual" else "the cluster has no ingressVIP")
            out.append(Finding(LB + ("ingress", "tlsSecret"), f"names the bundled ingress's TLS Secret, but bmctl "
                               f"deploys no ingress on this cluster ({why})",
                               "remove spec.loadBalancer.ingress, or set vips.ingressVIP (and leave bundledIngress "
                               "on) to get the bundled ingress"))
        elif not DNS_SUBDOMAIN.match(tls) or len(tls) > 253:
            out.append(Finding(LB + ("ingress", "tlsSecret"), f"{tls!r} is not a Secret name",
                               "write the name of a kubernetes.io/tls Secret in namespace bmctl-ingress: lower-case "
                               "letters, digits, '-' and '.', starting and ending with a letter or digit"))

    if lb.mode == "manual":
        if lb.addressPools:
            out.append(Finding(LB + ("addressPools",), "manual load balancing takes no address pools",
                               "remove addressPools, or set mode: bundled to let bmctl run MetalLB"))
        if lb.nodePoolSpec is not None:
            out.append(Finding(LB + ("nodePoolSpec",), "manual load balancing runs no load-balancer nodes",
                               "remove nodePoolSpec, or set mode: bundled"))
        return out

    if config.spec.type == "admin" and lb.addressPools:
        out.append(Finding(LB + ("addressPools",), "admin clusters take no address pools (Google's rule: an admin "
                           "cluster runs no LoadBalancer Services, so bmctl deploys no MetalLB there)",
                           "remove addressPools, or make the cluster hybrid or standalone to run Services"))

    pools = []  # (range, path, pool index)
    names: dict[str, int] = {}
    for p, pool in enumerate(lb.addressPools):
        ppath = LB + ("addressPools", p)
        if not DNS_SUBDOMAIN.match(pool.name) or len(pool.name) > 63:
            out.append(Finding(ppath + ("name",), f"{pool.name!r} is not a valid pool name",
                               "use lowercase letters, digits and '-' (it becomes a MetalLB IPAddressPool name)"))
        if pool.name == INGRESS_POOL:
            out.append(Finding(ppath + ("name",), f"{pool.name!r} is reserved by bmctl for the ingress VIP",
                               "choose another pool name"))
        if pool.name in names:
            out.append(Finding(ppath + ("name",), f"pool name {pool.name!r} is already used by "
                               f"addressPools[{names[pool.name]}]", "give every pool a unique name"))
        names.setdefault(pool.name, p)
        ranges = []
        for a, text in enumerate(pool.addresses):
            try:
                rng = parse_pool_entry(text)
            except AddressError as exc:
                out.append(Finding(ppath + ("addresses", a), exc.message, exc.fix))
                continue
            ranges.append(rng)
            pools.append((rng, ppath + ("addresses", a)))
        if ranges and len(ranges) == len(pool.addresses) and pool.avoidBuggyIPs \
                and usable_count(ranges, True) == 0:
            out.append(Finding(ppath + ("avoidBuggyIPs",), "with avoidBuggyIPs every address of this pool is "
                               "excluded (they all end in .0 or .255)",
                               "add addresses that do not end in .0 or .255, or set avoidBuggyIPs: false"))

    for a, b in find_overlaps(pools):
        out.append(Finding(b, f"overlaps {format_path(a)}", "make the ranges disjoint: an address may belong to "
                           "one pool entry only"))

    if cp_vip is not None:
        for rng, path in pools:
            if contains(rng, cp_vip):
                out.append(Finding(LB + ("vips", "controlPlaneVIP"), f"{cp_vip} lies inside {format_path(path)}",
                                   "take the control-plane VIP out of every address pool (MetalLB would "
                                   "hand it to a Service)"))
    if ingress_vip is not None:
        holders = [(rng, path) for rng, path in pools if contains(rng, ingress_vip)]
        if not holders and len(pools) == sum(len(p.addresses) for p in lb.addressPools):
            out.append(Finding(LB + ("vips", "ingressVIP"), f"{ingress_vip} is in no address pool",
                               "add it to an address pool (it is reserved there for the ingress Service)"))
        for rng, path in holders:
            pool = lb.addressPools[path[3]]
            if pool.avoidBuggyIPs and is_buggy(ingress_vip):
                out.append(Finding(LB + ("vips", "ingressVIP"), f"{ingress_vip} ends in .0 or .255 and its "
                                   f"pool {pool.name!r} has avoidBuggyIPs: true",
                                   "pick an ingress VIP that does not end in .0 or .255"))

    for path, net, _err in _cidrs(config):
        if net is None:
            continue
        kind = path[2]
        for vip, vpath in ((cp_vip, "controlPlaneVIP"), (ingress_vip, "ingressVIP")):
            if vip is not None and vip in net:
                out.append(Finding(LB + ("vips", vpath), f"{vip} lies inside the {kind} CIDR {net}",
                                   f"pick a VIP outside the cluster's {kind} range"))
        for rng, ppath in pools:
            if intersects(rng, net):
                out.append(Finding(ppath, f"overlaps the {kind} CIDR {net}",
                                   f"use addresses outside the cluster's {kind} range"))
    return out


LABEL_NAME = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)$")
# The kubelet may set labels on its own Node only outside these prefixes, apart from a few it owns.
KUBELET_LABEL_PREFIXES = ("kubernetes.io", "k8s.io")
KUBELET_ALLOWED_PREFIXES = ("kubelet.kubernetes.io", "node.kubernetes.io")
HOSTNAME = re.compile(r"^(\*\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
# nodeConfig.podDensity.maxPodsPerNode: Google's bounds are 32 to 250; bmctl also takes 16 (a /27 of
# the pod CIDR per node, for small racks and the lab, whose pods share one /24).
MAX_PODS = (16, 250)


def _label_key_problem(key: str) -> str | None:
    prefix, _, name = key.rpartition("/")
    if not LABEL_NAME.match(name) or (prefix and (not DNS_SUBDOMAIN.match(prefix) or len(prefix) > 253)):
        return ("is not a valid label key (an optional DNS prefix and '/', then at most 63 letters, digits, "
                "'-', '_' or '.')")
    return None


def _check_pool_spec(spec: model.NodePoolSpec, path: tuple, cluster: str) -> list[Finding]:
    """clusterName, kubeletConfig, taints and labels of one node pool (Google's NodePoolSpec)."""
    out = []
    if spec.clusterName is not None and spec.clusterName != cluster:
        out.append(Finding(path + ("clusterName",), f"names cluster {spec.clusterName!r}, but the Cluster document "
                           f"is {cluster!r}", f"set clusterName: {cluster}"))
    kc = spec.kubeletConfig
    for key, value, low in (("registryPullQPS", kc.registryPullQPS, 0), ("registryBurst", kc.registryBurst, 0)):
        if value is not None and not low <= value <= 50:
            out.append(Finding(path + ("kubeletConfig", key), f"{value} is out of range",
                               f"use a value from {low} to 50 (Google's bounds)"))
    if kc.registryPullQPS and kc.registryBurst is not None and kc.registryBurst < kc.registryPullQPS:
        out.append(Finding(path + ("kubeletConfig", "registryBurst"), f"{kc.registryBurst} is below registryPullQPS "
                           f"({kc.registryPullQPS})", "make registryBurst at least registryPullQPS"))
    for i, taint in enumerate(spec.taints):
        problem = _label_key_problem(taint.key)
        if problem:
            out.append(Finding(path + ("taints", i, "key"), f"{taint.key!r} {problem}", "correct the taint key"))
        if taint.value and not LABEL_NAME.match(taint.value):
            out.append(Finding(path + ("taints", i, "value"), f"{taint.value!r} is not a valid taint value",
                               "use at most 63 letters, digits, '-', '_' or '.'"))
    for key, value in spec.labels.items():
        problem = _label_key_problem(key)
        prefix = key.rpartition("/")[0]
        if problem:
            out.append(Finding(path + ("labels", key), f"{key!r} {problem}", "correct the label key"))
        elif prefix.endswith(KUBELET_LABEL_PREFIXES) and not prefix.endswith(KUBELET_ALLOWED_PREFIXES):
            out.append(Finding(path + ("labels", key), f"the kubelet may not set {key!r} on its own node (the "
                               "NodeRestriction admission plugin refuses labels under kubernetes.io and k8s.io)",
                               "use your own prefix (e.g. example.com/role) or node.kubernetes.io/..."))
        if value and not LABEL_NAME.match(value):
            out.append(Finding(path + ("labels", key), f"{value!r} is not a valid label value",
                               "use at most 63 letters, digits, '-', '_' or '.'"))
    return out


def _check_nodes_settings(config: model.ClusterConfig) -> list[Finding]:
    """Google's settings that change the nodes: pod density, kubelet, API server certificate, OIDC."""
    out = _check_pool_spec(config.spec.controlPlane.nodePoolSpec, ("spec", "controlPlane", "nodePoolSpec"),
                           config.name)
    if config.lb.nodePoolSpec is not None:
        out += _check_pool_spec(config.lb.nodePoolSpec, LB + ("nodePoolSpec",), config.name)
    pods = config.spec.nodeConfig.podDensity.maxPodsPerNode
    if pods is not None and not MAX_PODS[0] <= pods <= MAX_PODS[1]:
        out.append(Finding(("spec", "nodeConfig", "podDensity", "maxPodsPerNode"), f"{pods} is out of range",
                           f"use {MAX_PODS[0]} to {MAX_PODS[1]} pods per node (110 is the Kubernetes default)"))
    for i, san in enumerate(config.spec.controlPlane.apiServerCertExtraSANs):
        try:
            parse_ip(san)
        except AddressError:
            if not HOSTNAME.match(san) or len(san) > 253:
                out.append(Finding(("spec", "controlPlane", "apiServerCertExtraSANs", i),
                                   f"{san!r} is neither an IP address nor a DNS name",
                                   "write an IP address or a lowercase DNS name (e.g. api.example.com)"))
    oidc = config.spec.authentication.oidc
    if oidc is not None and not oidc.issuerURL.startswith("https://"):
        out.append(Finding(("spec", "authentication", "oidc", "issuerURL"), f"{oidc.issuerURL!r} is not an https URL",
                           "kube-apiserver only accepts an https issuer URL, e.g. https://accounts.google.com"))
    return out


def _node_entries(config: model.ClusterConfig, pools: list[model.NodePool]):
    """(pool label, document index or None, path, node) for every node entry of the file."""
    for i, node in enumerate(config.control_plane_nodes):
        yield "the control-plane pool", None, ("spec", "controlPlane", "nodePoolSpec", "nodes", i), node
    if config.lb.nodePoolSpec is not None:
        for i, node in enumerate(config.lb.nodePoolSpec.nodes):
            yield "the load-balancer pool", None, LB + ("nodePoolSpec", "nodes", i), node
    for d, pool in enumerate(pools):
        for i, node in enumerate(pool.spec.nodes):
            yield f"node pool {pool.metadata.name!r}", d, ("spec", "nodes", i), node


def check_nodes(config: model.ClusterConfig, pools: list[model.NodePool]) -> list[Finding]:
    out: list[Finding] = []
    seen: dict[str, str] = {}
    seen_ip: dict[str, str] = {}
    node_ips: list[tuple[netaddr.IPAddress, str]] = []
    for label, doc_index, path, node in _node_entries(config, pools):
        local: list[Finding] = []
        addr = _ip(node.address, path + ("address",), local)
        k8s = _ip(node.k8sIP, path + ("k8sIP",), local) if node.k8sIP is not None else addr
        listed = node.address in seen
        if addr is not None:
            if node.address in seen:
                where = seen[node.address]
                local.append(Finding(path + ("address",), f"{node.address} is already listed in {where}",
                                     "list each machine in one node pool only (control plane, load "
                                     "balancer or a worker pool)" if where != label else
                                     "remove the duplicate entry"))
            seen.setdefault(node.address, label)
        if k8s is not None:
            key = str(k8s)
            if key in seen_ip and not listed:
                field = "k8sIP" if node.k8sIP is not None else "address"
                local.append(Finding(path + (field,), f"{key} is already the IP of a node in "
                                     f"{seen_ip[key]}", "give every node its own IP (address, or k8sIP "
                                     "when address is only for SSH)"))
            seen_ip.setdefault(key, label)
            node_ips.append((k8s, format_path(path)))
        out.extend(f._replace(doc_index=doc_index) for f in local)

    lb = config.lb
    vips = []
    for key in ("controlPlaneVIP", "ingressVIP"):
        text = getattr(lb.vips, key)
        if text is not None:
            try:
                vips.append((parse_ip(text), LB + ("vips", key)))
            except AddressError:
                pass
    for vip, vpath in vips:
        for ip, where in node_ips:
            if vip == ip:
                out.append(Finding(vpath, f"{vip} is the IP of the node at {where}",
                                   "pick a free address in the nodes' subnet for the VIP"))
    if vips and vips[0][1][-1] == "controlPlaneVIP":
        lb_families = set()
        for node in config.lb_nodes:
            try:
                lb_families.add(parse_ip(node.ip).version)
            except AddressError:
                pass
        if lb_families and vips[0][0].version not in lb_families:
            out.append(Finding(vips[0][1], f"{vips[0][0]} is IPv{vips[0][0].version} but the load-balancer "
                               f"nodes are IPv{min(lb_families)}",
                               "use a VIP of the same family as the load-balancer nodes' IPs"))
    if lb.mode == "bundled":
        for p, pool in enumerate(lb.addressPools):
            for a, text in enumerate(pool.addresses):
                try:
                    rng = parse_pool_entry(text)
                except AddressError:
                    continue
                for ip, where in node_ips:
                    if contains(rng, ip):
                        out.append(Finding(LB + ("addressPools", p, "addresses", a),
                                           f"contains {ip}, the IP of the node at {where}",
                                           "leave node IPs out of address pools (split the range around it)"))
    return out


def check_node_pool_doc(config: model.ClusterConfig, pool: model.NodePool, namespace: str | None) -> list[Finding]:
    out = []
    if not DNS_SUBDOMAIN.match(pool.metadata.name):
        out.append(Finding(("metadata", "name"), f"{pool.metadata.name!r} is not a valid node pool name",
                           "use lowercase letters, digits and '-'"))
    out += _check_pool_spec(pool.spec, ("spec",), config.name)
    ns = pool.metadata.namespace
    if ns is not None and namespace is not None and ns != namespace:
        out.append(Finding(("metadata", "namespace"), f"namespace {ns!r} is not the cluster's namespace "
                           f"{namespace!r}",
                           f"set it to {namespace!r}: a cluster and its node pools share one namespace"))
    if config.spec.type == "admin":
        out.append(Finding(("kind",), "admin clusters have no worker node pools (Google's rule: an admin cluster "
                           "runs only the control plane)", "remove this NodePool, or make the cluster hybrid or "
                           "standalone to run workloads"))
    return out


def cluster_namespace(config: model.ClusterConfig, namespaces: list[model.Namespace]) -> str | None:
    """The namespace the Cluster lives in: its metadata.namespace, else the file's Namespace document."""
    if config.cluster.metadata.namespace is not None:
        return config.cluster.metadata.namespace
    return namespaces[0].metadata.name if namespaces else None


def check_namespaces(config: model.ClusterConfig, namespaces: list[model.Namespace]) -> list[Finding]:
    """Any namespace name (Google dropped `cluster-NAME` in 1.7.2), one per file, the Cluster's own."""
    want = cluster_namespace(config, namespaces)
    if not namespaces:
        name = want or f"cluster-{config.name}"
        return [Finding(("metadata",), f"the file has no Namespace document for {name!r}",
                        f"add a document `apiVersion: v1`, `kind: Namespace`, `metadata: {{name: {name}}}` "
                        "before the Cluster")]
    out = []
    for i, ns in enumerate(namespaces):
        name = ns.metadata.name
        if not DNS_LABEL.match(name):
            out.append(Finding(("metadata", "name"), f"{name!r} is not a valid namespace name",
                               "use at most 63 lowercase letters, digits and '-'", doc_index=i))
        elif name != want:
            out.append(Finding(("metadata", "name"), f"namespace {name!r} is not the Cluster's namespace {want!r}",
                               f"name it {want!r} (the Cluster and its node pools live in one namespace), or set "
                               f"the Cluster's metadata.namespace to {name!r}", doc_index=i))
    return out
