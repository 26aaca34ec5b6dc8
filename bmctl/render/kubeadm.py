"""kubeadm configuration for each node: init on the first control-plane node, joins elsewhere."""
from __future__ import annotations

from netaddr import IPAddress

from bmctl import release as releases
from bmctl.config.model import APISERVER_PORT, ClusterConfig, Node
from bmctl.errors import BmctlError
from bmctl.render.engine import RenderedFile, render
from bmctl.render.metallb import kube_proxy_config
from bmctl.render.network import node_cidr_prefix
from bmctl.secrets import ClusterSecrets

KUBEADM_CONFIG = "/etc/kubernetes/bmctl/kubeadm.yaml"
CA_HASH_PLACEHOLDER = "sha256:<hash of the cluster CA, read after kubeadm init>"


def endpoint(config: ClusterConfig) -> str:
    vip = IPAddress(config.lb.vips.controlPlaneVIP)
    host = f"[{vip}]" if vip.version == 6 else str(vip)
    return f"{host}:{config.lb.ports.controlPlaneLBPort}"


def kubeadm_action(config: ClusterConfig, node: Node) -> str:
    """init (first control-plane node), join-control-plane, or join."""
    cps = config.control_plane_nodes
    if node.address == cps[0].address:
        return "init"
    if node.address in {n.address for n in cps}:
        return "join-control-plane"
    return "join"


CONTROL_PLANE_TAINT = {"key": "node-role.kubernetes.io/control-plane", "value": "", "effect": "NoSchedule"}


def kubelet_args(config: ClusterConfig, node: Node) -> list[dict]:
    """The node's kubelet flags: its IP, then Google's pod density, its pool's kubeletConfig and labels."""
    pool = config.pool_spec(node)
    kc = pool.kubeletConfig
    args = {"node-ip": node.ip, "max-pods": config.spec.nodeConfig.podDensity.maxPodsPerNode,
            "registry-qps": kc.registryPullQPS, "registry-burst": kc.registryBurst,
            "serialize-image-pulls": None if kc.serializeImagePulls is None else str(kc.serializeImagePulls).lower(),
            "node-labels": ",".join(f"{k}={v}" for k, v in sorted(pool.labels.items())) or None}
    return [{"name": k, "value": str(v)} for k, v in args.items() if v is not None]


def node_taints(config: ClusterConfig, node: Node, control_plane: bool) -> list[dict] | None:
    """kubeadm's nodeRegistration.taints, or None for kubeadm's default (the control-plane taint on
    control-plane nodes). Without workers the control plane runs workloads: no control-plane taint."""
    pool = [t.model_dump() for t in config.pool_spec(node).taints]
    if control_plane and not config.worker_nodes:
        return pool
    if not pool:
        return None
    return ([CONTROL_PLANE_TAINT] if control_plane else []) + pool


def apiserver_args(config: ClusterConfig) -> list[dict]:
    """kube-apiserver flags from Google's authentication.oidc."""
    oidc = config.spec.authentication.oidc
    if oidc is None:
        return []
    args = {"oidc-issuer-url": oidc.issuerURL, "oidc-client-id": oidc.clientID, "oidc-username-claim": oidc.username,
            "oidc-username-prefix": oidc.usernamePrefix, "oidc-groups-claim": oidc.group,
            "oidc-groups-prefix": oidc.groupPrefix}
    return [{"name": k, "value": v} for k, v in args.items() if v is not None]


def kubeadm_config(config: ClusterConfig, node: Node, secrets: ClusterSecrets,
                   ca_cert_hash: str = CA_HASH_PLACEHOLDER, cgroup_driver: str = "systemd") -> RenderedFile:
    action = kubeadm_action(config, node)
    net = config.spec.clusterNetwork
    release = releases.of(config)
    if release.kubernetes != config.spec.kubernetesVersion:
        raise BmctlError(f"spec.kubernetesVersion: {config.spec.kubernetesVersion}, but {release.source} release "
                         f"installs Kubernetes {release.kubernetes} ({config.path}).",
                         f"set spec.kubernetesVersion to {release.kubernetes}, or name a release file of that "
                         "version in the header's releaseFile.")
    sans = [config.lb.vips.controlPlaneVIP, *[n.ip for n in config.control_plane_nodes],
            *config.spec.controlPlane.apiServerCertExtraSANs]
    content = render(
        "kubeadm/kubeadm.yaml.j2",
        cluster=config.name,
        action="init" if action == "init" else "join",
        control_plane=action != "join",
        taints=node_taints(config, node, action != "join"),
        kubelet_args=kubelet_args(config, node),
        apiserver_args=apiserver_args(config),
        bundled=config.bundled,
        node_ip=node.ip,
        apiserver_port=APISERVER_PORT,
        endpoint=endpoint(config),
        bootstrap_token=secrets.bootstrap_token,
        certificate_key=secrets.certificate_key,
        ca_cert_hash=ca_cert_hash,
        kubernetes_version=config.spec.kubernetesVersion,
        pod_subnets=net.pods.cidrBlocks,
        service_subnets=net.services.cidrBlocks,
        cert_sans=list(dict.fromkeys(sans)),
        kube_proxy=kube_proxy_config(config),
        release_source=release.source,
        image_repository=release.image_repository,
        etcd_image=release.kubeadm_image("etcd"),
        dns_image=release.kubeadm_image("coredns"),
        node_cidr_mask=node_cidr_prefix(config),
        cgroup_driver=cgroup_driver,
        cgroup_v1=config.spec.nodeConfig.allowCgroupV1,
    )
    return RenderedFile(KUBEADM_CONFIG, content, mode=0o600, secret=True)
