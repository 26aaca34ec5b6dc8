"""Control-plane VIP failover on the lab: time from a fault to the first successful request
through the VIP, and spurious master changes under CPU saturation.

Run (root, from the repository):
    python benchmarks/vip_failover.py --reps 10 --soak 120 --advert 0.2
    python benchmarks/vip_failover.py --reps 10 --soak 120 --advert 0.1 0.2 0.5 1   # trade-off table

For each advert interval it builds a lab of 3 real nodes (control plane = LB nodes: containerd,
kubelet, kubeadm), runs `bmctl create cluster` (real kube-apiservers behind HAProxy), then, `--reps`
times each:
  link-cut        the master's veth is set down in the bridge namespace
  keepalived-kill SIGKILL of the master's Keepalived container (its PID 1; the kubelet restarts it)
  haproxy-kill    SIGKILL of the master's HAProxy container (its PID 1; the kubelet restarts it)
  haproxy-hang    SIGSTOP of every process of the master's HAProxy container (SIGCONT after the VIP moved)
and measures, with a new TLS connection every 20 ms from the client namespace, the time from the
fault to the first successful GET. It also records when another node holds the VIP. Then both
cores are saturated (two busy loops) for `--soak` seconds and master changes are counted from the
keepalived logs. Results go to stdout as a table and to benchmarks/results/vip_failover.json.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from lab.harness import NET, LabHarness, wait_for  # noqa: E402

VIP = NET.ip(10)


def one_holder(lab):
    holders = lab.vip_holders(VIP)
    return holders[0] if len(holders) == 1 else None


def settle(lab):
    wait_for(lambda: one_holder(lab) and lab.request(timeout=0.5, path="/readyz") is not None, 30, "a settled VIP", 0.05)
    time.sleep(1.0)


def measure(lab, fault, undo=None):
    """Seconds from fault() to the first successful request, and to another node holding the VIP."""
    old = lab.node(one_holder(lab))
    others = [n for n in lab.lb_nodes() if n is not old]
    moved: list[float] = []

    def watch():
        while time.monotonic() - t0 < 20 and not moved:
            if lab.vip_holders(VIP, others):
                moved.append(time.monotonic() - t0)
            time.sleep(0.02)

    t0 = time.monotonic()
    fault(old)
    watcher = threading.Thread(target=watch)
    watcher.start()
    ok = None
    while time.monotonic() - t0 < 20:
        if lab.request(timeout=0.2, path="/readyz") is not None:
            ok = time.monotonic() - t0
            break
        time.sleep(0.02)
    watcher.join()
    if undo:
        undo(old)
    settle(lab)
    return ok, (moved[0] if moved else None)


def master_changes(lab) -> int:
    return sum(lab.pod_logs(node, "keepalived").count("Entering MASTER STATE") for node in lab.lb_nodes())


def hang(lab, node, sig):
    pid = lab.pod_pid(node, "haproxy")
    os.killpg(os.getpgid(pid), sig)


def run(advert: float, reps: int, soak: float) -> dict:
    lab = LabHarness(Path(tempfile.mkdtemp(prefix="bmctl-bench-")), control_planes=3)
    try:
        lab.up()
        docs = list(yaml.safe_load_all(lab.config.read_text()))
        docs[2]["spec"]["loadBalancer"]["vrrp"] = {"advertInterval": advert}
        lab.config.write_text(yaml.safe_dump_all(docs, sort_keys=False))
        proc = lab.bmctl("create", "cluster", timeout=900)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        settle(lab)
        faults = {
            "link-cut": (lambda n: lab.set_link(n, False), lambda n: lab.set_link(n, True)),
            "keepalived-kill": (lambda n: os.kill(lab.pod_pid(n, "keepalived"), signal.SIGKILL), None),
            "haproxy-kill": (lambda n: os.kill(lab.pod_pid(n, "haproxy"), signal.SIGKILL), None),
            "haproxy-hang": (lambda n: hang(lab, n, signal.SIGSTOP), lambda n: hang(lab, n, signal.SIGCONT)),
        }
        result = {"advert_int": advert, "faults": {}}
        for name, (fault, undo) in faults.items():
            oks, moves = [], []
            for _ in range(reps):
                ok, moved = measure(lab, fault, undo)
                oks.append(ok)
                moves.append(moved)
            result["faults"][name] = {"first_success_s": oks, "vip_moved_s": moves}
            print(f"advert {advert:g}s {name}: first success {summary(oks)}; VIP moved {summary(moves)}",
                  flush=True)
        before = master_changes(lab)
        burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(os.cpu_count() or 2)]
        try:
            fails = 0
            end = time.monotonic() + soak
            while time.monotonic() < end:
                if lab.request(timeout=1.0, path="/readyz") is None:
                    fails += 1
                time.sleep(0.2)
        finally:
            for b in burners:
                b.kill()
                b.wait()
        result["soak"] = {"seconds": soak, "master_changes": master_changes(lab) - before,
                          "failed_requests": fails}
        print(f"advert {advert:g}s soak {soak:g}s with {len(burners)} busy loops: "
              f"{result['soak']['master_changes']} master change(s), {fails} failed request(s)", flush=True)
        return result
    finally:
        lab.down()


def summary(values) -> str:
    got = [v for v in values if v is not None]
    if not got:
        return "never"
    missing = len(values) - len(got)
    return (f"median {statistics.median(got):.2f} s, max {max(got):.2f} s"
            + (f" ({missing} of {len(values)} never)" if missing else ""))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--soak", type=float, default=120)
    ap.add_argument("--advert", type=float, nargs="+", default=[0.2])
    args = ap.parse_args()
    results = [run(a, args.reps, args.soak) for a in args.advert]
    out = ROOT / "benchmarks" / "results"
    out.mkdir(exist_ok=True)
    (out / "vip_failover.json").write_text(json.dumps(results, indent=2))
    print("\n| advert_int | link cut: first success (median / max) | keepalived killed | haproxy killed "
          "| haproxy hung | soak: master changes |")
    print("|---|---|---|---|---|---|")
    for r in results:
        f = r["faults"]
        print(f"| {r['advert_int']:g} s | {summary(f['link-cut']['first_success_s'])} | "
              f"{summary(f['keepalived-kill']['first_success_s'])} | {summary(f['haproxy-kill']['first_success_s'])} "
              f"| {summary(f['haproxy-hang']['first_success_s'])} "
              f"| {r['soak']['master_changes']} in {r['soak']['seconds']:g} s |")


if __name__ == "__main__":
    main()
