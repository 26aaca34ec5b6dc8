"""Node provisioning on bare lab nodes: how long bmctl takes to install the node software from the
offline bundle (containerd, runc, CNI plugins, crictl, kubelet, kubeadm, kubectl; their config and
services; the sandbox image pulled through the lab's registry mirror), first run and re-run, and the
bytes sent per node; with --create, the whole `create cluster` from bare nodes.

Run (root, from the repository, the lab's parts built):
    python benchmarks/provision.py --nodes 6 --create     # the default lab: 3 CP + 2 LB + 1 worker
    python benchmarks/provision.py --nodes 30             # 1 CP + 29 workers, provisioning only

Each size gets a fresh lab of real nodes (nothing installed); bmctl runs from the lab's client
namespace, as from an admin workstation, with `--force` (no preflight: its time is not
provisioning's). Times are the phase's own ("done Node provisioning in N s") and the command's wall
clock. Results: stdout and benchmarks/results/provision.json.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))


def run(lab, *args: str, timeout: float = 1800) -> tuple[float, str]:
    start = time.monotonic()
    proc = lab.bmctl(*args, timeout=timeout)
    took = time.monotonic() - start
    if proc.returncode != 0:
        raise SystemExit(f"bmctl {' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return took, proc.stdout


def phase_seconds(out: str, title: str) -> float:
    m = re.search(rf"done {re.escape(title)}[^\n]* in ([0-9.]+) s", out)
    return float(m.group(1)) if m else float("nan")


def measure(nodes: int, create: bool) -> dict:
    from lab.harness import LabHarness
    cps, lbs = (3, 2) if nodes >= 6 and create else (1, 0)
    with tempfile.TemporaryDirectory(prefix="bmctl-bench-provision-") as tmp:
        lab = LabHarness(Path(tmp), cps, lbs, nodes - cps - lbs)
        try:
            lab.up()
            args = ["create", "cluster", "--force"] + ([] if create else ["--until", "provision"])
            wall, out = run(lab, *args)
            sent = [float(x) for x in re.findall(r"\(([0-9.]+) MB sent\)", out)]
            result = {"nodes": nodes, "first_run_provision_s": phase_seconds(out, "Node provisioning"),
                      "first_run_command_s": round(wall, 1), "mb_sent_per_node": sent[0] if sent else None,
                      "nodes_sent_to": len(sent)}
            if create:
                result["create_phases_s"] = {t: phase_seconds(out, t) for t in re.findall(r"done (.+?) in [0-9.]+ s", out)}
            wall, out = run(lab, "create", "cluster", "--force", "--until", "provision")
            result["rerun_provision_s"] = phase_seconds(out, "Node provisioning")
            result["rerun_command_s"] = round(wall, 1)
            result["rerun_nothing_sent"] = out.count("nothing sent; config unchanged; no service restarted")
            return result
        finally:
            lab.down()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--nodes", type=int, action="append", help="lab size (repeatable); default 6")
    parser.add_argument("--create", action="store_true", help="the whole create cluster (6+ nodes: 3 CP, 2 LB)")
    args = parser.parse_args()
    results = [measure(n, args.create) for n in (args.nodes or [6])]
    out = ROOT / "benchmarks" / "results" / "provision.json"
    previous = json.loads(out.read_text()) if out.exists() else {}
    for r in results:
        previous[f"{r['nodes']}{'-create' if args.create else ''}"] = {
            **r, "command": f"python benchmarks/provision.py --nodes {r['nodes']}{' --create' if args.create else ''}",
            "date": time.strftime("%Y-%m-%d"), "machine": f"{os.cpu_count()} cores"}
    out.write_text(json.dumps(previous, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
