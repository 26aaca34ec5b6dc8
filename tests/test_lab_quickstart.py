"""The README's first command, as a newcomer runs it: `./quickstart` sets everything up (Debian
packages, the virtualenv, the lab's builds: all cached here, so it checks and moves on), brings up
the lab with this machine on its bridge, creates its cluster and shows a LoadBalancer Service and an
HTTPRoute answering; both answer a plain HTTP request from here. A second `./quickstart` keeps the
lab and the cluster and answers again. `bmctl lab down` then leaves nothing behind. (One node: the
default six-node lab is what test_lab_kubernetes.py runs.)"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from bmctl.lab.lab import host_cgroup_v1
from lab.harness import lab_prerequisites
from conftest import require

REPO = Path(__file__).resolve().parent.parent


def quickstart(workspace: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "BMCTL_WORKSPACE": str(workspace), "COLUMNS": "200",
           "QUICKSTART_LAB_FLAGS": "--control-planes 1 --lb-nodes 0 --workers 0",
           "BMCTL_VENV": str(Path(sys.executable).parent.parent)}  # the virtualenv running these tests
    return subprocess.run([str(REPO / "quickstart")], capture_output=True, text=True, timeout=1500, env=env,
                          stdin=subprocess.DEVNULL)


def answers(out: str) -> tuple[str, str]:
    """The Service's and the ingress's URLs the demo printed, each checked from this machine."""
    service = re.search(r"answers on (http://[0-9.]+/)", out)
    ingress = re.search(r"answers through the ingress on (http://[0-9.]+/)", out)
    assert service and ingress, out
    with urllib.request.urlopen(service.group(1), timeout=5) as resp:
        assert resp.status == 200 and "pod=web-" in resp.read().decode()
    request = urllib.request.Request(ingress.group(1), headers={"Host": "web.lab.test"})
    with urllib.request.urlopen(request, timeout=5) as resp:
        body = resp.read().decode()
        assert resp.status == 200 and "pod=web-" in body and "vhost=web.lab.test" in body
    return service.group(1), ingress.group(1)


def test_quickstart_gives_a_service_and_an_httproute_answering_here_and_runs_again(tmp_path):
    missing = lab_prerequisites(real_nodes=True)
    require(not missing, f"lab prerequisites: {', '.join(missing)}")
    workspace = tmp_path / "bmctl-workspace"
    links_before = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout.count("\n")
    try:
        first = quickstart(workspace)
        assert first.returncode == 0, first.stdout[-4000:] + first.stderr[-4000:]
        out = first.stdout
        assert "Lab up: 1 nodes on" in out and "Phase 8/8: Verification" in out, out[-4000:]
        if host_cgroup_v1():  # the lab says it opts in, and its config does
            assert "spec.nodeConfig.allowCgroupV1: true" in out, out[-4000:]
            assert "allowCgroupV1: true" in (workspace / "lab" / "lab.yaml").read_text()
        urls = answers(out)
        assert f"--kubeconfig {workspace}/lab/lab-kubeconfig get nodes,pods -A" in out and "bmctl lab down" in out
        start = time.monotonic()
        second = quickstart(workspace)
        took = time.monotonic() - start
        assert second.returncode == 0, second.stdout[-4000:] + second.stderr[-4000:]
        assert "Lab already up" in second.stdout and "installing" not in second.stdout
        assert answers(second.stdout) == urls  # the same cluster, the same addresses
        print(f"second ./quickstart: {took:.0f} s")
        status = subprocess.run([sys.executable, "-m", "bmctl", "lab", "status"], capture_output=True, text=True,
                                env={**os.environ, "BMCTL_WORKSPACE": str(workspace), "COLUMNS": "200"})
        assert status.returncode == 0 and "active" in status.stdout, status.stdout + status.stderr
    finally:
        down = subprocess.run([sys.executable, "-m", "bmctl", "lab", "down"], capture_output=True, text=True,
                              env={**os.environ, "BMCTL_WORKSPACE": str(workspace)})
    assert down.returncode == 0, down.stdout + down.stderr
    assert not (workspace / "lab" / "lab-state").exists()
    assert subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout.count("\n") == links_before
