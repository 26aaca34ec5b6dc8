"""kubeadm: init on the first control-plane node (behind the VIP), control-plane joins one at a
time, the other nodes in parallel; the admin kubeconfig lands in the workspace."""
from __future__ import annotations

import datetime
import hashlib

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from bmctl.host import Host, sync_files
from bmctl.kube import Kube
from bmctl.phases.base import Context, Phase, Step
from bmctl.render.kubeadm import KUBEADM_CONFIG, kubeadm_action, kubeadm_config
from bmctl.workspace import write_private

ADMIN_CONF = "/etc/kubernetes/admin.conf"
KUBELET_CONF = "/etc/kubernetes/kubelet.conf"
CA_CERT = "/etc/kubernetes/pki/ca.crt"


def ca_cert_hash(pem: str) -> str:
    """kubeadm's discovery hash: sha256 of the CA's DER SubjectPublicKeyInfo."""
    cert = x509.load_pem_x509_certificate(pem.encode())
    spki = cert.public_key().public_bytes(serialization.Encoding.DER,
                                          serialization.PublicFormat.SubjectPublicKeyInfo)
    return "sha256:" + hashlib.sha256(spki).hexdigest()


def _exists(host: Host, path: str) -> bool:
    return host.run(["test", "-f", path], step=f"look for {path}", check=False).rc == 0


def _cat(host: Host, path: str, secret: bool = False) -> str:
    return host.run(["cat", "--", path], step=f"read {path}", secret_output=secret).stdout


class Kubeadm(Phase):
    name = "kubeadm"
    title = "Kubernetes (kubeadm)"

    def plan(self, ctx: Context) -> list[Step]:
        config = ctx.config
        steps = []
        only = set(ctx.only([n.address for n in config.all_nodes]))
        for node in config.all_nodes:
            if node.address not in only:
                continue
            action = kubeadm_action(config, node)
            what = {"init": "kubeadm init (first control-plane node)",
                    "join-control-plane": "kubeadm join --control-plane (one at a time)",
                    "join": "kubeadm join (workers and load-balancer nodes, in parallel)"}[action]
            steps.append(Step(node.address, what, [kubeadm_config(config, node, ctx.secrets)]))
        steps.append(Step(config.control_plane_nodes[0].address,
                          f"fetch admin.conf into the workspace as {config.name}-kubeconfig"))
        return steps

    def run(self, ctx: Context) -> None:
        config, inv = ctx.config, ctx.inventory
        first = config.control_plane_nodes[0]
        host = inv[first.address]
        ctx.record(first.address, sync_files(host, [kubeadm_config(config, first, ctx.secrets)]))
        if _exists(host, ADMIN_CONF):
            ctx.progress.host(first.address, "already initialized")
        else:
            host.run(["kubeadm", "init", "--config", KUBEADM_CONFIG, "--upload-certs"], step="kubeadm init",
                     timeout=900, retry=False)
            ctx.progress.host(first.address, "kubeadm init done")
        kubeconfig = ctx.options.get("kubeconfig_path")
        if kubeconfig is not None:
            write_private(kubeconfig, _cat(host, ADMIN_CONF, secret=True))
        ca_hash = ca_cert_hash(_cat(host, CA_CERT))

        def join(h: Host) -> None:
            node = next(n for n in config.all_nodes if n.address == h.address)
            ctx.record(h.address, sync_files(h, [kubeadm_config(config, node, ctx.secrets, ca_hash)]))
            if _exists(h, KUBELET_CONF):
                ctx.progress.host(h.address, "already joined")
                return
            h.run(["kubeadm", "join", "--config", KUBEADM_CONFIG], step="kubeadm join", timeout=900, retry=False)
            ctx.progress.host(h.address, f"{kubeadm_action(config, node)} done")

        joining = ctx.only([n.address for n in config.all_nodes[1:]])
        if ctx.options.get("only_nodes") is not None and joining and kubeconfig is not None:
            refresh_bootstrap_token(Kube(kubeconfig), ctx.secrets.bootstrap_token)
            ctx.progress.note("bootstrap token valid for another 2 h (joining nodes to a running cluster)")
        for node in config.control_plane_nodes[1:]:  # etcd grows one member at a time
            if node.address in joining:
                join(inv[node.address])
        others = [n.address for n in config.all_nodes if kubeadm_action(config, n) == "join"
                  and n.address in joining]
        inv.parallel(others, join)


def refresh_bootstrap_token(kube: Kube, token: str, hours: int = 2) -> None:
    """(Re)create kubeadm's bootstrap token Secret so that nodes can join after the first 2 h
    (what `kubeadm token create` does, with bmctl's own token)."""
    token_id, token_secret = token.split(".")
    expires = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(hours=hours)
    kube.apply({
        "apiVersion": "v1", "kind": "Secret", "type": "bootstrap.kubernetes.io/token",
        "metadata": {"name": f"bootstrap-token-{token_id}", "namespace": "kube-system"},
        "stringData": {"token-id": token_id, "token-secret": token_secret,
                       "expiration": expires.strftime("%Y-%m-%dT%H:%M:%SZ"),
                       "usage-bootstrap-authentication": "true", "usage-bootstrap-signing": "true",
                       "auth-extra-groups": "system:bootstrappers:kubeadm:default-node-token"},
    })
