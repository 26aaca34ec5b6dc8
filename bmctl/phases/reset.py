"""`bmctl reset cluster`: undo on every node what create did, and check that nothing is left running."""
from __future__ import annotations

import time

from bmctl.config.model import APISERVER_PORT, MEMBERLIST_PORT
from bmctl.host import Host
from bmctl.host.files import remove_files
from bmctl.phases.base import Context, Phase, Step
from bmctl.state import holds
from bmctl.phases.kubeadm import KUBEADM_STATE_FILES
from bmctl.phases.network import flannel_leftovers, node_cleanup_argv
from bmctl.phases.preflight import _listeners
from bmctl.phases.provision import MODULES_FILE, RECORD, SYSCTL_FILE
from bmctl.render import node_software as ns
from bmctl.render import bgp
from bmctl.render.controlplane_lb import HAPROXY_HEALTH_PORT, lb_node_paths, status_file, vip_holder_manifest
from bmctl.render.kubeadm import KUBEADM_CONFIG
from bmctl.render.kubelet import BOOTSTRAP_CONFIG, BOOTSTRAP_DROPIN

LB_STATE_FILES = [status_file("haproxy"), status_file("keepalived"), bgp.VIP_STATUS, bgp.STEADY_ROUTES, BOOTSTRAP_DROPIN,
                  BOOTSTRAP_CONFIG]
NODE_FILES = [KUBEADM_CONFIG, MODULES_FILE, SYSCTL_FILE, *KUBEADM_STATE_FILES]
PURGED_FILES = [ns.CONTAINERD_CONFIG, ns.CONTAINERD_UNIT, ns.KUBELET_UNIT, ns.KUBEADM_DROPIN,
                *ns.PROXY_DROPINS.values()]
STOP_SECONDS = 60
KEEPALIVED_STOP_SECONDS = 15
# BGP mode: FRR's folders (its live configuration, MetalLB's once it ran, its log and sockets)
FRR_FOLDERS = [bgp.BOOT_DIR, bgp.CONF_DIR, bgp.SOCKETS_DIR]


ETCD_PORTS = (2379, 2380)  # etcd's client and peer ports (kubeadm's local etcd)
ETCD_DATA = "/var/lib/etcd"  # kubeadm's local etcd data folder (bmctl sets no other)


def lb_files(config) -> list[str]:
    """What bmctl leaves on an LB node: its files (per load-balancer type), the pods' state files,
    the bootstrap kubelet's, and in BGP mode FRR's folders."""
    return lb_node_paths(config) + LB_STATE_FILES + (FRR_FOLDERS if config.lb.type == "bgp" else [])


def remove_lb_files(host: Host, config) -> None:
    """Remove lb_files(config) from an LB node (FRR's folders with what FRR wrote in them)."""
    remove_files(host, lb_node_paths(config) + LB_STATE_FILES)
    if config.lb.type == "bgp":
        host.run(["rm", "-rf", "--", *FRR_FOLDERS], step="remove FRR's folders")


def _listening(host: Host, ports: list[int]) -> list[int]:
    out = host.run(["ss", "-Hltnu"], step="list listening ports", sudo=False).stdout
    held = {port for _proto, port in _listeners(out.splitlines())}
    return [p for p in ports if p in held]


# --purge: the services stopped and disabled, then every file bmctl installed from a bundle (as its
# record lists them), the units and drop-ins, containerd's configuration and the record.
_PURGE = r'''
record=$1; shift
systemctl disable --now kubelet >/dev/null 2>&1 || true
systemctl disable --now containerd >/dev/null 2>&1 || true
if [ -f "$record" ]; then
  while read -r sum size mtime path; do
    case $path in /usr/local/bin/*|/usr/local/sbin/*|/opt/cni/bin/*) rm -f -- "$path";; esac
  done < "$record"
fi
rm -f -- "$record" "$@" /var/cache/bmctl/node-software-*.tar.gz
rm -rf -- /etc/containerd/certs.d
for d in /etc/systemd/system/containerd.service.d /etc/systemd/system/kubelet.service.d; do
  rmdir -- "$d" 2>/dev/null || true
done
systemctl daemon-reload >/dev/null 2>&1 || true
'''


