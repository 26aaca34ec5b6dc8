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

A lab node starts bare, like a machine fresh from the installer: no containerd, runc, CNI plugin,
crictl, kubelet or kubeadm on its PATH or among its units. Its /usr/local/bin, /usr/local/sbin,
/opt/cni/bin, /etc/systemd/system and /etc/containerd are private and empty, and this machine's own
Debian containerd, runc and CNI plugins are masked (HIDDEN: /dev/null or an empty folder mounted
over them). bmctl installs the node software from its bundle; the lab's unit supervisor then runs
the units bmctl installed, as systemd would (its `systemctl` is mounted over /usr/bin/systemctl).
`prepare_files` (run by `bmctl lab up`, outside the node) writes only what this machine's owner
would: /etc/default/kubelet with the quirks of nodes that share one kernel (each node's pods under
its own cgroup root, no node-allocatable enforcement, no swap check).
"""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Callable

from bmctl.lab.systemd import _mkcg

# Folders each real lab node gets a private copy of (on top of the lab's usual ones).
NODE_DIRS = ["/var/lib/containerd", "/var/lib/kubelet", "/etc/cni", "/var/lib/cni", "/var/log/pods",
             "/var/log/containers", "/etc/containerd", "/opt/cni", "/etc/systemd/system", "/etc/default",
             "/usr/local/bin", "/usr/local/sbin", "/var/cache/bmctl"]
# Host-wide sysctls the kubelet sets (protectKernelDefaults=false): each node writes a private copy.
KUBELET_SYSCTLS = ["vm/overcommit_memory", "vm/panic_on_oom", "kernel/panic", "kernel/panic_on_oops",
                   "kernel/keys/root_maxkeys", "kernel/keys/root_maxbytes"]
MIRROR_HOST = "registry.bmctl-lab.internal"

# This machine's node software, hidden on every lab node (paths that exist are masked).
HIDDEN_FILES = ["/usr/bin/containerd", "/usr/bin/containerd-shim", "/usr/bin/containerd-shim-runc-v1",
                "/usr/bin/containerd-shim-runc-v2", "/usr/bin/ctr", "/usr/sbin/runc", "/usr/bin/runc",
                "/usr/bin/crictl", "/usr/bin/kubelet", "/usr/bin/kubeadm", "/usr/bin/kubectl",
                "/lib/systemd/system/containerd.service", "/usr/lib/systemd/system/containerd.service",
                "/lib/systemd/system/kubelet.service", "/usr/lib/systemd/system/kubelet.service"]
HIDDEN_DIRS = ["/usr/lib/cni", "/usr/libexec/cni"]
SYSTEMCTL = ["/usr/bin/systemctl"]


def node_cgroup(lab_id: str, node: str) -> str:
    return f"/bmctl-lab-{lab_id}/{node}"


def prepare_files(resolve: Callable[[str], Path], cgroup: str) -> None:
    """This machine's quirks in the node's /etc/default/kubelet (kubeadm's drop-in reads it);
    `resolve` maps a path on the node to the file on this machine (in the node's private folders)."""
    target = resolve("/etc/default/kubelet")
    target.parent.mkdir(parents=True, exist_ok=True)
    # Every node's pods under its own cgroup (two kubelets sharing one root delete each other's
    # pods); no swap accounting to trust; nothing to reserve on a machine shared by all nodes.
    target.write_text(f'KUBELET_EXTRA_ARGS="--fail-swap-on=false --cgroup-root={cgroup} --enforce-node-allocatable="\n')


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
