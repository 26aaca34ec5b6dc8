"""The README's quickstart, as a newcomer runs it: `bmctl lab up` then `bmctl lab demo` from this
machine (which joins the lab's bridge), a LoadBalancer Service answering a plain HTTP request from
here, directly and through the bundled ingress, and `bmctl lab down` leaving nothing behind. (One control-plane node: the default six-node
lab is what test_lab_kubernetes.py runs.)"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import urllib.request

from lab.harness import lab_prerequisites
from conftest import require


def bmctl(workspace, *args, timeout=900):
    return subprocess.run([sys.executable, "-m", "bmctl", *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "BMCTL_WORKSPACE": str(workspace), "COLUMNS": "200"})


def test_lab_up_then_demo_gives_a_service_answering_here(tmp_path):
    missing = lab_prerequisites(real_nodes=True)
    require(not missing, f"lab prerequisites: {', '.join(missing)}")
    workspace = tmp_path / "bmctl-workspace"
    links_before = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout.count("\n")
    up = bmctl(workspace, "lab", "up", "--control-planes", "1", "--lb-nodes", "0", "--workers", "0")
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        assert "Lab up: 1 nodes on" in up.stdout
        demo = bmctl(workspace, "lab", "demo")
        assert demo.returncode == 0, demo.stdout + demo.stderr
        assert "Phase 8/8: Verification" in demo.stdout  # the bundled ingress is on: its phase is in
        m = re.search(r"answers on http://([0-9.]+)/", demo.stdout)
        assert m, demo.stdout
        with urllib.request.urlopen(f"http://{m.group(1)}/", timeout=5) as resp:  # from this machine
            assert resp.status == 200 and "pod=web-" in resp.read().decode()
        # the same pods through the bundled ingress (an HTTPRoute), from this machine too
        m = re.search(r"answers through the ingress on http://([0-9.]+)/", demo.stdout)
        assert m, demo.stdout
        request = urllib.request.Request(f"http://{m.group(1)}/", headers={"Host": "web.lab.test"})
        with urllib.request.urlopen(request, timeout=5) as resp:
            body = resp.read().decode()
            assert resp.status == 200 and "pod=web-" in body and "vhost=web.lab.test" in body
        status = bmctl(workspace, "lab", "status")
        assert status.returncode == 0 and "active" in status.stdout, status.stdout + status.stderr
    finally:
        down = bmctl(workspace, "lab", "down")
    assert down.returncode == 0, down.stdout + down.stderr
    assert not (workspace / "lab" / "lab-state").exists()
    assert subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout.count("\n") == links_before
