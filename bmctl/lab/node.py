"""One lab node: the process that holds the node's private mounts and runs its sshd and units.

Started by `bmctl lab up` as `ip netns exec NS unshare --mount --uts --propagation private
python -m bmctl.lab.node STATE.json`, so that everything it starts (sshd, and through SSH every
command bmctl runs; containerd, the kubelet and the pods) lives in the node's network namespace and
sees the node's own /etc/kubernetes, /etc/keepalived, /var/lib/kubelet, ... (bind mounts of folders
under the lab's state). A real node runs containerd and the kubelet under the lab's unit supervisor
(bmctl/lab/systemd.py); a bare node (benchmarks that only write files) runs sshd alone.
SIGTERM stops the units and every process left in the node's cgroup, then sshd.

The node's network configuration (its address on eth0 and its configured routes) is also kept the
way systemd-networkd or ifupdown keeps a real machine's: an interface taken down administratively
(`ip link set eth0 down`) loses every route through it, and when it comes up again the configured
routes are put back (`_network_config`). A carrier loss (the bridge side of the veth down, as a
pulled cable) keeps the routes, marked linkdown, as the kernel does on a real machine.
"""
from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path


def _sshd(spec: dict) -> subprocess.Popen:
    return subprocess.Popen(["/usr/sbin/sshd", "-D", "-e", "-f", spec["sshd_config"]],
                            stdout=open(spec["sshd_log"], "ab"), stderr=subprocess.STDOUT)


_LINK_EVENT = re.compile(r"^\d+:\s+([^:@\s]+)(?:@\S+)?:\s+<([^>]*)>")


def _network_config(spec: dict) -> subprocess.Popen | None:
    """Watch the node's links (`ip -o monitor link`, in the node's network namespace) and put the
    configured routes ([destination, gateway] pairs in spec["routes"]) back each time the interface
    comes up. Returns the monitor (stopped with the node), None without configured routes."""
    iface, routes = spec.get("interface", "eth0"), spec.get("routes") or []
    if not routes:
        return None
    monitor = subprocess.Popen(["ip", "-o", "monitor", "link"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                               text=True)

    def watch() -> None:
        for line in monitor.stdout:
            event = _LINK_EVENT.match(line)
            if event and event.group(1) == iface and "UP" in event.group(2).split(","):
                for dst, via in routes:
                    subprocess.run(["ip", "route", "replace", dst, "via", via, "dev", iface],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    threading.Thread(target=watch, daemon=True).start()
    return monitor


def main(state_file: str) -> None:
    spec = json.loads(Path(state_file).read_text())
    if spec.get("hostname"):  # own UTS namespace: kubeadm names the node after it
        subprocess.run(["hostname", spec["hostname"]], check=True)
    for src, dst in spec["binds"]:
        Path(src).mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", "--bind", src, dst], check=True)
    for src, dst in spec.get("optional_binds", []):  # only over files and folders this machine has
        if Path(dst).exists():
            subprocess.run(["mount", "--bind", src, dst], check=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=0755", "bmctl-lab-run", "/run"], check=True)
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())
    signal.signal(signal.SIGINT, lambda signum, frame: stop.set())
    supervisor = None
    if spec.get("cgroup"):  # a real node: containerd and the kubelet under the unit supervisor
        from bmctl.lab import realnode, systemd
        realnode.boot(Path(spec["state_dir"]), spec["cgroup"])
        supervisor = systemd.Supervisor(spec["cgroup"], Path(spec["state_dir"]))
        supervisor.stopping = stop
        threading.Thread(target=supervisor.serve, daemon=True).start()
        supervisor.boot()
        threading.Thread(target=supervisor.run, daemon=True).start()
    monitor = _network_config(spec)
    sshd = _sshd(spec)
    while not stop.wait(0.5):
        if sshd.poll() is not None:  # keep the node reachable
            sshd = _sshd(spec)
    if supervisor is not None:
        from bmctl.lab import systemd
        supervisor.shutdown()
        systemd.kill_cgroup(spec["cgroup"])
    if monitor is not None:
        monitor.terminate()
    sshd.terminate()
    try:
        sshd.wait(timeout=5)
    except subprocess.TimeoutExpired:
        sshd.kill()


if __name__ == "__main__":
    main(sys.argv[1])