class Reset(Phase):
    name = "reset"
    title = "Reset every node"

    def __init__(self, purge: bool = False) -> None:
        self.purge = purge

    def _files(self, ctx: Context, address: str) -> list[str]:
        lb = ctx.config.bundled and address in {n.address for n in ctx.config.lb_nodes}
        return (lb_files(ctx.config) if lb else []) + NODE_FILES

    def _ports(self, ctx: Context, address: str) -> list[int]:
        ports = []
        if address in {n.address for n in ctx.config.control_plane_nodes}:
            ports += [APISERVER_PORT, *ETCD_PORTS]
        if ctx.config.bundled and address in {n.address for n in ctx.config.lb_nodes}:
            ports += [ctx.config.lb.ports.controlPlaneLBPort, HAPROXY_HEALTH_PORT, MEMBERLIST_PORT]
        return ports

    def plan(self, ctx: Context) -> list[Step]:
        steps = []
        for node in ctx.config.all_nodes:
            steps.append(Step(node.address, "kubeadm reset -f (static pods, etcd member, certificates)"))
            steps.append(Step(node.address, "remove " + ", ".join(self._files(ctx, node.address))))
            steps.append(Step(node.address, "remove what flannel leaves: " + flannel_leftovers(ctx.config)))
            ports = self._ports(ctx, node.address)
            if ports:
                steps.append(Step(node.address, "check nothing listens on " + ", ".join(map(str, ports)) +
                                  f" and the VIP {ctx.config.lb.vips.controlPlaneVIP} is gone"))
            steps.append(Step(node.address, "--purge: stop and disable containerd and the kubelet; remove the "
                                            "node software bmctl installed from the bundle, its units and "
                                            "containerd's configuration" if self.purge else
                              "leave the node software (containerd, kubelet, kubeadm, ...) installed; "
                              "--purge removes what bmctl installed"))
        return steps

    def run(self, ctx: Context) -> None:
        vip = ctx.config.lb.vips.controlPlaneVIP

        def reset(host: Host) -> None:
            lb = ctx.config.bundled and host.address in {n.address for n in ctx.config.lb_nodes}
            if lb:  # the VIP's holder first, stopped by the kubelet (SIGTERM): Keepalived hands the VIP over
                # and removes it; in BGP mode the VIP leaves lo and bgpd closes its sessions (Cease)
                remove_files(host, [vip_holder_manifest(ctx.config)])
                deadline = time.monotonic() + KEEPALIVED_STOP_SECONDS
                while holds(host, vip) and time.monotonic() < deadline:
                    time.sleep(0.5)
            has_kubeadm = host.run(["sh", "-c", "command -v kubeadm"], step="find kubeadm", check=False).rc == 0
            if has_kubeadm:
                host.run(["kubeadm", "reset", "-f"], step="kubeadm reset", timeout=300)
            if lb:  # a Keepalived that was killed (no kubelet to stop it) leaves the address behind
                _drop_vip(host, vip)
            if lb:
                remove_lb_files(host, ctx.config)
            remove_files(host, NODE_FILES)
            if has_kubeadm:  # the LB bootstrap drop-in may be gone: systemd forgets it
                host.run(["systemctl", "daemon-reload"], step="systemctl daemon-reload", check=False)
            host.run(node_cleanup_argv(ctx.config), step="remove flannel's files, links and routes")
            ports = self._ports(ctx, host.address)
            deadline = time.monotonic() + STOP_SECONDS
            while True:
                left = _listening(host, ports)
                vip_here = holds(host, vip)
                if not left and not vip_here:
                    break
                if time.monotonic() > deadline:
                    what = ", ".join([f"port {p}" for p in left] + (["the VIP"] if vip_here else []))
                    raise_stuck(host, what)
                time.sleep(0.5)
            if has_kubeadm and host.address in {n.address for n in ctx.config.control_plane_nodes}:
                # kubeadm reset empties etcd's data folder before it stops the kubelet, so the etcd
                # still running writes into it again, and the next `kubeadm init` refuses the folder
                # ("/var/lib/etcd is not empty"): empty it again now that etcd is gone (ports above)
                host.run(["find", ETCD_DATA, "-mindepth", "1", "-delete"], step="empty etcd's data folder",
                         check=False)
            if self.purge:
                host.run(["sh", "-c", _PURGE, "sh", RECORD, *PURGED_FILES], step="remove the node software")
            ctx.progress.host(host.address, "reset: " + ("kubeadm reset, " if has_kubeadm else "") +
                              "bmctl files removed, nothing left listening" +
                              ("; node software removed" if self.purge else ""))

        ctx.inventory.parallel([n.address for n in ctx.config.all_nodes], reset)


def _vip_lines(host: Host, vip: str) -> list[list[str]]:
    out = host.run(["ip", "-o", "addr", "show"], step="read addresses", sudo=False).stdout
    return [line.split() for line in out.splitlines() if f" {vip}/" in line]


def _drop_vip(host: Host, vip: str) -> None:
    """Remove the VIP from this node's interfaces (`ip -o addr` lines: N: IFACE inet VIP/PREFIX ...)."""
    for fields in _vip_lines(host, vip):
        address = next(f for f in fields if f.startswith(f"{vip}/"))
        host.run(["ip", "addr", "del", address, "dev", fields[1]], step="remove the VIP", check=False)


def raise_stuck(host: Host, what: str) -> None:
    from bmctl.host import HostError
    raise HostError(host.address, "stop", f"{what} still in use {STOP_SECONDS} s after the static pods were "
                    "removed", "check the node's kubelet and container runtime, then re-run reset.")
