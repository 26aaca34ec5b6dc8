"""`bmctl lab up|down|status`."""
from __future__ import annotations

from pathlib import Path

import netaddr
from rich.table import Table

from bmctl.errors import BmctlError
from bmctl.lab.lab import Lab, host_cgroup_v1
from bmctl.output import out
from bmctl.workspace import Workspace


def _lab(workspace: Path | None) -> Lab:
    return Lab(Workspace("lab", workspace).dir / "lab-state")


def up(workspace: Path | None, control_planes: int, lb_nodes: int, workers: int, host_address: bool,
       subnet: str | None = None, real_nodes: bool = True, router: bool = False) -> None:
    lab = _lab(workspace)
    Lab.check_prerequisites(real_nodes, router)
    Workspace("lab", workspace).ensure()
    if lab.exists:  # `lab up` twice: the running lab is the one asked for
        down = [r["name"] for r in lab.status() if not r["ssh"]]
        if down:
            raise BmctlError(f"a lab exists at {lab.state_dir} but its nodes {', '.join(down)} are not running "
                             "(this machine restarted?).", "run `bmctl lab down`, then `bmctl lab up` again.")
        state = lab.load()
        out.print(f"Lab already up: {len(state['nodes'])} nodes on {Lab.net_of(state).bridge_cidr}; config "
                  f"{state['config']} (`bmctl lab down` removes it).", markup=False)
        return
    state = lab.up(control_planes, lb_nodes, workers, host_address, subnet=subnet, real_nodes=real_nodes,
                   say=lambda msg: out.print(msg, markup=False), router=router)
    net = Lab.net_of(state)
    out.print(f"Lab up: {len(state['nodes'])} nodes on {net.bridge_cidr}, pods on {net.pods} (bridge namespace "
              f"{state['bridge_ns']}, client namespace {state['client_ns']}).", markup=False)
    kept = {a: why for a, why in (state.get("kept") or {}).items()
            if any(netaddr.IPAddress(a) in netaddr.IPNetwork(c) for c in (net.segment, net.pods))}
    out.print(f"Ranges: documentation ranges this machine has no address or route in"
              + (f", the node segment one without an address this machine uses; kept reachable from here: "
                 + "; ".join(f"{a} ({why})" for a, why in kept.items()) if kept else "") + ".", markup=False)
    if state.get("real_nodes") and host_cgroup_v1():
        out.print("cgroup v1: this machine (and so every lab node) has cgroup v1, which Kubernetes v1.35 and "
                  "later refuse; the lab's config opts in (spec.nodeConfig.allowCgroupV1: true, deprecated "
                  "upstream; every run warns).", markup=False)
    if net.routed:
        out.print(f"Router: {state['router']['ns']} (FRR, AS {net.router_asn}) at {net.router_ip}; BGP pool "
                  f"{net.bgp_pool} (cluster AS {net.cluster_asn}); the client {net.client_ip} on "
                  f"{net.client_subnet} behind it.", markup=False)
    out.print(f"Config: {state['config']}. Try: bmctl check preflight -c lab && bmctl create cluster -c lab")


def down(workspace: Path | None) -> None:
    _lab(workspace).down()
    out.print("Lab removed.")


def prune() -> None:
    removed = Lab.prune()
    for record in removed:
        state = record["state"]
        out.print(f"Removed lab {state['id']} ({len(state.get('nodes', []))} nodes, namespaces bl{state['id']}-*, "
                  f"state folder {record['state_dir']}): none of its processes ran.", markup=False)
    if not removed:
        from bmctl.lab.lab import RECORDS
        running = len(list(RECORDS.glob("*.json"))) if RECORDS.is_dir() else 0
        out.print("No lab to prune: " + (f"the {running} lab(s) on this machine have processes running."
                                         if running else "there is no lab on this machine."), markup=False)


def status(workspace: Path | None) -> None:
    rows = _lab(workspace).status()
    table = Table(title="bmctl lab")
    for col in ("node", "address", "role", "netns", "sshd", "containerd", "kubelet"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["name"], r["address"], r["role"], r["netns"], "up" if r["ssh"] else "down",
                      r["units"].get("containerd", "-"), r["units"].get("kubelet", "-"))
    out.print(table)
    router = _lab(workspace).router_status()
    if router is not None:
        daemons = ", ".join(f"{d} {'running' if v['running'] else 'stopped'} (pid {v['pid']})"
                            for d, v in router["daemons"].items())
        out.print(f"Router {router['ns']}: {daemons or 'no daemons'}", markup=False)
        if router["error"]:
            out.print(f"  BGP sessions unknown: {router['error']}", markup=False)
        sessions = Table(title="BGP sessions of the lab's router")
        for col in ("peer", "AS", "state", "prefixes received"):
            sessions.add_column(col)
        for peer, s in sorted(router["sessions"].items()):
            sessions.add_row(peer, str(s["asn"]), str(s["state"]), str(s["prefixes"]))
        if router["sessions"]:
            out.print(sessions)
        elif not router["error"]:
            out.print("  no BGP sessions (LB nodes peer once the cluster's load balancers run)", markup=False)


