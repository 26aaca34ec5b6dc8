"""Failover and recovery of a Service IP and of the API VIP in BGP mode, on the lab's real nodes
behind a real router (FRR), per kind of link fault, with BFD and without it.

Run (root, from the repository; the lab builds what is missing first):
    python benchmarks/bgp_failover.py --reps 10

Builds a lab of 1 control-plane + 2 LB + 1 worker real nodes with `--router` (FRR between the nodes
and the client, sending each LB node a default route), creates the cluster (`type: bgp`: each LB
node's FRR static pod announces the API VIP, MetalLB in FRR mode the Service IPs; keepalive 1 s,
hold 3 s, BFD 3 x 200 ms) and a Deployment on the worker behind a LoadBalancer Service. Then, per
fault kind, `--reps` rounds alternate between the two LB nodes (A, B, A, ...): the fault, 2 s, the
restore, and 3 s once the router lists both next hops again (tests/lab/faults.py). Fault kinds:
  carrier - a pulled cable: the bridge's side of the node's link goes down (the node keeps its
            routes, marked linkdown);
  admin   - `ip link set eth0 down` on the node (its routes go; its network configuration puts the
            configured ones back when the link comes up).
Clients behind the router open a new connection to each target every 50 ms throughout (each in a
thread of its own; a failure is no answer within 3 s or a handshake that lost a SYN). Per round and
target, from the cut:
  withdrawn - until the router's kernel route has lost the cut node's next hop (polled every 20 ms);
  steady    - until the start of the last failed connection (0 when none failed);
and from the restore:
  back      - until the router lists the restored node's next hop again;
  rehash resets - connections in flight at that moment and reset (the router's ECMP hash moves
            some of them to the restored node, which has no such connection);
  failed after back - new connections that failed after that (the target: 0).
All rounds run with BFD (as bmctl configures it), then with BFD turned off on the router (`no
neighbor LB bfd`), which leaves the 3 s hold timer. Results: stdout and
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
from lab.faults import alternating_faults  # noqa: E402
from lab.harness import Kube, LabHarness, start_web_service, wait_for  # noqa: E402

from bmctl.lab import router  # noqa: E402

KINDS = ("carrier", "admin")
TARGETS = ("api", "service")
FIGURES = ("withdrawn_s", "steady_s", "back_s", "rehash_resets", "failed_after_back")
COUNTS = ("rehash_resets", "failed_after_back")


def summarise(rounds: list[dict]) -> dict:
    summary = {}
    for target in TARGETS:
        for figure in FIGURES:
            values = [r[f"{target}_{figure}"] for r in rounds]
            key = f"{target}_{figure}"
            summary[key] = ({"total": sum(values)} if figure in COUNTS else
                            {"median": round(statistics.median(values), 2), "max": max(values)})
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=10, help="rounds per fault kind and BFD setting")
    args = parser.parse_args()
    results: dict = {}
    with tempfile.TemporaryDirectory(prefix="bmctl-bench-bgp-") as tmp:
        lab = LabHarness(Path(tmp), 1, 2, 1, router=True)
        try:
            lab.up()
            proc = lab.bmctl("create", "cluster", timeout=1200)
            if proc.returncode != 0:
                raise SystemExit(proc.stdout[-3000:] + proc.stderr[-3000:])
            ip, _ = start_web_service(lab, Kube(lab))
            vip = lab.lab.net_of(lab.state).vip
            lbs = {n["address"] for n in lab.nodes if n["role"] == "load-balancer"}
            for mode in ("bfd", "no-bfd"):
                if mode == "no-bfd":  # the router stops BFD: the sessions fall back on the hold timer
                    router.vtysh(lab.state, "configure terminal", f"router bgp {lab.lab.net_of(lab.state).router_asn}",
                                 "no neighbor LB bfd")
                    time.sleep(5)
                    for prefix in (f"{ip}/32", f"{vip}/32"):
                        wait_for(lambda: set(router.routes(lab.state, prefix)) == lbs, 120, "the ECMP route", 0.5)
                results[mode] = {}
                for kind in KINDS:
                    out = alternating_faults(lab, ip, vip, faults=[(i % 2, kind) for i in range(args.reps)])
                    rounds = [{k: v for k, v in r.items() if k in ("node", "fault") or k.endswith(("_s", *COUNTS))}
                              for r in out["rounds"]]
                    for r in rounds:
                        print(f"{mode} {kind}: {r}", flush=True)
                    results[mode][kind] = {"rounds": rounds, "summary": summarise(rounds),
                                           "connections": out["count"], "failed": len(out["failures"]),
                                           "stray": out["stray"]}
        finally:
            lab.down()
    result = {"date": datetime.date.today().isoformat(),
              "command": f"python benchmarks/bgp_failover.py --reps {args.reps}",
              "setup": "FRR 8.4 static pod per LB node (API VIP, the router's default route installed) driven by "
                       "MetalLB v0.15.2 in FRR mode (Services); keepalive 1 s, hold 3 s, connect retry 5 s; BFD 3 x "
                       "200 ms; FRR 8.4 router with ECMP (L4 hash) sending a default route; 2 cores",
              **results}
    out_file = ROOT / "benchmarks" / "results" / "bgp_failover.json"
    out_file.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({m: {k: v["summary"] for k, v in r.items()} for m, r in results.items()}, indent=2))


if __name__ == "__main__":
    main()
