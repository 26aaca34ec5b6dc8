"""Failover of a Service IP and of the API VIP in BGP mode, on the lab's real nodes behind a real
router (FRR), with BFD and without it.

Run (root, from the repository; the lab builds what is missing first):
    python benchmarks/bgp_failover.py --reps 10

Builds a lab of 1 control-plane + 2 LB + 1 worker real nodes with `--router` (FRR between the nodes
and the client), creates the cluster (`type: bgp`: each LB node's FRR static pod announces the API
VIP, MetalLB in FRR mode the Service IPs; keepalive 1 s, hold 3 s, BFD 3 x 200 ms) and a Deployment
on the worker behind a LoadBalancer Service. Each round cuts one LB node's link (its veth in the
bridge namespace, alternating between the two) and measures from the cut, for the Service IP and
the API VIP alike:
  route  - until the router's kernel route has lost the cut node's next hop;
  client - until the first of 10 new connections in a row from the client namespace (behind the
           router, one every 50 ms, 300 ms timeout each) that all succeed: new connections hashed
           to the dead node fail until the route goes.
(each in a thread of its own per target: the router's route polled every 20 ms).
Then the link comes back and the round waits for both next hops again. The rounds run twice: with
BFD (as bmctl configures it), then with BFD turned off on the router (`no neighbor LB bfd`), which
leaves the 3 s hold timer. Results: stdout and benchmarks/results/bgp_failover.json.
"""
from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from lab.harness import Kube, LabHarness, http_get, start_web_service, wait_for  # noqa: E402

from bmctl.lab import router  # noqa: E402

STREAK = 10


def _watch(deadline: float, start: float, check, out: dict, key: str, interval: float) -> None:
    while time.monotonic() < deadline and out[key] is None:
        if check():
            out[key] = round(time.monotonic() - start, 2)
        time.sleep(interval)


def _client(deadline: float, start: float, probe, out: dict, key: str) -> None:
    """The start of the first run of STREAK successful new connections (one every 50 ms)."""
    streak, first = 0, None
    while time.monotonic() < deadline:
        sent = time.monotonic()
        if probe():
            first = sent if streak == 0 else first
            streak += 1
            if streak >= STREAK:
                out[key] = round(max(first - start, 0.0), 2)
                return
        else:
            streak = 0
        time.sleep(0.05)


def one_round(lab, targets: dict, victim: dict, lbs: set[str]) -> dict:
    """targets: name -> (prefix, probe() -> bool). Per target, one thread polls the router's route
    every 20 ms and one opens new connections; both time from the cut."""
    other = lbs - {victim["address"]}
    out = {f"{name}_{what}": None for name in targets for what in ("route_s", "client_s")}
    lab.set_link(victim, False)
    start = time.monotonic()
    deadline = start + 30
    threads = []
    for name, (prefix, probe) in targets.items():
        threads.append(threading.Thread(target=_watch, args=(
            deadline, start, lambda p=prefix: set(router.routes(lab.state, p)) == other, out, f"{name}_route_s", 0.02)))
        threads.append(threading.Thread(target=_client, args=(deadline, start, probe, out, f"{name}_client_s")))
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        lab.set_link(victim, True)
    for prefix, _ in targets.values():
        wait_for(lambda: set(router.routes(lab.state, prefix)) == lbs, 120, "both next hops back", 0.5)
    time.sleep(2)  # BFD up again on both sides before the next cut
    return out


def summarise(rounds: list[dict]) -> dict:
    summary = {}
    for key in rounds[0]:
        values = [r[key] for r in rounds if r[key] is not None]
        summary[key] = {"median": round(statistics.median(values), 2), "max": max(values),
                        "missed": len(rounds) - len(values)} if values else None
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=10)
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory(prefix="bmctl-bench-bgp-") as tmp:
        lab = LabHarness(Path(tmp), 1, 2, 1, router=True)
        try:
            lab.up()
            proc = lab.bmctl("create", "cluster", timeout=1200)
            if proc.returncode != 0:
                raise SystemExit(proc.stdout[-3000:] + proc.stderr[-3000:])
            ip, _ = start_web_service(lab, Kube(lab))
            vip = lab.lab.net_of(lab.state).vip
            lb_nodes = [n for n in lab.nodes if n["role"] == "load-balancer"]
            lbs = {n["address"] for n in lb_nodes}
            targets = {"service": (f"{ip}/32", lambda: http_get(lab, ip, timeout=0.3) is not None),
                       "api": (f"{vip}/32", lambda: lab.request(vip=vip, path="/readyz", timeout=0.3) == "ok")}
            for prefix, _ in targets.values():
                wait_for(lambda: set(router.routes(lab.state, prefix)) == lbs, 60, "the ECMP route", 0.5)
            for mode in ("bfd", "no-bfd"):
                if mode == "no-bfd":  # the router stops BFD: the sessions fall back on the hold timer
                    router.vtysh(lab.state, "configure terminal", f"router bgp {lab.lab.net_of(lab.state).router_asn}",
                                 "no neighbor LB bfd")
                    time.sleep(5)
                    for prefix, _ in targets.values():
                        wait_for(lambda: set(router.routes(lab.state, prefix)) == lbs, 120, "the ECMP route", 0.5)
                rounds = []
                for i in range(args.reps):
                    r = one_round(lab, targets, lb_nodes[i % 2], lbs)
                    print(f"{mode} round {i + 1}: {r}", flush=True)
                    rounds.append(r)
                results[mode] = {"rounds": rounds, "summary": summarise(rounds)}
        finally:
            lab.down()
    result = {"date": datetime.date.today().isoformat(),
              "command": f"python benchmarks/bgp_failover.py --reps {args.reps}",
              "setup": "FRR 8.4 static pod per LB node (API VIP) driven by MetalLB v0.15.2 in FRR mode (Services); "
                       "keepalive 1 s, hold 3 s; BFD 3 x 200 ms; FRR 8.4 router with ECMP (L4 hash); 2 cores",
              **results}
    out = ROOT / "benchmarks" / "results" / "bgp_failover.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({m: r["summary"] for m, r in results.items()}, indent=2))


if __name__ == "__main__":
    main()
