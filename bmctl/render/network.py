"""The pod network: flannel with the host-gw backend, as upstream ships it but for DEVIATIONS.

A rack on one L2 segment needs no overlay: host-gw gives each node a plain route to every other
node's pod CIDR via that node's IP (no encapsulation, no MTU loss, no extra daemon on the data path).
`templates/network/flannel.yaml.j2` is flannel's own `Documentation/kube-flannel.yml` of
UPSTREAM_VERSION (kept verbatim in tests/data/upstream/), changed only where DEVIATIONS says so;
tests/test_network.py diffs the two object by object, field by field.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import netaddr
import yaml

from bmctl.config.model import ClusterConfig
from bmctl.errors import BmctlError
from bmctl import release as releases
from bmctl.render.engine import RenderedFile, render

UPSTREAM_VERSION = "v0.27.4"     # the flannel release whose kube-flannel.yml the template follows
BACKEND = "host-gw"
NAMESPACE = "kube-flannel"
DAEMONSET = "kube-flannel-ds"
POD_SELECTOR = "app=flannel"
MANIFEST = "kube-flannel.yaml"   # its name under dry-run/cluster/
# Set on each Node before flannel starts: flannel then uses the interface holding this IP (the
# kubelet's node IP) instead of the default route's, and host-gw routes point at it.
PUBLIC_IP_ANNOTATION = "flannel.alpha.coreos.com/node-public-ip"
DEFAULT_MAX_PODS = 110  # the kubelet's default maxPods


def node_cidr_prefix(config: ClusterConfig) -> int:
    """kube-controller-manager's --node-cidr-mask-size: each node's block of the pod CIDR holds at
    least twice its maxPodsPerNode addresses (Google's rule: 110 pods -> /24, the controller-manager's
    default; 250 -> /23; 32 -> /26; 16 -> /27)."""
    pods = config.spec.nodeConfig.podDensity.maxPodsPerNode or DEFAULT_MAX_PODS
    return 32 - (2 * pods - 1).bit_length()


def cni(config: ClusterConfig) -> str:
    """spec.clusterNetwork.cni: "flannel" (the default) or "none" (bring your own)."""
    return getattr(config.spec.clusterNetwork, "cni", None) or "flannel"


@dataclass(frozen=True)
class FlannelImages:
    flannel: str
    cni_plugin: str

    @classmethod
    def of(cls, config: ClusterConfig) -> "FlannelImages":
        release = releases.of(config)
        return cls(release.image("flannel"), release.image("flannel-cni-plugin"))


class _Absent:
    def __repr__(self) -> str:
        return "(absent)"


ABSENT = _Absent()  # a Deviation's value where the field is not there


@dataclass(frozen=True)
class Deviation:
    """One place where bmctl's objects differ from upstream's file, and why."""

    kind: str
    name: str
    path: tuple[str, ...]  # keys; a list item as "[its name]" (else "[index]"); JSON in a *.json key is walked into
    upstream: object       # upstream's value there, or ABSENT (a test checks the file still says so)
    ours: Callable[[ClusterConfig, FlannelImages], object]
    reason: str


_NET_CONF = ("data", "net-conf.json")
_POD_SPEC = ("spec", "template", "spec")
_IMAGE_LIST = "the cluster's release (bmctl/release), so a release or the lab can pin " \
              "(tag + digest) or rebuild it"

DEVIATIONS: tuple[Deviation, ...] = (
    Deviation("ConfigMap", "kube-flannel-cfg", (*_NET_CONF, "Backend", "Type"), "vxlan", lambda c, i: BACKEND,
              "host-gw: the nodes share one L2 segment, so plain routes via each node's IP do what vxlan does, "
              "without encapsulation, MTU loss or a tunnel device"),
    Deviation("ConfigMap", "kube-flannel-cfg", (*_NET_CONF, "Network"), "10.244.0.0/16", lambda c, i: pod_network(c),
              "the cluster's pod CIDR (spec.clusterNetwork.pods.cidrBlocks[0], kubeadm's podSubnet): flannel's "
              "network must be the block the controller-manager carves the nodes' podCIDRs from"),
    Deviation("DaemonSet", DAEMONSET, (*_POD_SPEC, "tolerations", "[0]", "effect"), "NoSchedule", lambda c, i: ABSENT,
              "tolerate every taint, as kubeadm's kube-proxy does: upstream tolerates NoSchedule only, so a node "
              "pool's NoExecute taint (NodePool taints) would keep flannel off its nodes and leave them NotReady"),
    Deviation("DaemonSet", DAEMONSET, (*_POD_SPEC, "initContainers", "[install-cni-plugin]", "image"),
              "ghcr.io/flannel-io/flannel-cni-plugin:v1.8.0-flannel1", lambda c, i: i.cni_plugin, _IMAGE_LIST),
    Deviation("DaemonSet", DAEMONSET, (*_POD_SPEC, "initContainers", "[install-cni]", "image"),
              "ghcr.io/flannel-io/flannel:v0.27.4", lambda c, i: i.flannel, _IMAGE_LIST),
    Deviation("DaemonSet", DAEMONSET, (*_POD_SPEC, "containers", "[kube-flannel]", "image"),
              "ghcr.io/flannel-io/flannel:v0.27.4", lambda c, i: i.flannel, _IMAGE_LIST),
)


def path_text(path: tuple[str, ...]) -> str:
    """("spec", "containers", "[kube-flannel]", "image") -> spec.containers[kube-flannel].image"""
    return "".join(p if p.startswith("[") else ("." if i else "") + p for i, p in enumerate(path))


def pod_network(config: ClusterConfig) -> str:
    """flannel's Network: the first pod CIDR block, which must be one IPv4 block with room for one
    node block (node_cidr_prefix) per node: the controller-manager gives each node one."""
    blocks = config.spec.clusterNetwork.pods.cidrBlocks
    where = "spec.clusterNetwork.pods.cidrBlocks"
    net = netaddr.IPNetwork(blocks[0])
    if net.version != 4 or len(blocks) > 1:
        raise BmctlError(f"{where}: {', '.join(blocks)}: bmctl's flannel runs a single IPv4 pod network.",
                         "give one IPv4 block (e.g. 10.244.0.0/16), or set spec.clusterNetwork.cni: none and "
                         "install a CNI that does IPv6 or dual stack.")
    size = node_cidr_prefix(config)
    room = 2 ** (size - net.prefixlen) if net.prefixlen <= size else 0
    if room < len(config.all_nodes):
        raise BmctlError(f"{where}[0]: {net} holds {room} node CIDR(s) of /{size} (maxPodsPerNode "
                         f"{config.spec.nodeConfig.podDensity.maxPodsPerNode or DEFAULT_MAX_PODS}), for "
                         f"{len(config.all_nodes)} node(s).",
                         f"use a block of at least /{size - (len(config.all_nodes) - 1).bit_length()} "
                         "(e.g. 10.244.0.0/16), or lower spec.nodeConfig.podDensity.maxPodsPerNode.")
    return str(net)


def flannel_manifest(config: ClusterConfig, image_refs: FlannelImages | None = None) -> RenderedFile:
    return RenderedFile(MANIFEST, render("network/flannel.yaml.j2", cluster=config.name, version=UPSTREAM_VERSION,
                                         backend=BACKEND, network=pod_network(config),
                                         images=image_refs or FlannelImages.of(config)))


def flannel_objects(config: ClusterConfig, image_refs: FlannelImages | None = None) -> list[dict]:
    """The flannel objects, in upstream's (apply) order."""
    return [d for d in yaml.safe_load_all(flannel_manifest(config, image_refs).content) if d]


def network_manifests(config: ClusterConfig, image_refs: FlannelImages | None = None) -> list[RenderedFile]:
    """What the pod-network phase applies: flannel's manifest, or nothing with cni: none."""
    return [] if cni(config) == "none" else [flannel_manifest(config, image_refs)]
