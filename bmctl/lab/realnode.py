"""What a lab node needs so that a real containerd, runc and kubelet run in it (LAB ONLY).

A lab node is a network namespace with a private mount and UTS namespace. Inside it, before the
node's units start (see ../shared/research/real-node-probe/FINDINGS.md for why each step is there):
- `ip netns exec` mounted a fresh /sys, which hides /sys/fs/cgroup: mount every cgroup hierarchy of
  this machine again (v1 controllers, name=systemd, the unified v2 one);
- the node's own cgroup, /bmctl-lab-<id>/<node>, in every hierarchy (cpuset with cpus and mems
  copied): the supervisor puts each unit under it, and the kubelet's cgroupRoot is under it, so
  two nodes' kubelets never see (and delete) each other's pod cgroups;
- /var/lib/kubelet made rshared (the kubelet's volume mounts must reach containers);
- private copies of the host-wide sysctls the kubelet writes, so this machine's values stay put.

`prepare_files` (run by `bmctl lab up`, outside the node) writes what an administrator who
installed containerd, runc, the CNI plugins, kubelet and kubeadm by hand would have written:
containerd's config and registry mirror, kubeadm's kubelet unit and drop-in, /etc/default/kubelet
with this machine's quirks (cgroupfs driver, no swap check, the node's cgroup root), the CNI plugins
in /opt/cni/bin, and both units enabled. Keep it apart: installing the node software becomes
bmctl's job (issue 14), and then this step goes.
"""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Callable

from bmctl.lab.systemd import _mkcg

# Folders each real lab node gets a private copy of (on top of the lab's usual ones).
NODE_DIRS = ["/var/lib/containerd", "/var/lib/kubelet", "/etc/cni", "/var/lib/cni", "/var/log/pods",
             "/var/log/containers", "/etc/containerd", "/opt/cni", "/etc/systemd/system", "/etc/default"]
# Host-wide sysctls the kubelet sets (protectKernelDefaults=false): each node writes a private copy.
KUBELET_SYSCTLS = ["vm/overcommit_memory", "vm/panic_on_oom", "kernel/panic", "kernel/panic_on_oops",
                   "kernel/keys/root_maxkeys", "kernel/keys/root_maxbytes"]
MIRROR_HOST = "registry.bmctl-lab.internal"
DEBIAN_CNI = Path("/usr/lib/cni")

KUBELET_UNIT = """\
# kubelet.service as Kubernetes' packages ship it (the binary in /usr/local/bin, as installed by hand)
[Unit]
Description=kubelet: The Kubernetes Node Agent
Documentation=https://kubernetes.io/docs/
Wants=network-online.target
After=network-online.target

[Service]
ExecStart=/usr/local/bin/kubelet
Restart=always
StartLimitInterval=0
RestartSec=10

[Install]
WantedBy=multi-user.target
"""

KUBEADM_DROPIN = """\
# Note: This dropin only works with kubeadm and kubelet v1.11+
[Service]
Environment="KUBELET_KUBECONFIG_ARGS=--bootstrap-kubeconfig=/etc/kubernetes/bootstrap-kubelet.conf --kubeconfig=/etc/kubernetes/kubelet.conf"
Environment="KUBELET_CONFIG_ARGS=--config=/var/lib/kubelet/config.yaml"
# This is a file that "kubeadm init" and "kubeadm join" generates at runtime, populating the KUBELET_KUBEADM_ARGS variable dynamically
EnvironmentFile=-/var/lib/kubelet/kubeadm-flags.env
# This is a file that the user can use for overrides of the kubelet args as a last resort. Preferably, the user should use
# the .NodeRegistration.KubeletExtraArgs object in the configuration files instead. KUBELET_EXTRA_ARGS should be sourced from this file.
EnvironmentFile=-/etc/default/kubelet
ExecStart=
ExecStart=/usr/local/bin/kubelet $KUBELET_KUBECONFIG_ARGS $KUBELET_CONFIG_ARGS $KUBELET_KUBEADM_ARGS $KUBELET_EXTRA_ARGS
"""

CONTAINERD_CONFIG = """\
# containerd 1.6 (Debian) for a lab node: cgroupfs (no systemd here), runc, the CNI plugins in
# /opt/cni/bin, registry mirrors from /etc/containerd/certs.d.
version = 2

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{sandbox_image}"
  # This machine gives no CAP_SYS_RESOURCE: runc cannot lower oom_score_adj below the parent's.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/opt/cni/bin"
    conf_dir = "/etc/cni/net.d"
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "/etc/containerd/certs.d"
"""

