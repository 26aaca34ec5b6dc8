"""kubeadm configuration for each node: init on the first control-plane node, joins elsewhere."""
from __future__ import annotations

from netaddr import IPAddress

from bmctl.config.model import APISERVER_PORT, ClusterConfig, Node
from bmctl.render.engine import RenderedFile, render
from bmctl.render.metallb import kube_proxy_config
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


def kubeadm_config(config: ClusterConfig, node: Node, secrets: ClusterSecrets,
                   ca_cert_hash: str = CA_HASH_PLACEHOLDER) -> RenderedFile:
    action = kubeadm_action(config, node)
    net = config.spec.clusterNetwork
    sans = [config.lb.vips.controlPlaneVIP, *[n.ip for n in config.control_plane_nodes]]
    content = render(
        "kubeadm/kubeadm.yaml.j2",
        cluster=config.name,
        action="init" if action == "init" else "join",
        control_plane=action != "join",
        untainted=not config.worker_nodes,
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
    )
    return RenderedFile(KUBEADM_CONFIG, content, mode=0o600, secret=True)
