"""The bundled ingress on the lab's real nodes: ingress VIP failover, and what the ingress costs in
requests per second and latency against going to the Service's own IP.

Run (root, from the repository; the lab builds what is missing first):
    python benchmarks/ingress.py --reps 10

Builds a lab of 1 control-plane + 2 LB + 1 worker real nodes and creates the cluster (the ingress on
by default). On the worker: a Deployment of the lab's web server (2 replicas) behind a ClusterIP
Service that an HTTPRoute routes to (host bench.example.test), and a LoadBalancer Service in front of
the same pods (MetalLB, an IP of its own).

- Failover, --reps times: find the LB node answering ARP for the ingress VIP, set its veth down in the
  bridge namespace, send a new connection + GET through the ingress every 100 ms (500 ms timeout)
  from the client namespace until one is answered by the backend; the link comes back and the next
  round waits until both Traefik pods are ready again.
- Load: `hey` (built from github.com/rakyll/hey) in the client namespace, --seconds each, --concurrency
  connections kept alive: through the ingress VIP (Host header), then straight to the Service IP.
  The lab has 2 cores for every node and the client: absolute numbers say little, the ratio more.
Results: stdout and benchmarks/results/ingress.json.
"""
from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from lab.harness import NET, Kube, LabHarness, announcer, in_netns, wait_for, web_image  # noqa: E402

from bmctl.lab import binaries  # noqa: E402

HOST = "bench.example.test"


def get(lab, ip: str, host: str | None = None, timeout: float = 0.5) -> bool:
    proc = subprocess.run(["ip", "netns", "exec", lab.client_ns, "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}",
                           "--max-time", str(timeout), *(["-H", f"Host: {host}"] if host else []), f"http://{ip}/"],
                          capture_output=True, text=True)
    return proc.stdout.strip() == "200"


def deploy(lab, kube: Kube) -> str:
    """The web Deployment, its ClusterIP Service with an HTTPRoute, and a LoadBalancer Service; returns
    the LoadBalancer Service's IP."""
    from kubernetes import client
    worker = next(n for n in lab.nodes if n["role"] == "worker")
    kube("create_namespace", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "bench"}})
    apps = client.AppsV1Api(kube.core.api_client)
    custom = client.CustomObjectsApi(kube.core.api_client)
    with in_netns(lab.client_ns):
        apps.create_namespaced_deployment("bench", {
            "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
            "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
                     "template": {"metadata": {"labels": {"app": "web"}},
                                  "spec": {"nodeSelector": {"kubernetes.io/hostname": worker["name"]},
                                           "containers": [{"name": "web", "image": web_image(lab),
                                                           "ports": [{"containerPort": 8080}]}]}}}})
        custom.create_namespaced_custom_object("gateway.networking.k8s.io", "v1", "bench", "httproutes", {
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute", "metadata": {"name": "web"},
            "spec": {"parentRefs": [{"name": "bmctl-ingress", "namespace": "bmctl-ingress"}], "hostnames": [HOST],
                     "rules": [{"backendRefs": [{"name": "web", "port": 80}]}]}})
    for name, kind in (("web", "ClusterIP"), ("web-lb", "LoadBalancer")):
        kube("create_namespaced_service", "bench", {
            "apiVersion": "v1", "kind": "Service", "metadata": {"name": name},
            "spec": {"type": kind, "selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]}})

    def lb_ip():
        svc = kube("read_namespaced_service", "web-lb", "bench")
        ing = (svc.status.load_balancer.ingress or []) if svc.status.load_balancer else []
        return ing[0].ip if ing else None
    ip = wait_for(lb_ip, 60, "the LoadBalancer Service's IP", 0.5)
    wait_for(lambda: get(lab, ip), 120, "the web pods through the Service IP", 0.5)
    return ip


def traefik_ready(kube: Kube) -> int:
    pods = kube("list_namespaced_pod", "bmctl-ingress", label_selector="app.kubernetes.io/name=traefik").items
    return sum(1 for p in pods if any(c.type == "Ready" and c.status == "True" for c in p.status.conditions or []))


def hey(lab, url: str, seconds: int, concurrency: int, host: str | None) -> dict:
    proc = subprocess.run(["ip", "netns", "exec", lab.client_ns, str(binaries.binary("hey")), "-z", f"{seconds}s",
                           "-c", str(concurrency), *(["-host", host] if host else []), url],
                          capture_output=True, text=True, timeout=seconds + 60)
    out = proc.stdout
    rps = float(re.search(r"Requests/sec:\s+([0-9.]+)", out).group(1))
    pct = {m.group(1): round(float(m.group(2)) * 1000, 1) for m in re.finditer(r"(\d+)% in ([0-9.]+) secs", out)}
    codes = {m.group(1): int(m.group(2)) for m in re.finditer(r"\[(\d+)\]\s+(\d+) responses", out)}
    return {"rps": round(rps), "p50_ms": pct.get("50"), "p99_ms": pct.get("99"), "status_codes": codes}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--seconds", type=int, default=20)
    ap.add_argument("--concurrency", type=int, default=16)
    args = ap.parse_args()
    binaries.ensure(["hey"])
    lab = LabHarness(Path(tempfile.mkdtemp(prefix="bmctl-bench-")), control_planes=1, lb_nodes=2, workers=1)
    rounds: list[dict] = []
    try:
        lab.up()
        proc = lab.bmctl("create", "cluster", timeout=900)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        kube = Kube(lab)
        vip = NET.ingress_vip
        service_ip = deploy(lab, kube)
        wait_for(lambda: get(lab, vip, HOST), 120, "the HTTPRoute through the ingress VIP", 0.5)
        time.sleep(10)
        load = {"ingress": hey(lab, f"http://{vip}/", args.seconds, args.concurrency, HOST),
                "service_ip": hey(lab, f"http://{service_ip}/", args.seconds, args.concurrency, None)}
        print(f"load ({args.concurrency} connections, {args.seconds} s each): {load}", flush=True)
        for i in range(args.reps):
            node = announcer(lab, vip)
            t0 = time.monotonic()
            lab.set_link(node, up=False)
            try:
                wait_for(lambda: get(lab, vip, HOST), 120, "the ingress after the cut", 0.1)
                ok = round(time.monotonic() - t0, 2)
            finally:
                lab.set_link(node, up=True)
            rounds.append({"cut": node["name"], "first_success_s": ok})
            print(f"rep {i + 1}: {rounds[-1]}", flush=True)
            time.sleep(5)
            wait_for(lambda: traefik_ready(kube) == 2 and get(lab, vip, HOST), 120, "both Traefik pods ready", 0.5)
            time.sleep(10)  # the cut node's speaker rejoins memberlist before the next round
    finally:
        lab.down()
    times = [r["first_success_s"] for r in rounds]
    result = {"ingress_failover": rounds, "load": load,
              "command": f"python benchmarks/ingress.py --reps {args.reps} --seconds {args.seconds} "
                         f"--concurrency {args.concurrency}"}
    out = ROOT / "benchmarks" / "results"
    out.mkdir(exist_ok=True)
    (out / "ingress.json").write_text(json.dumps(result, indent=2))
    print(f"ingress VIP failover after a link cut: median {statistics.median(times):.2f} s, max {max(times):.2f} s "
          f"over {len(times)} runs")
    ing, direct = load["ingress"], load["service_ip"]
    print(f"through the ingress: {ing['rps']} req/s, p99 {ing['p99_ms']:.1f} ms; straight to the Service IP: "
          f"{direct['rps']} req/s, p99 {direct['p99_ms']:.1f} ms")


if __name__ == "__main__":
    main()