HOSTS_TOML = """\
# The lab's registry mirrors {host}: images are pulled from it, as at an air-gapped site.
server = "http://{registry}"

[host."http://{registry}"]
  capabilities = ["pull", "resolve"]
"""


def node_cgroup(lab_id: str, node: str) -> str:
    return f"/bmctl-lab-{lab_id}/{node}"


def prepare_files(resolve: Callable[[str], Path], cgroup: str, registry: str, sandbox_image: str) -> None:
    """Write a node's software configuration; `resolve` maps a path on the node to the file on this
    machine (in the node's private folders)."""
    def put(path: str, text: str) -> None:
        target = resolve(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)

    put("/etc/containerd/config.toml", CONTAINERD_CONFIG.format(sandbox_image=sandbox_image))
    put(f"/etc/containerd/certs.d/{MIRROR_HOST}/hosts.toml", HOSTS_TOML.format(host=MIRROR_HOST, registry=registry))
    put("/etc/systemd/system/kubelet.service", KUBELET_UNIT)
    put("/etc/systemd/system/kubelet.service.d/10-kubeadm.conf", KUBEADM_DROPIN)
    # This machine's quirks: no systemd (cgroupfs), no swap accounting to trust, and every node's
    # pods under its own cgroup (two kubelets sharing one root delete each other's pods).
    put("/etc/default/kubelet", 'KUBELET_EXTRA_ARGS="--cgroup-driver=cgroupfs --fail-swap-on=false '
                                f'--cgroup-root={cgroup} --enforce-node-allocatable="\n')
    wants = resolve("/etc/systemd/system/multi-user.target.wants")
    wants.mkdir(parents=True, exist_ok=True)
    for unit, target in (("containerd", "/lib/systemd/system/containerd.service"),
                         ("kubelet", "/etc/systemd/system/kubelet.service")):
        link = wants / f"{unit}.service"
        if not link.is_symlink():
            link.symlink_to(target)
    cni = resolve("/opt/cni/bin")
    cni.mkdir(parents=True, exist_ok=True)
    for plugin in DEBIAN_CNI.iterdir():
        if not (cni / plugin.name).exists():
            shutil.copy2(plugin, cni / plugin.name)
    resolve("/etc/cni/net.d").mkdir(parents=True, exist_ok=True)


def copy_defaults(target: Path) -> None:
    """The node's /etc/default starts as a copy of this machine's (other packages read it)."""
    if not target.exists():
        shutil.copytree("/etc/default", target, symlinks=True)


def boot(state_dir: Path, cgroup: str) -> None:
    """Inside the node's namespaces, after its private folders are mounted."""
    subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=0755", "bmctl-lab-cgroup", "/sys/fs/cgroup"], check=True)
    for line in Path("/proc/1/mounts").read_text().splitlines():
        _, mountpoint, fstype, opts = line.split()[:4]
        if fstype not in ("cgroup", "cgroup2") or not mountpoint.startswith("/sys/fs/cgroup/"):
            continue
        keep = [o for o in opts.split(",") if o not in ("rw", "ro", "relatime", "nosuid", "nodev", "noexec")]
        Path(mountpoint).mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", "-t", fstype, *(["-o", ",".join(keep)] if keep else []), fstype, mountpoint],
                       check=True)
    for line in Path("/proc/self/mounts").read_text().splitlines():
        mountpoint, fstype = line.split()[1:3]
        if fstype in ("cgroup", "cgroup2") and mountpoint.startswith("/sys/fs/cgroup/"):
            _mkcg(mountpoint, cgroup)
    subprocess.run(["mount", "--make-rshared", "/var/lib/kubelet"], check=False)
    sysctls = state_dir / "sysctl"
    sysctls.mkdir(exist_ok=True)
    for name in KUBELET_SYSCTLS:
        private = sysctls / name.replace("/", "_")
        if not private.exists():
            private.write_text(Path("/proc/sys", name).read_text())
        subprocess.run(["mount", "--bind", str(private), f"/proc/sys/{name}"], check=True)
    for folder in ("/run/containerd", "/run/netns", "/run/flannel"):
        Path(folder).mkdir(parents=True, exist_ok=True)
