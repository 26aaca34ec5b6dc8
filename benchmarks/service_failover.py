"""Service IP failover and `create cluster` on the lab's real nodes: MetalLB layer 2, time from
cutting the announcing LB node's link to the first successful HTTP request through the Service's
external IP, and where that time goes; `create cluster` per phase; idle CPU and memory per node.

Run (root, from the repository; the lab builds what is missing first):
    python benchmarks/service_failover.py --reps 10

Builds a lab of 3 control-plane + 2 LB + 1 worker real nodes, times `bmctl create cluster` from
nothing (per phase, from its progress output), lets the cluster settle and samples each node's CPU
and memory (its cgroup: kubelet, containerd and every pod; sshd aside) for --idle seconds; then
creates a Deployment on the worker behind a LoadBalancer Service and, --reps times: finds the LB node
that answers ARP for the Service IP, sets its veth down in the bridge namespace, and sends a new TCP
connection + GET every 100 ms (500 ms timeout) from the client namespace until one succeeds; meanwhile
it watches the client's ARP entry for the IP (the new speaker's gratuitous ARP) and afterwards reads,
in the surviving speaker's log, when memberlist declared the cut node failed. The link comes back and
the next round waits until the IP answers again. Results: stdout and
benchmarks/results/service_failover.json.
"""
from __future__ import annotations

import argparse
import datetime
import json
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from lab.harness import Kube, LabHarness, announcer, http_get, start_web_service, wait_for  # noqa: E402

from bmctl.lab import realnode, systemd  # noqa: E402


def phases(stdout: str) -> dict[str, float]:
    return {m.group(1): float(m.group(2)) for m in re.finditer(r"done (.+?) in ([0-9.]+) s", stdout)}


def idle_usage(lab, seconds: float) -> dict[str, dict]:
    """CPU (% of one core) and resident memory (MiB) of each node's cgroup over `seconds`."""
    state = lab.lab.load()
    cgroups = {n["name"]: realnode.node_cgroup(state["id"], n["name"]) for n in lab.nodes}

    def cpu_ns(cg: str) -> int:
        return int(Path("/sys/fs/cgroup/cpuacct", cg.lstrip("/"), "cpuacct.usage").read_text())

    def rss_mib(cg: str) -> float:
        total = 0
        for pid in systemd.cgroup_pids(cg):
            try:
                status = Path(f"/proc/{pid}/status").read_text()
            except OSError:
                continue
            m = re.search(r"VmRSS:\s+(\d+) kB", status)
            total += int(m.group(1)) if m else 0
        return round(total / 1024, 1)

    before = {n: cpu_ns(cg) for n, cg in cgroups.items()}
    time.sleep(seconds)
    return {n: {"role": next(x["role"] for x in lab.nodes if x["name"] == n),
                "cpu_percent": round((cpu_ns(cg) - before[n]) / seconds / 1e7, 1), "rss_mib": rss_mib(cg)}
            for n, cg in cgroups.items()}


def neigh_mac(lab, ip: str) -> str | None:
    out = subprocess.run(["ip", "-n", lab.client_ns, "neigh", "show", ip], capture_output=True, text=True).stdout
    return out.split("lladdr")[1].split()[0] if "lladdr" in out else None


def logged_at(lab, node: dict, dead: str, after: datetime.datetime, pattern: str) -> float | None:
    """When the speaker on `node` first logged a line about `dead` matching `pattern` (memberlist's
    suspicion, its verdict), in seconds after `after`."""
    for line in lab.pod_logs(node, "speaker").splitlines():
        if dead not in line or not re.search(pattern, line, re.I):
            continue
        m = re.search(r'"ts":"([^"]+)"', line)
        if not m:
            continue
        ts = datetime.datetime.fromisoformat(m.group(1).replace("Z", "+00:00"))
        if ts >= after:
            return round((ts - after).total_seconds(), 2)
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--idle", type=float, default=30)
    args = ap.parse_args()
    lab = LabHarness(Path(tempfile.mkdtemp(prefix="bmctl-bench-")), control_planes=3, lb_nodes=2, workers=1)
    rounds = []
    try:
        lab.up()
        start = time.monotonic()
        proc = lab.bmctl("create", "cluster", timeout=900)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        create_s = time.monotonic() - start
        print(f"bmctl create cluster (6 real nodes, from nothing): {create_s:.1f} s; phases {phases(proc.stdout)}",
              flush=True)
        time.sleep(30)  # the cluster settles (image pulls, first syncs)
        idle = idle_usage(lab, args.idle)
        print(f"idle per node over {args.idle:g} s: {idle}", flush=True)
        ip, _ = start_web_service(lab, Kube(lab))
        for i in range(args.reps):
            node = announcer(lab, ip)
            other = next(n for n in lab.lb_nodes() if n["address"] != node["address"])
            mac = neigh_mac(lab, ip)
            arp: list[float] = []
            t0, wall0 = time.monotonic(), datetime.datetime.now(datetime.timezone.utc)
            done = threading.Event()

            def watch():
                while not done.is_set():
                    now = neigh_mac(lab, ip)
                    if now and now != mac:
                        arp.append(round(time.monotonic() - t0, 2))
                        return
                    time.sleep(0.05)
            watcher = threading.Thread(target=watch)
            watcher.start()
            lab.set_link(node, up=False)
            try:
                wait_for(lambda: http_get(lab, ip, timeout=0.5), 120, "the Service IP after the cut", 0.1)
                ok = round(time.monotonic() - t0, 2)
            finally:
                done.set()
                watcher.join()
                lab.set_link(node, up=True)
            rounds.append({"cut": node["name"], "first_success_s": ok,
                           "memberlist_suspect_s": logged_at(lab, other, node["name"], wall0, r"suspect"),
                           "memberlist_failed_s": logged_at(lab, other, node["name"], wall0,
                                                            r"marking .* as failed|node.*(failed|left)"),
                           "arp_moved_s": arp[0] if arp else None})
            print(f"rep {i + 1}: {rounds[-1]}", flush=True)
            time.sleep(15)  # the cut node rejoins memberlist before the next round
            wait_for(lambda: http_get(lab, ip), 60, "the Service IP to settle", 0.2)
    finally:
        lab.down()
    out = ROOT / "benchmarks" / "results"
    out.mkdir(exist_ok=True)
    times = [r["first_success_s"] for r in rounds]
    result = {"create_cluster_s": round(create_s, 1), "create_phases_s": phases(proc.stdout),
              "idle_per_node": idle, "service_failover": rounds}
    (out / "service_failover.json").write_text(json.dumps(result, indent=2))
    print(f"Service IP failover after a link cut: median {statistics.median(times):.2f} s, "
          f"max {max(times):.2f} s over {len(times)} runs")
    for key in ("memberlist_suspect_s", "memberlist_failed_s", "arp_moved_s"):
        got = [r[key] for r in rounds if r[key] is not None]
        if got:
            print(f"  {key}: median {statistics.median(got):.2f} s ({len(got)} of {len(rounds)} seen)")


if __name__ == "__main__":
    main()
