"""The cluster config as typed objects (pydantic). Knows nothing of SSH or rendering.

Field names are the YAML keys, camelCase as in Google's bmctl, so that an error's
location is the path the user sees in the file.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field

API_VERSION = "baremetal.cluster.gke.io/v1"
DEFAULT_KUBERNETES_VERSION = "v1.34.2"
APISERVER_PORT = 6444
MEMBERLIST_PORT = 7946
LB_NODE_LABEL = "baremetal.cluster.gke.io/lbnode"

# Header keys written by Google's bmctl that point at GCP service-account keys. They
# mean nothing to this bmctl; the loader warns and ignores them.
GCP_HEADER_KEYS = (
    "gcrKeyPath",
    "gkeConnectAgentServiceAccountKeyPath",
    "gkeConnectRegisterServiceAccountKeyPath",
    "cloudOperationsServiceAccountKeyPath",
)


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class RegistryMirror(Strict):
    """Google bmctl's header `registryMirrors` entry: containerd pulls the images of `hosts` (default:
    docker.io) from `endpoint` (HOST:PORT or https://HOST:PORT, optionally /v2/NAMESPACE; http:// for
    a plain-HTTP registry), trusting `caCertPath` and logging in with the credential for the endpoint's
    host in `pullCredentialConfigPath` (a Docker config.json). Paths are on the workstation."""

    endpoint: str
    caCertPath: Optional[str] = None
    pullCredentialConfigPath: Optional[str] = None
    hosts: list[str] = []


class Header(Strict):
    sshPrivateKeyPath: Optional[str] = None
    sshKnownHostsPath: Optional[str] = None
    # bmctl-only: a release file (Kubernetes version + image references, see bmctl/release/)
    # instead of the release bmctl ships; a relative path is relative to the config file.
    releaseFile: Optional[str] = None
    # bmctl-only: the offline bundle (`bmctl bundle build`) whose binaries bmctl installs on the nodes
    # and whose release (images) the cluster runs; without it, nodes install from their package manager.
    bundlePath: Optional[str] = None
    registryMirrors: list[RegistryMirror] = []


class Meta(Strict):
    name: str
    namespace: Optional[str] = None
    labels: dict[str, str] = {}
    annotations: dict[str, str] = {}


class Node(Strict):
    address: str
    k8sIP: Optional[str] = None

    @property
    def ip(self) -> str:
        """The node's IP inside the cluster: k8sIP when set, else address."""
        return self.k8sIP or self.address


class KubeletConfig(Strict):
    """Google's per-pool kubelet settings (passed to each node's kubelet)."""

    registryPullQPS: Optional[int] = None
    registryBurst: Optional[int] = None
    serializeImagePulls: Optional[bool] = None


class Taint(Strict):
    key: str
    value: str = ""
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"]


class NodePoolSpec(Strict):
    """Google's NodePoolSpec: the control-plane, load-balancer and NodePool documents share it."""

    clusterName: Optional[str] = None
    nodes: list[Node] = Field(min_length=1)
    kubeletConfig: KubeletConfig = KubeletConfig()
    taints: list[Taint] = []
    labels: dict[str, str] = {}


class ControlPlane(Strict):
    nodePoolSpec: NodePoolSpec
    apiServerCertExtraSANs: list[str] = []


class CIDRBlocks(Strict):
    cidrBlocks: list[str] = Field(min_length=1)


class ClusterNetwork(Strict):
    pods: CIDRBlocks
    services: CIDRBlocks
    kubeProxyMode: Literal["iptables", "nftables", "ipvs"] = "iptables"
    cni: Literal["flannel", "none"] = "flannel"  # bmctl-only: none = bring your own pod network
    # Google's switch for the bundled ingress on the ingress VIP (on when ingressVIP is set)
    bundledIngress: bool = True


class Ports(Strict):
    controlPlaneLBPort: int = 443


class VIPs(Strict):
    controlPlaneVIP: str
    ingressVIP: Optional[str] = None


class AddressPool(Strict):
    name: str
    addresses: list[str] = Field(min_length=1)
    avoidBuggyIPs: bool = False
    manualAssign: bool = False


