"""Service IP failover in BGP mode on the lab's real nodes, behind a real router (FRR).

Run (root, from the repository; the lab builds what is missing first):
    python benchmarks/bgp_failover.py --reps 10

Builds a lab of 1 control-plane + 2 LB + 1 worker real nodes with `--router` (FRR between the nodes
and the client), creates the cluster (`type: bgp`, MetalLB native BGP, hold time 3 s) and a
Deployment on the worker behind a LoadBalancer Service. Each round cuts one LB node's link (its veth
in the bridge namespace, alternating between the two) and measures from the cut:
  route  - until the router's kernel route for the Service IP has lost the cut node's next hop;
  client - until 20 new connections in a row from the client namespace (behind the router, one every
           50 ms, 300 ms timeout each) all succeed: new connections hashed to the dead node fail
           until the route goes.
Then the link comes back and the round waits for both next hops again. Results: stdout and
benchmarks/results/bgp_failover.json.
"""
from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from lab.harness import Kube, LabHarness, http_get, start_web_service, wait_for  # noqa: E402

from bmctl.lab import router  # noqa: E402


def one_round(lab, ip: str, victim: dict, lbs: set[str]) -> dict:
    other = lbs - {victim["address"]}
    lab.set_link(victim, False)
    start = time.monotonic()
    route = client = None
    streak = 0
    try:
        while time.monotonic() - start < 30 and (route is None or client is None):
            now = time.monotonic() - start
            if route is None and set(router.routes(lab.state, f"{ip}/32")) == other:
                route = now
            ok = http_get(lab, ip, timeout=0.3) is not None
            streak = streak + 1 if ok else 0
            if client is None and streak >= 20:
                client = time.monotonic() - start - 19 * 0.05  # the first of the 20
            time.sleep(0.05)
    finally:
        lab.set_link(victim, True)
    wait_for(lambda: set(router.routes(lab.state, f"{ip}/32")) == lbs, 120, "both next hops back", 0.5)
    return {"route_s": round(route, 2) if route is not None else None,
            "client_s": round(max(client, 0.0), 2) if client is not None else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bmctl-bench-bgp-") as tmp:
        lab = LabHarness(Path(tmp), 1, 2, 1, router=True)
        try:
            lab.up()
            proc = lab.bmctl("create", "cluster", timeout=1200)
            if proc.returncode != 0:
                raise SystemExit(proc.stdout[-3000:] + proc.stderr[-3000:])
            ip, _ = start_web_service(lab, Kube(lab))
            lb_nodes = [n for n in lab.nodes if n["role"] == "load-balancer"]
            lbs = {n["address"] for n in lb_nodes}
            wait_for(lambda: set(router.routes(lab.state, f"{ip}/32")) == lbs, 60, "the ECMP route", 0.5)
            rounds = []
            for i in range(args.reps):
                r = one_round(lab, ip, lb_nodes[i % 2], lbs)
                print(f"round {i + 1}: {r}", flush=True)
                rounds.append(r)
        finally:
            lab.down()
    summary = {}
    for key in ("route_s", "client_s"):
        values = [r[key] for r in rounds if r[key] is not None]
        summary[key] = {"median": round(statistics.median(values), 2), "max": max(values),
                        "missed": len(rounds) - len(values)} if values else None
    result = {"date": datetime.date.today().isoformat(), "command": f"python benchmarks/bgp_failover.py --reps {args.reps}",
              "mode": "MetalLB native BGP, hold 3 s, no BFD; FRR 8.4 router with ECMP", "rounds": rounds,
              "summary": summary}
    out = ROOT / "benchmarks" / "results" / "bgp_failover.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
