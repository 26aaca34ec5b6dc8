"""The pod network: flannel with the host-gw backend, as upstream ships it but for DEVIATIONS.

A rack on one L2 segment needs no overlay: host-gw gives each node a plain route to every other
node's pod CIDR via that node's IP (no encapsulation, no MTU loss, no extra daemon on the data path).
The objects are flannel's own `Documentation/kube-flannel.yml` of UPSTREAM_VERSION, pinned by sha256
in the release (`manifests:` flannel) and read through bmctl/release/upstream.py (bundle, cache, Go
module cache or module proxy; no copy is kept in this repository), changed in code only where
DEVIATIONS says, each with its reason: with_deviations() checks that upstream still has the value a
deviation was written for. tests/test_network.py diffs the result against upstream's objects, object
by object, field by field.
"""
from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from typing import Callable

import netaddr

from bmctl.config.model import ClusterConfig
from bmctl.errors import BmctlError
from bmctl import release as releases
from bmctl.release import upstream
from bmctl.render.engine import RenderedFile, documents

UPSTREAM_VERSION = "v0.27.4"     # the flannel release whose kube-flannel.yml bmctl deploys (the release pins it)
PINNED = "flannel"               # its name in the release's `manifests:`
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


def upstream_objects(config: ClusterConfig) -> list[dict]:
    """Upstream's kube-flannel.yml objects, as the config's release pins the file."""
    return [d for text in upstream.for_config(config, PINNED) for d in documents(text)]


def _walk(node, key: str):
    """One step of a deviation's path: a mapping's key, a list's "[name]" or "[index]" item."""
    if not isinstance(node, list):
        return node[key]
    name = key[1:-1]
    found = [i for i in node if isinstance(i, dict) and i.get("name") == name]
    if len(found) == 1:
        return found[0]
    if name.isdigit():
        return node[int(name)]
    raise KeyError(f"no list item named {name}")


def _deviate(obj: dict, path: tuple[str, ...], want: object, value: object) -> None:
    """Set obj at `path` to `value` (ABSENT: remove it) where upstream has `want`. A `*.json` key of
    a ConfigMap's data is a JSON document: walked into and written back as upstream writes it (two-space
    indent)."""
    node = obj
    for depth, key in enumerate(path[:-1]):
        if depth == 1 and path[0] == "data" and key.endswith(".json"):
            doc = json.loads(node[key])
            _deviate(doc, path[depth + 1:], want, value)
            node[key] = json.dumps(doc, indent=2) + "\n"
            return
        node = _walk(node, key)
    last = path[-1]
    if isinstance(node, list):
        raise KeyError(f"{last}: a list item is replaced field by field")
    found = node.get(last, ABSENT)
    if found != want:
        raise ValueError(f"upstream has {found!r} there, the deviation was written for {want!r}")
    if value is ABSENT:
        node.pop(last, None)
    else:
        node[last] = value


def with_deviations(upstream_objs: list[dict], config: ClusterConfig, image_refs: FlannelImages,
                    deviations: tuple[Deviation, ...] = DEVIATIONS) -> list[dict]:
    """Upstream's objects changed as `deviations` say (upstream's are not touched). A deviation whose
    object or path is gone, or where upstream no longer has the value it was written for, stops the
    render: bmctl never deploys a change nobody has looked at."""
    objs = copy.deepcopy(upstream_objs)
    for dev in deviations:
        hits = [o for o in objs if o["kind"] == dev.kind and o["metadata"]["name"] == dev.name]
        where = f"flannel deviation {dev.kind} {dev.name} {path_text(dev.path)}"
        if len(hits) != 1:
            raise RuntimeError(f"{where} does not apply: upstream has {len(hits)} such objects")
        try:
            _deviate(hits[0], dev.path, dev.upstream, dev.ours(config, image_refs))
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            raise RuntimeError(f"{where} does not apply to upstream's {UPSTREAM_VERSION} file: {exc}") from None
    return objs


def flannel_objects(config: ClusterConfig, image_refs: FlannelImages | None = None) -> list[dict]:
    """The flannel objects, in upstream's (apply) order."""
    return with_deviations(upstream_objects(config), config, image_refs or FlannelImages.of(config))


def flannel_manifest(config: ClusterConfig, image_refs: FlannelImages | None = None) -> RenderedFile:
    head = (f"# Managed by bmctl for cluster {config.name}: the pod network (flannel {UPSTREAM_VERSION}, backend "
            f"{BACKEND}).\n# flannel's Documentation/kube-flannel.yml at tag {UPSTREAM_VERSION} (github.com/flannel-io/"
            "flannel, Apache License 2.0),\n# changed only where bmctl/render/network.py DEVIATIONS says so.\n")
    return RenderedFile(MANIFEST, upstream.dump(flannel_objects(config, image_refs), head))


def network_manifests(config: ClusterConfig, image_refs: FlannelImages | None = None) -> list[RenderedFile]:
    """What the pod-network phase applies: flannel's manifest, or nothing with cni: none."""
    return [] if cni(config) == "none" else [flannel_manifest(config, image_refs)]
