"""The load-balancer nodes' kubelet before kubeadm: pure renderers.

Why: a kubelet runs no static pod until it has a configuration, and kubeadm writes that
configuration (/var/lib/kubelet/config.yaml) only in `kubeadm init` / `kubeadm join`. `kubeadm init`
reaches the API through the control-plane VIP (admin.conf points there), and a dedicated LB node's
`kubeadm join` goes through the VIP that the LB nodes themselves must serve: without a kubelet that
runs Keepalived and HAProxy first, a cluster whose LB nodes are not control-plane nodes deadlocks.
So until kubeadm has configured it, an LB node's kubelet runs standalone (a systemd drop-in that
points it at a configuration of bmctl's, without kubeconfig), running just those two static pods.
Right before kubeadm runs on the node the drop-in goes and the kubelet stops (its containers keep
running, so the VIP stays); kubeadm starts it again with its own configuration, and it adopts the
same static pods. A reboot before kubeadm brings the standalone kubelet back; a reboot after brings
kubeadm's.
"""
from __future__ import annotations

from bmctl.config.model import ClusterConfig
from bmctl.render.engine import RenderedFile, render

BOOTSTRAP_CONFIG = "/etc/kubernetes/bmctl/kubelet-lb-bootstrap.yaml"
BOOTSTRAP_DROPIN = "/etc/systemd/system/kubelet.service.d/20-bmctl-lb-bootstrap.conf"
MANIFESTS = "/etc/kubernetes/manifests"


def lb_bootstrap_files(config: ClusterConfig, cgroup_driver: str = "systemd") -> list[RenderedFile]:
    return [RenderedFile(BOOTSTRAP_CONFIG, render("kubelet/lb-bootstrap-kubelet.yaml.j2", cluster=config.name,
                                                  manifests=MANIFESTS, cgroup_driver=cgroup_driver,
                                                  cgroup_v1=config.spec.nodeConfig.allowCgroupV1), mode=0o644),
            RenderedFile(BOOTSTRAP_DROPIN, render("kubelet/lb-bootstrap-dropin.conf.j2", cluster=config.name,
                                                  config=BOOTSTRAP_CONFIG), mode=0o644)]