DEMO_NAMESPACE = "bmctl-demo"
DEMO_HOST = "web.lab.test"   # the demo's HTTPRoute on the bundled ingress


def demo(workspace: Path | None, concurrency: int) -> None:
    """Create the lab's cluster (`bmctl create cluster -c lab`), then a Deployment of a small web
    server behind a LoadBalancer Service, and show the Service IP answering from this machine."""
    import time
    import urllib.request

    import yaml

    from bmctl.commands.cluster import create_cluster
    from bmctl.config import load_config
    from bmctl.kube import Kube, wait
    from bmctl.render.ingress import GATEWAY, NAMESPACE as INGRESS_NAMESPACE

    lab = _lab(workspace)
    state = lab.load()
    if not state.get("real_nodes") or not state.get("host_veth"):
        raise BmctlError("the demo needs a lab of real nodes with this machine on its bridge.",
                         "run `bmctl lab down` and `bmctl lab up` (without --no-host-address).")
    ws = Workspace("lab", workspace)
    out.print("Creating the cluster: bmctl create cluster -c lab", markup=False)
    create_cluster(state["config"], workspace, dry_run=False, concurrency=concurrency)
    web = yaml.safe_load(Path(state["release"]).read_text())["images"]["web"]
    kube = Kube(ws.kubeconfig_path)
    labels = {"app.kubernetes.io/name": "web", "app.kubernetes.io/managed-by": "bmctl-lab-demo"}
    kube.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": DEMO_NAMESPACE}})
    kube.apply({"apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"name": "web", "namespace": DEMO_NAMESPACE, "labels": labels},
                "spec": {"replicas": 2, "selector": {"matchLabels": labels},
                         "template": {"metadata": {"labels": labels}, "spec": {"containers": [{
                             "name": "web", "image": web, "ports": [{"containerPort": 8080}],
                             "env": [{"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
                                     {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
                             "readinessProbe": {"httpGet": {"path": "/", "port": 8080}, "periodSeconds": 2}}]}}}})
    kube.apply({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": DEMO_NAMESPACE},
                "spec": {"type": "LoadBalancer", "selector": labels, "ports": [{"port": 80, "targetPort": 8080}]}})

    def external_ip():
        svc = kube.core().read_namespaced_service("web", DEMO_NAMESPACE)
        ingress = (svc.status.load_balancer.ingress or []) if svc.status.load_balancer else []
        return ingress[0].ip if ingress else None
    ip = wait("an EXTERNAL-IP for Service bmctl-demo/web", external_ip, 60)

    def answer():
        try:
            with urllib.request.urlopen(f"http://{ip}/", timeout=2) as resp:
                return resp.read().decode(errors="replace").strip()
        except OSError:
            return None
    start = time.monotonic()
    body = wait(f"the web pods to answer on http://{ip}/", answer, 120)
    out.print(f"Service bmctl-demo/web (type LoadBalancer) answers on http://{ip}/ after "
              f"{time.monotonic() - start:.1f} s: {body}", markup=False)
    try_ingress = ""
    config = load_config(Path(state["config"]))
    if config.runs_ingress:  # the same pods through the bundled ingress: an HTTPRoute on the ingress VIP
        vip = config.lb.vips.ingressVIP
        kube.apply({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
                    "metadata": {"name": "web", "namespace": DEMO_NAMESPACE},
                    "spec": {"parentRefs": [{"name": GATEWAY, "namespace": INGRESS_NAMESPACE}],
                             "hostnames": [DEMO_HOST], "rules": [{"backendRefs": [{"name": "web", "port": 80}]}]}})

        def through_ingress():
            request = urllib.request.Request(f"http://{vip}/", headers={"Host": DEMO_HOST})
            try:
                with urllib.request.urlopen(request, timeout=2) as resp:
                    return resp.read().decode(errors="replace").strip()
            except OSError:
                return None
        body = wait(f"HTTPRoute bmctl-demo/web to answer on http://{vip}/ (Host {DEMO_HOST})", through_ingress, 60)
        out.print(f"HTTPRoute bmctl-demo/web (host {DEMO_HOST}) answers through the ingress on http://{vip}/: {body}",
                  markup=False)
        try_ingress = f"curl -H 'Host: {DEMO_HOST}' http://{vip}/ ; "
    out.print(f"Try: curl http://{ip}/ ; {try_ingress}kubectl --kubeconfig {ws.kubeconfig_path} -n {DEMO_NAMESPACE} "
              "get pods,svc,httproutes", markup=False)
