"""One lab node: the process that holds the node's private mounts and runs its sshd and static pods.

Started by `bmctl lab up` as `ip netns exec NS unshare --mount --propagation private
python -m bmctl.lab.node STATE.json`, so that everything it starts (sshd, and through SSH every
command bmctl runs; the static pods) lives in the node's network namespace and sees the node's own
/etc/kubernetes, /etc/keepalived, /etc/haproxy, ... (bind mounts of folders under the lab's state).
SIGTERM stops the pods and sshd, then the node.
"""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
from pathlib import Path

from bmctl.lab.kubelet import Runner
from bmctl.lab.workloads import ClusterAgent


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
    sshd = subprocess.Popen(["/usr/sbin/sshd", "-D", "-e", "-f", spec["sshd_config"]],
                            stdout=open(spec["sshd_log"], "ab"), stderr=subprocess.STDOUT)
    if spec.get("cgroup"):  # a real node: containerd and the kubelet under the unit supervisor
        return real_node(spec, sshd)
    runner = Runner(Path(spec["state_dir"])) if spec.get("static_pods", True) else \
        Runner(Path(spec["state_dir"]), manifests=Path("/nonexistent/bmctl-lab-no-static-pods"))
    stop = threading.Event()

    def _term(signum, frame):
        stop.set()
        runner.stopping.set()

    signal.signal(signal.SIGTERM, _term)
    signal.signal(signal.SIGINT, _term)
    thread = threading.Thread(target=runner.run, daemon=True)
    thread.start()
    agent = ClusterAgent(runner, Path(spec["state_dir"]))
    threading.Thread(target=agent.run, args=(stop,), daemon=True).start()
    while not stop.wait(0.5):
        if sshd.poll() is not None:  # keep the node reachable
            sshd = subprocess.Popen(["/usr/sbin/sshd", "-D", "-e", "-f", spec["sshd_config"]],
                                    stdout=open(spec["sshd_log"], "ab"), stderr=subprocess.STDOUT)
    thread.join(timeout=20)
    sshd.terminate()
    try:
        sshd.wait(timeout=5)
    except subprocess.TimeoutExpired:
        sshd.kill()


def real_node(spec: dict, sshd: subprocess.Popen) -> None:
    """Boot the node's units (containerd, the kubelet) under the lab's systemd stand-in; on SIGTERM
    stop them and every process left in the node's cgroup (pods, shims)."""
    from bmctl.lab import realnode, systemd

    state_dir = Path(spec["state_dir"])
    realnode.boot(state_dir, spec["cgroup"])
    supervisor = systemd.Supervisor(spec["cgroup"], state_dir)

    def _term(signum, frame):
        supervisor.stopping.set()

    signal.signal(signal.SIGTERM, _term)
    signal.signal(signal.SIGINT, _term)
    threading.Thread(target=supervisor.serve, daemon=True).start()
    supervisor.boot()
    threading.Thread(target=supervisor.run, daemon=True).start()
    while not supervisor.stopping.wait(0.5):
        if sshd.poll() is not None:
            sshd = subprocess.Popen(["/usr/sbin/sshd", "-D", "-e", "-f", spec["sshd_config"]],
                                    stdout=open(spec["sshd_log"], "ab"), stderr=subprocess.STDOUT)
    supervisor.shutdown()
    systemd.kill_cgroup(spec["cgroup"])
    sshd.terminate()
    try:
        sshd.wait(timeout=5)
    except subprocess.TimeoutExpired:
        sshd.kill()


if __name__ == "__main__":
    main(sys.argv[1])
