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
from bmctl.render.kubelet import BOOTSTRAP_CONFIG, BOOTSTRAP_DROPIN
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


# kubeadm init/join on a node, safe to interrupt (bmctl killed, connection lost) and to re-run:
# - it runs under a lock on the node, with its output in a 0600 log there, so an attempt whose bmctl
#   died runs on to its end, and a new attempt waits for it instead of racing it;
# - "done" is recorded on the node when kubeadm succeeds; a re-run then does nothing;
# - an attempt that was cut short ("started" without "done") is undone with `kubeadm reset -f`
#   before kubeadm runs again (kubeadm itself refuses to run over its own half-written state);
# - a node that has its set-up file (admin.conf / kubelet.conf) but no record of ours was set up by an earlier
#   bmctl or by hand: it is left alone.
# Arguments: the state folder, the file that shows the node is set up, the LB bootstrap kubelet drop-in
# and its configuration (bmctl/render/kubelet.py), then kubeadm's arguments.
# Prints "ran" or "had".
KUBEADM_STATE = "/var/lib/bmctl/kubeadm"
KUBEADM_STATE_FILES = [f"{KUBEADM_STATE}/{f}" for f in ("done", "started", "kubeadm.log", "reset.log")]
_KUBEADM = r'''
set -u
umask 077
state=$1; setup=$2; dropin=$3; standalone=$4; shift 4
mkdir -p "$state"
exec 9>"$state/lock"
flock 9
if [ -f "$state/done" ] || { [ ! -f "$state/started" ] && [ -f "$setup" ]; }; then
  : > "$state/done"; echo had; exit 0
fi
if [ -e "$dropin" ]; then
  # the kubelet ran standalone until now (load-balancer node): kubeadm configures and starts it;
  # the Keepalived and HAProxy containers keep running meanwhile
  rm -f "$dropin" "$standalone"
  systemctl daemon-reload && systemctl stop kubelet
fi
if [ -f "$state/started" ]; then
  echo "an earlier kubeadm $1 was cut short: kubeadm reset -f first" >&2
  # kubeadm reset empties the manifests folder: keep the static pods that are not kubeadm's
  mkdir -p "$state/keep"
  for f in /etc/kubernetes/manifests/*.yaml; do
    case "${f##*/}" in etcd.yaml|kube-apiserver.yaml|kube-controller-manager.yaml|kube-scheduler.yaml) ;;
      *) [ -f "$f" ] && cp -p "$f" "$state/keep/" ;; esac
  done
  kubeadm reset -f > "$state/reset.log" 2>&1 || { tail -n 40 "$state/reset.log" >&2; exit 1; }
  mkdir -p /etc/kubernetes/manifests
  for f in "$state/keep"/*.yaml; do [ -f "$f" ] && mv -f "$f" /etc/kubernetes/manifests/; done
fi
: > "$state/started"
kubeadm "$@" > "$state/kubeadm.log" 2>&1 || { tail -n 40 "$state/kubeadm.log" >&2; exit 1; }
mv -f "$state/started" "$state/done"
echo ran
'''


def run_kubeadm(host: Host, args: list[str], setup_file: str) -> bool:
    """kubeadm init/join as described above; True when it ran, False when the node was set up."""
    res = host.run(["sh", "-c", _KUBEADM, "sh", KUBEADM_STATE, setup_file, BOOTSTRAP_DROPIN, BOOTSTRAP_CONFIG, *args,
                    # Keepalived's and HAProxy's static pods are in the manifests folder already
                    "--ignore-preflight-errors=DirAvailable--etc-kubernetes-manifests"],
                   step=f"kubeadm {args[0]}", timeout=900, retry=False)
    return res.stdout.strip().endswith("ran")


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
            steps.append(Step(node.address, what, [kubeadm_config(config, node, ctx.secrets, cgroup_driver=ctx.cgroup_driver())]))
        steps.append(Step(config.control_plane_nodes[0].address,
                          f"fetch admin.conf into the workspace as {config.name}-kubeconfig"))
        return steps

    def run(self, ctx: Context) -> None:
        config, inv = ctx.config, ctx.inventory
        first = config.control_plane_nodes[0]
        host = inv[first.address]
        ctx.record(first.address, sync_files(host, [kubeadm_config(config, first, ctx.secrets, cgroup_driver=ctx.cgroup_driver())]))
        if run_kubeadm(host, ["init", "--config", KUBEADM_CONFIG, "--upload-certs"], ADMIN_CONF):
            ctx.progress.host(first.address, "kubeadm init done")
        else:
            ctx.progress.host(first.address, "already initialized")
        kubeconfig = ctx.options.get("kubeconfig_path")
        if kubeconfig is not None:
            write_private(kubeconfig, _cat(host, ADMIN_CONF, secret=True))
        ca_hash = ca_cert_hash(_cat(host, CA_CERT))

        def join(h: Host) -> None:
            node = next(n for n in config.all_nodes if n.address == h.address)
            ctx.record(h.address, sync_files(h, [kubeadm_config(config, node, ctx.secrets, ca_hash, ctx.cgroup_driver())]))
            if run_kubeadm(h, ["join", "--config", KUBEADM_CONFIG], KUBELET_CONF):
                ctx.progress.host(h.address, f"{kubeadm_action(config, node)} done")
            else:
                ctx.progress.host(h.address, "already joined")

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