class VRRP(Strict):
    """bmctl's Keepalived settings (not in Google's bmctl; all optional)."""

    virtualRouterID: Optional[int] = None
    unicast: bool = False
    advertInterval: Optional[float] = None
    interface: Optional[str] = None


class Ingress(Strict):
    """bmctl's bundled ingress settings (not in Google's bmctl; optional)."""

    # The TLS Secret (kubernetes.io/tls, in namespace bmctl-ingress) served on port 443. Unset: a
    # self-signed certificate bmctl generates.
    tlsSecret: Optional[str] = None


class BGPPeer(Strict):
    ip: str
    asn: int
    controlPlaneNodes: list[str] = []


class LoadBalancer(Strict):
    mode: Literal["bundled", "manual"]
    type: Literal["layer2", "bgp"] = "layer2"
    ports: Ports = Ports()
    vips: VIPs
    addressPools: list[AddressPool] = []
    nodePoolSpec: Optional[NodePoolSpec] = None
    vrrp: VRRP = VRRP()
    localASN: Optional[int] = None
    bgpPeers: list[BGPPeer] = []
    ingress: Ingress = Ingress()


class NodeAccess(Strict):
    loginUser: str = "root"


class PodDensity(Strict):
    maxPodsPerNode: Optional[int] = None


class PrivateRegistry(Strict):
    """Google bmctl's `nodeConfig.privateRegistries` entry: a registry the nodes log in to (and trust)
    when they pull from it directly (not as a mirror)."""

    host: str
    caCertPath: Optional[str] = None
    pullCredentialConfigPath: Optional[str] = None


class NodeConfig(Strict):
    podDensity: PodDensity = PodDensity()
    containerRuntime: Literal["containerd"] = "containerd"
    privateRegistries: list[PrivateRegistry] = []
    # bmctl-only, deprecated by upstream: run Kubernetes on nodes with cgroup v1, which the kubelet
    # refuses from v1.35 unless told otherwise (failCgroupV1: false; kubeadm's SystemVerification
    # ignored). Every run warns; upstream will drop cgroup v1 altogether.
    allowCgroupV1: bool = False


class Proxy(Strict):
    """Google bmctl's `spec.proxy`: the nodes' containerd, kubelet and package downloads go through
    `url`, except to `noProxy` (bmctl adds the cluster's CIDRs, VIPs and node addresses)."""

    url: str
    noProxy: list[str] = []


class OIDC(Strict):
    """Google's authentication.oidc: the fields kube-apiserver takes (client-side ones are dropped by the
    loader with a warning)."""

    issuerURL: str
    clientID: str
    username: Optional[str] = None
    usernamePrefix: Optional[str] = None
    group: Optional[str] = None
    groupPrefix: Optional[str] = None


class Authentication(Strict):
    oidc: Optional[OIDC] = None


class ClusterSpec(Strict):
    type: Literal["standalone", "hybrid", "admin", "user"] = "standalone"
    kubernetesVersion: str = DEFAULT_KUBERNETES_VERSION
    controlPlane: ControlPlane
    clusterNetwork: ClusterNetwork
    loadBalancer: LoadBalancer
    nodeAccess: NodeAccess = NodeAccess()
    nodeConfig: NodeConfig = NodeConfig()
    authentication: Authentication = Authentication()
    proxy: Optional[Proxy] = None


class Cluster(Strict):
    apiVersion: Literal["baremetal.cluster.gke.io/v1"]
    kind: Literal["Cluster"]
    metadata: Meta
    spec: ClusterSpec


class Namespace(Strict):
    apiVersion: Literal["v1"]
    kind: Literal["Namespace"]
    metadata: Meta


class NodePoolDocSpec(NodePoolSpec):
    clusterName: str


class NodePool(Strict):
    apiVersion: Literal["baremetal.cluster.gke.io/v1"]
    kind: Literal["NodePool"]
    metadata: Meta
    spec: NodePoolDocSpec


DEFAULT_ADVERT_INTERVAL = 0.2  # seconds; see benchmarks/ and README for the measurement


