"""The LB static pods' wrapper as PID 1 of a container: it must stop on the kubelet's SIGTERM and on
the image's STOPSIGNAL. PID 1 of a PID namespace ignores every signal it has no handler for, so a
shell that traps only TERM would sit through HAProxy's SIGUSR1 (the official image's STOPSIGNAL)
until the kubelet's SIGKILL 30 s later."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import EXAMPLES, require_root, require_tool


def wrapper(tmp_path: Path, pod: str) -> str:
    """The sh script the rendered static pod runs (from an example's dry run)."""
    workspace = tmp_path / "ws"
    example = next(p for p in EXAMPLES if p.stem == "ha-control-plane")
    subprocess.run([sys.executable, "-m", "bmctl", "create", "cluster", "-c", str(example), "--dry-run",
                    "--workspace", str(workspace)], check=True, capture_output=True)
    manifest = next(workspace.glob(f"*/dry-run/*/etc/kubernetes/manifests/{pod}.yaml"))
    spec = yaml.safe_load(manifest.read_text())["spec"]["containers"][0]
    assert spec["command"][:2] == ["/bin/sh", "-c"]
    return spec["command"][2]


def run_as_pid1(tmp_path: Path, script: str, daemon: str) -> tuple[subprocess.Popen, int]:
    """Run the script as PID 1 of a new PID namespace, its daemon replaced by a sleeping stand-in
    (the daemon is not what is tested here), its status folder in tmp_path."""
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    (bindir / daemon).write_text("#!/bin/sh\ncase \"$*\" in *-c\\ *) exit 0;; esac\nexec sleep 600\n")
    (bindir / daemon).chmod(0o755)
    script = script.replace("/var/lib/bmctl/lb", str(tmp_path / "status"))
    (tmp_path / "status").mkdir(exist_ok=True)
    env = {**os.environ, "PATH": f"{bindir}:/usr/bin:/bin"}
    proc = subprocess.Popen(["unshare", "--pid", "--fork", "--mount-proc", "sh", "-c", script, daemon],
                            env=env, start_new_session=True)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
        if children and (tmp_path / "status" / f"{daemon}.loaded").exists():
            return proc, int(children[0])
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    raise AssertionError("the wrapper did not start")


def stops_within(proc: subprocess.Popen, pid1: int, sig: int, seconds: float) -> bool:
    os.kill(pid1, sig)
    try:
        proc.wait(seconds)
        return True
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        return False


@pytest.mark.parametrize("pod,daemon,stop_signal", [("haproxy", "haproxy", signal.SIGUSR1),
                                                     ("haproxy", "haproxy", signal.SIGTERM),
                                                     ("keepalived", "keepalived", signal.SIGTERM)])
def test_the_wrapper_stops_at_once_on_the_stop_signal(tmp_path, pod, daemon, stop_signal):
    require_root()
    require_tool("unshare")
    proc, pid1 = run_as_pid1(tmp_path, wrapper(tmp_path, pod), daemon)
    assert stops_within(proc, pid1, stop_signal, 3), f"{pod}'s wrapper ignored {stop_signal.name} as PID 1"
    assert not (tmp_path / "status" / f"{daemon}.loaded").exists()  # it cleaned up on the way out


def test_without_its_trap_pid1_ignores_sigusr1(tmp_path):
    """The check above bites: the same wrapper without SIGUSR1 in its trap sits through it."""
    require_root()
    script = wrapper(tmp_path, "haproxy")
    assert " TERM INT USR1" in script
    proc, pid1 = run_as_pid1(tmp_path, script.replace(" TERM INT USR1", " TERM INT"), "haproxy")
    assert not stops_within(proc, pid1, signal.SIGUSR1, 2)


def test_haproxy_runs_as_root_in_its_pod(tmp_path):
    """The official image's user (uid 99) could not bind port 443 or write the status file."""
    workspace = tmp_path / "ws"
    example = next(p for p in EXAMPLES if p.stem == "ha-control-plane")
    subprocess.run([sys.executable, "-m", "bmctl", "create", "cluster", "-c", str(example), "--dry-run",
                    "--workspace", str(workspace)], check=True, capture_output=True)
    manifest = next(workspace.glob("*/dry-run/*/etc/kubernetes/manifests/haproxy.yaml"))
    ctx = yaml.safe_load(manifest.read_text())["spec"]["containers"][0]["securityContext"]
    assert ctx["runAsUser"] == 0 and ctx["runAsGroup"] == 0
