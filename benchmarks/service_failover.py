"""Service IP failover on the lab: MetalLB layer 2, time from cutting the announcing LB node's link
to the first successful HTTP request through the Service's external IP.

Run (root, from the repository; needs the Go-built parts: python -m bmctl.lab.binaries):
    python benchmarks/service_failover.py --reps 10

Builds a lab of 3 control-plane + 2 LB + 1 worker nodes, runs `bmctl create cluster`, creates a
LoadBalancer Service with a backend on the worker, then --reps times: finds the LB node that answers
ARP for the Service IP, sets its veth down in the bridge namespace, and sends a new TCP connection +
GET every 100 ms (500 ms timeout) from the client namespace until one succeeds; the link comes back
and the next round waits until the IP answers again. Results: stdout and
benchmarks/results/service_failover.json.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from lab.harness import Kube, LabHarness, announcer, http_get, start_web_service, wait_for  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=10)
    args = ap.parse_args()
    lab = LabHarness(Path(tempfile.mkdtemp(prefix="bmctl-bench-")), control_planes=3, lb_nodes=2, workers=1)
    times = []
    try:
        lab.up()
        start = time.monotonic()
        proc = lab.bmctl("create", "cluster", timeout=900)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        create_s = time.monotonic() - start
        ip, _ = start_web_service(lab, Kube(lab))
        wait_for(lambda: http_get(lab, ip), 60, "the Service IP", 0.2)
        for i in range(args.reps):
            node = announcer(lab, ip)
            t0 = time.monotonic()
            lab.set_link(node, up=False)
            try:
                wait_for(lambda: http_get(lab, ip, timeout=0.5), 120, "the Service IP after the cut", 0.1)
                times.append(time.monotonic() - t0)
            finally:
                lab.set_link(node, up=True)
            print(f"rep {i + 1}: {times[-1]:.2f} s (cut {node['name']})", flush=True)
            time.sleep(15)  # the cut node rejoins memberlist before the next round
            wait_for(lambda: http_get(lab, ip), 60, "the Service IP to settle", 0.2)
    finally:
        lab.down()
    out = ROOT / "benchmarks" / "results"
    out.mkdir(exist_ok=True)
    result = {"create_cluster_s": create_s, "service_failover_s": times}
    (out / "service_failover.json").write_text(json.dumps(result, indent=2))
    print(f"bmctl create cluster (6 nodes, from nothing): {create_s:.1f} s")
    print(f"Service IP failover after a link cut: median {statistics.median(times):.2f} s, "
          f"max {max(times):.2f} s over {len(times)} runs")


if __name__ == "__main__":
    main()