@dataclass(frozen=True)
class ClusterConfig:
    """A loaded, validated config: the documents plus what is derived from them."""

    path: str
    header: Header
    cluster: Cluster
    node_pools: tuple[NodePool, ...] = ()
    warnings: tuple = field(default=(), compare=False)

    @property
    def name(self) -> str:
        return self.cluster.metadata.name

    def workstation_file(self, path: str) -> str:
        """A path the config names on the workstation: `~` expanded, relative to the config's folder."""
        return workstation_path(path, os.path.dirname(os.path.abspath(self.path)) if self.path else None)

    @property
    def spec(self) -> ClusterSpec:
        return self.cluster.spec

    @property
    def lb(self) -> LoadBalancer:
        return self.cluster.spec.loadBalancer

    @property
    def control_plane_nodes(self) -> list[Node]:
        return list(self.spec.controlPlane.nodePoolSpec.nodes)

    @property
    def lb_nodes(self) -> list[Node]:
        """LB nodes: the LB node pool if given, else the control-plane nodes."""
        if self.lb.nodePoolSpec is not None:
            return list(self.lb.nodePoolSpec.nodes)
        return self.control_plane_nodes

    @property
    def separate_lb_pool(self) -> bool:
        return self.lb.nodePoolSpec is not None

    @property
    def worker_nodes(self) -> list[Node]:
        return [n for pool in self.node_pools for n in pool.spec.nodes]

    @property
    def all_nodes(self) -> list[Node]:
        """Every machine once, control plane first."""
        seen: dict[str, Node] = {}
        extra = self.lb_nodes if self.separate_lb_pool else []
        for node in [*self.control_plane_nodes, *extra, *self.worker_nodes]:
            seen.setdefault(node.address, node)
        return list(seen.values())

    def roles(self, node: Node) -> list[str]:
        out = []
        if node.address in {n.address for n in self.control_plane_nodes}:
            out.append("control-plane")
        if node.address in {n.address for n in self.lb_nodes}:
            out.append("load-balancer")
        if node.address in {n.address for n in self.worker_nodes}:
            out.append("worker")
        return out

    def pool_spec(self, node: Node) -> NodePoolSpec:
        """The node pool that lists `node` (a node is in one pool only: validation sees to it)."""
        pools = [self.spec.controlPlane.nodePoolSpec, *([self.lb.nodePoolSpec] if self.separate_lb_pool else []),
                 *(p.spec for p in self.node_pools)]
        return next(p for p in pools if node.address in {n.address for n in p.nodes})

    @property
    def bundled(self) -> bool:
        return self.lb.mode == "bundled"

    @property
    def runs_metallb(self) -> bool:
        """Bundled mode deploys MetalLB, except on admin clusters (Google's rule: they run no Services)."""
        return self.bundled and self.spec.type != "admin"

    @property
    def runs_ingress(self) -> bool:
        """The bundled ingress (bmctl/render/ingress.py): behind the ingress VIP, which MetalLB serves;
        on unless clusterNetwork.bundledIngress is false."""
        return (self.runs_metallb and self.lb.vips.ingressVIP is not None
                and self.spec.clusterNetwork.bundledIngress)

    @property
    def virtual_router_id(self) -> int:
        return self.lb.vrrp.virtualRouterID or derive_vrid(self.name)

    @property
    def advert_interval(self) -> float:
        return self.lb.vrrp.advertInterval or DEFAULT_ADVERT_INTERVAL


def workstation_path(path: str, base: str | None) -> str:
    """A path the config names on the workstation: `~` expanded, relative to the config's folder."""
    path = os.path.expanduser(path)
    return path if os.path.isabs(path) or base is None else os.path.join(base, path)


def derive_vrid(cluster_name: str) -> int:
    """A VRRP router id in 1..255 derived from the cluster name.

    Two clusters with different names almost always get different ids; preflight
    listens for adverts to catch the rare collision, and the config can set one.
    """
    digest = hashlib.sha256(cluster_name.encode()).digest()
    return int.from_bytes(digest[:4], "big") % 255 + 1
