"""`bmctl check cluster`: is the cluster healthy? One table (or JSON), exit status 1 on any failure.

It reads (bmctl/state.py), never changes: nodes (Ready, versions), static pods, etcd (members against
the control-plane nodes, health, leader, DB size against its quota, alarms), certificates (days
left), the control-plane VIP (who holds it; BGP: sessions and announcement), MetalLB (speakers on
exactly the LB nodes, every LoadBalancer Service's IP announced), the pod network and the bundled
ingress. Each failure names the node, the object and what to do.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from rich.markup import escape
from rich.table import Table

from bmctl import runlog, state
from bmctl.commands.cluster import access, load
from bmctl.errors import BmctlError
from bmctl.host import Inventory
from bmctl.output import out

CERT_WARN_DAYS = 30
ETCD_DB_WARN = 0.8   # of the quota
ETCD_DB_FAIL = 0.95


@dataclass
class Check:
    area: str
    node: str        # an address, or "cluster"
    object: str
    status: str      # ok, warn, fail
    detail: str
    fix: str = ""


class Checks(list):
    def add(self, area: str, node: str, obj: str, status: str, detail: str, fix: str = "") -> None:
        self.append(Check(area, node, obj, status, detail, fix if status != "ok" else ""))


def _parallel(inventory: Inventory, addresses: list[str], fn) -> dict[str, object]:
    """fn per node; a node that cannot be reached gives its error (a BmctlError) instead of a value."""
    def safe(host):
        try:
            return fn(host)
        except BmctlError as exc:
            return exc
    return inventory.parallel(addresses, safe)


def _unreachable(value) -> str | None:
    return value.message if isinstance(value, BmctlError) else None


def check_nodes(checks: Checks, config, release, found: dict[str, state.NodeState]) -> None:
    want_kubelet = release.kubernetes
    containerd = release.binaries.get("containerd")
    for node in config.all_nodes:
        st = found.get(node.ip)
        if st is None:
            checks.add("nodes", node.address, "Node", "fail", "not registered with the API server",
                       f"look at the kubelet on {node.address} (journalctl -u kubelet); re-run `bmctl create cluster` "
                       "to join it")
            continue
        obj = f"Node {st.name}"
        if not st.ready:
            checks.add("nodes", node.address, obj, "fail", f"not Ready ({st.why_not_ready})",
                       f"kubectl describe node {st.name}; look at its kubelet and containerd")
        else:
            checks.add("nodes", node.address, obj, "ok", "Ready")
        if st.kubelet != want_kubelet:
            checks.add("nodes", node.address, obj, "fail", f"kubelet {st.kubelet}, the release has {want_kubelet}",
                       "install the release's kubelet: re-run `bmctl create cluster` (or finish the upgrade)")
        else:
            checks.add("nodes", node.address, obj, "ok", f"kubelet {st.kubelet}")
        runtime = st.runtime.split("://", 1)[-1].lstrip("v")
        if containerd is not None:
            want = containerd.version.lstrip("v").split("-")[0]
            if runtime != want:
                checks.add("nodes", node.address, obj, "warn", f"containerd {runtime}, the release has {want}",
                           "a containerd from the node's packages runs; the release's comes with its bundle")
            else:
                checks.add("nodes", node.address, obj, "ok", f"containerd {runtime}")


def check_static_pods(checks: Checks, config, found: dict[str, state.NodeState],
                      pods: dict[tuple[str, str], state.PodState]) -> None:
    lb_pods = (["haproxy", "frr" if config.lb.type == "bgp" else "keepalived"] if config.bundled else [])
    want: dict[str, list[str]] = {}
    for node in config.control_plane_nodes:
        want.setdefault(node.address, []).extend(["etcd", "kube-apiserver", "kube-controller-manager",
                                                  "kube-scheduler"])
    for node in config.lb_nodes:
        want.setdefault(node.address, []).extend(lb_pods)
    for node in config.all_nodes:
        st = found.get(node.ip)
        for component in want.get(node.address, []):
            if st is None:
                checks.add("static pods", node.address, component, "fail", "node not registered: unknown",
                           f"see the node check of {node.address}")
                continue
            pod = pods.get((component, st.name))
            if pod is None:
                checks.add("static pods", node.address, f"kube-system/{component}-{st.name}", "fail",
                           "no such pod (its manifest is missing, or the kubelet does not run it)",
                           f"ls /etc/kubernetes/manifests on {node.address}; re-run `bmctl create cluster`")
            elif not pod.ready:
                checks.add("static pods", node.address, f"kube-system/{pod.name}", "fail",
                           f"{pod.phase}, not Ready ({pod.restarts} restarts)",
                           f"kubectl -n kube-system logs {pod.name}; crictl ps -a on {node.address}")
            else:
                checks.add("static pods", node.address, f"kube-system/{pod.name}", "ok",
                           f"Running, Ready ({pod.restarts} restarts)")


def check_etcd(checks: Checks, config, asked: dict[str, object]) -> None:
    cps = config.control_plane_nodes
    answers = {a: v for a, v in asked.items() if isinstance(v, state.EtcdState) and not v.error}
    for address, value in asked.items():
        why = _unreachable(value) or (value.error if isinstance(value, state.EtcdState) else "")
        if why:
            checks.add("etcd", address, "etcd", "fail", f"cannot ask etcd here: {why}",
                       f"crictl ps -a --name etcd and crictl logs on {address}; a lost data folder "
                       "(/var/lib/etcd/member) needs `bmctl restore cluster`")
    if not answers:
        checks.add("etcd", "cluster", "etcd", "fail", "no control-plane node's etcd answers",
                   "etcd is down on every control-plane node: look at its logs; restore from a backup if its data "
                   "is lost")
        return
    et = next(iter(answers.values()))
    # members against the control-plane nodes: each node's IP in exactly one member's peer URLs
    by_ip: dict[str, list[dict]] = {}
    for m in et.members:
        for url in m["peerURLs"]:
            host = url.split("://", 1)[-1].rsplit(":", 1)[0].strip("[]")
            by_ip.setdefault(host, []).append(m)
    for node in cps:
        ms = by_ip.get(node.ip, [])
        if len(ms) == 1 and not ms[0]["isLearner"]:
            checks.add("etcd", node.address, f"member {ms[0]['name']}", "ok", f"member {ms[0]['id']}")
        elif not ms:
            checks.add("etcd", node.address, "etcd member", "fail", "no etcd member has this node's peer URL",
                       "the node left etcd: re-run `bmctl create cluster` to join it again")
        else:
            checks.add("etcd", node.address, "etcd member", "fail",
                       f"{len(ms)} member(s) for this node{' (a learner)' if any(m['isLearner'] for m in ms) else ''}",
                       "remove the stale member (etcdctl member remove ID) and re-run `bmctl create cluster`")
    cp_ips = {n.ip for n in cps}
    for ip, ms in by_ip.items():
        if ip not in cp_ips:
            for m in ms:
                checks.add("etcd", "cluster", f"member {m['name']}", "fail",
                           f"member {m['id']} at {ip} is not a control-plane node of the config",
                           f"etcdctl member remove {m['id']} (on a control-plane node, in the etcd container), if "
                           "that machine is gone for good")
    # health and leader
    unhealthy = [h for h in et.health if not h["health"]]
    for h in unhealthy:
        checks.add("etcd", h["endpoint"] or "cluster", "etcd health", "fail", f"unhealthy: {h['error'] or 'no answer'}",
                   "look at that member's etcd log (crictl logs on its node)")
    if et.health and not unhealthy:
        checks.add("etcd", "cluster", "etcd health", "ok", f"{len(et.health)} member(s) healthy")
    leaders = {e["leader"] for e in et.endpoints if e["leader"] and e["leader"] != "0"}
    member_ids = {m["id"] for m in et.members}
    if len(leaders) == 1 and leaders <= member_ids:
        name = next(m["name"] for m in et.members if m["id"] in leaders)
        checks.add("etcd", "cluster", "etcd leader", "ok", f"leader {name}")
    else:
        checks.add("etcd", "cluster", "etcd leader", "fail",
                   f"members report {len(leaders)} leader(s)" + (f" ({', '.join(sorted(leaders))})" if leaders else ""),
                   "etcd has no quorum: bring its members back (check their nodes and logs)")
    for e in et.endpoints:
        for error in e["errors"]:
            checks.add("etcd", e["endpoint"] or "cluster", "etcd status", "fail", str(error)[-300:],
                       "look at that member's etcd log (crictl logs on its node)")
        if e["dbSize"]:
            share = e["dbSize"] / et.quota
            status = "fail" if share >= ETCD_DB_FAIL else "warn" if share >= ETCD_DB_WARN else "ok"
            checks.add("etcd", e["endpoint"], "etcd database", status,
                       f"{e['dbSize'] / 2**20:.1f} MiB of its {et.quota / 2**30:.1f} GiB quota ({share:.0%})",
                       "compact and defragment etcd (etcdctl compact, then defrag one member at a time)")
    if et.alarms:
        for alarm in et.alarms:
            checks.add("etcd", "cluster", "etcd alarm", "fail", alarm,
                       "NOSPACE: compact, defragment, then `etcdctl alarm disarm`; CORRUPT: restore that member")
    else:
        checks.add("etcd", "cluster", "etcd alarms", "ok", "none")


def check_certificates(checks: Checks, asked: dict[str, object]) -> None:
    for address, value in asked.items():
        if _unreachable(value) or isinstance(value, str):
            checks.add("certificates", address, "kubeadm certs", "fail",
                       f"cannot read: {_unreachable(value) or value}", "run `kubeadm certs check-expiration` there")
            continue
        soonest = None
        for c in value:
            what = f"{'CA ' if c.authority else ''}{c.name}"
            if c.external:
                continue
            if c.missing:
                # kubeadm writes super-admin.conf on the node that ran `kubeadm init` only
                if not c.authority and c.name != "super-admin.conf":
                    checks.add("certificates", address, what, "fail", "missing",
                               "re-run `bmctl create cluster`, or `kubeadm init phase certs` for it")
                continue
            if c.days is None:
                continue
            if c.days <= 0:
                checks.add("certificates", address, what, "fail", f"expired {c.expires:%Y-%m-%d}",
                           "kubeadm certs renew all on this node, then restart the control-plane static pods")
            elif c.days < CERT_WARN_DAYS:
                checks.add("certificates", address, what, "warn", f"{c.days:.0f} days left (until {c.expires:%Y-%m-%d})",
                           "kubeadm certs renew all on this node (an upgrade renews them too)")
            if soonest is None or c.days < soonest.days:
                soonest = c
        if soonest is not None and soonest.days >= CERT_WARN_DAYS:
            checks.add("certificates", address, "kubeadm certs", "ok",
                       f"{len(value)} checked; first to expire: {soonest.name} in {soonest.days:.0f} days")


def check_vip(checks: Checks, config, inventory: Inventory, kube) -> None:
    vip = config.lb.vips.controlPlaneVIP
    lbs = [n.address for n in config.lb_nodes]
    if config.bundled and config.lb.type == "bgp":
        from bmctl.phases.controlplane_lb import bgp_vip_state
        peers = [p.ip for p in config.lb.bgpPeers]
        states = _parallel(inventory, lbs, bgp_vip_state)
        for address in lbs:
            st = states[address]
            why = _unreachable(st)
            down = [] if why else [p for p in peers if st.get("sessions", {}).get(p) != "Established"]
            if why or not st:
                checks.add("VIP", address, f"BGP {vip}", "fail", why or "its FRR static pod has written no state",
                           f"kubectl -n kube-system logs frr-NODE (on {address})")
            elif down:
                checks.add("VIP", address, f"BGP {vip}", "fail", f"no established session to {', '.join(down)}",
                           "check the peer accepts this node (AS numbers, address) and the link; frr's log says why")
            elif not st["announced"]:
                checks.add("VIP", address, f"BGP {vip}", "fail", "VIP not announced (its HAProxy does not answer)",
                           f"look at the haproxy static pod on {address}")
            else:
                checks.add("VIP", address, f"BGP {vip}", "ok",
                           f"sessions to {', '.join(peers)} established; {vip}/32 announced")
    elif config.bundled:
        held = _parallel(inventory, lbs, lambda h: state.holds(h, vip))
        holders = [a for a in lbs if held[a] is True]
        for address in lbs:
            why = _unreachable(held[address])
            if why:
                checks.add("VIP", address, f"VIP {vip}", "fail", f"cannot read this LB node's addresses: {why}",
                           "check the node is up and reachable over SSH")
        if len(holders) == 1:
            checks.add("VIP", holders[0], f"VIP {vip}", "ok", "held by this node (Keepalived master)")
        elif not holders:
            checks.add("VIP", "cluster", f"VIP {vip}", "fail", "held by no LB node",
                       "look at the keepalived and haproxy static pods' logs on the LB nodes")
        else:
            checks.add("VIP", "cluster", f"VIP {vip}", "fail", f"held by {', '.join(holders)} at once (split brain)",
                       "VRRP adverts do not pass between them: check multicast on the segment, or set "
                       "spec.loadBalancer.vrrp.unicast: true and run `bmctl update loadbalancer`")
    port = config.lb.ports.controlPlaneLBPort
    if kube is not None and kube.readyz():
        checks.add("VIP", "cluster", f"API {vip}:{port}", "ok", "answers /readyz")
    else:
        checks.add("VIP", "cluster", f"API {vip}:{port}", "fail", "does not answer /readyz through the VIP",
                   "look at the haproxy and kube-apiserver static pods, and etcd below")


def check_metallb(checks: Checks, config, kube, found: dict[str, state.NodeState]) -> None:
    from bmctl.render.metallb import NAMESPACE
    lb_names = {found[n.ip].name for n in config.lb_nodes if n.ip in found}
    speakers = state.pods(kube, NAMESPACE, "app=metallb,component=speaker")
    on = {p.node for p in speakers if p.ready}
    for name in sorted(lb_names - on):
        checks.add("MetalLB", name, "speaker", "fail", "no Ready speaker on this LB node",
                   f"kubectl -n {NAMESPACE} get pods -o wide; the node must carry baremetal.cluster.gke.io/lbnode=true")
    for name in sorted(on - lb_names):
        checks.add("MetalLB", name, "speaker", "fail", "a speaker runs on a node that is not an LB node",
                   "re-run `bmctl update loadbalancer` to put the speakers back on the LB nodes")
    if on == lb_names:
        checks.add("MetalLB", "cluster", "speakers", "ok", f"Ready on exactly the {len(on)} LB node(s)")
    controller = [p for p in state.pods(kube, NAMESPACE, "app=metallb,component=controller") if p.ready]
    checks.add("MetalLB", "cluster", "controller", "ok" if controller else "fail",
               "Ready" if controller else "not Ready", f"kubectl -n {NAMESPACE} logs deploy/controller")
    kind = "ServiceBGPStatus" if config.lb.type == "bgp" else "ServiceL2Status"
    statuses = state.get(kube, "metallb.io/v1beta1", kind, namespace=NAMESPACE)
    announced = {(s.get("status", {}).get("serviceNamespace"), s.get("status", {}).get("serviceName"))
                 for s in statuses or []}
    for svc in kube.core().list_service_for_all_namespaces().items:
        if svc.spec.type != "LoadBalancer":
            continue
        obj = f"Service {svc.metadata.namespace}/{svc.metadata.name}"
        ips = [i.ip for i in (svc.status.load_balancer.ingress or [])] if svc.status.load_balancer else []
        if not ips:
            checks.add("MetalLB", "cluster", obj, "fail", "no external IP assigned",
                       f"kubectl -n {svc.metadata.namespace} describe service {svc.metadata.name} (MetalLB's events "
                       "say why: pool exhausted, IP not in a pool, ...)")
        elif statuses is not None and (svc.metadata.namespace, svc.metadata.name) not in announced:
            checks.add("MetalLB", "cluster", obj, "fail", f"{', '.join(ips)} assigned but announced by no node",
                       "the Service needs a Ready endpoint on a node a speaker announces from; look at the speakers' "
                       "logs")
        else:
            checks.add("MetalLB", "cluster", obj, "ok", f"{', '.join(ips)} announced")


def check_network(checks: Checks, config, kube, found: dict[str, state.NodeState]) -> None:
    from bmctl.render.network import NAMESPACE
    for node in config.all_nodes:
        st = found.get(node.ip)
        if st is None:
            continue
        if st.network_unavailable:
            checks.add("pod network", node.address, f"Node {st.name}", "fail", "NetworkUnavailable",
                       "look at the pod network's pod on this node")
        elif config.spec.clusterNetwork.cni == "flannel" and not st.pod_cidr:
            checks.add("pod network", node.address, f"Node {st.name}", "fail", "no pod CIDR assigned",
                       "kube-controller-manager allocates it (--allocate-node-cidrs): look at its log")
    if config.spec.clusterNetwork.cni != "flannel":
        checks.add("pod network", "cluster", "CNI", "ok", "your own CNI: nodes report no NetworkUnavailable")
        return
    ready = {p.node for p in state.pods(kube, NAMESPACE, "app=flannel") if p.ready}
    missing = [st.name for st in found.values() if st.name not in ready]
    for name in missing:
        checks.add("pod network", name, "flannel", "fail", "no Ready flannel pod on this node",
                   f"kubectl -n {NAMESPACE} get pods -o wide and the pod's log")
    if not missing:
        checks.add("pod network", "cluster", "flannel", "ok", f"Ready on all {len(found)} node(s)")


def check_ingress(checks: Checks, config, kube, inventory: Inventory) -> None:
    from bmctl.render.ingress import GATEWAY, NAME, NAMESPACE
    vip = config.lb.vips.ingressVIP
    gw = state.get(kube, "gateway.networking.k8s.io/v1", "Gateway", GATEWAY, NAMESPACE) or {}
    programmed = any(c.get("type") == "Programmed" and c.get("status") == "True"
                     for c in gw.get("status", {}).get("conditions", []))
    checks.add("ingress", "cluster", f"Gateway {NAMESPACE}/{GATEWAY}", "ok" if programmed else "fail",
               "Programmed" if programmed else ("not Programmed" if gw else "missing"),
               f"kubectl -n {NAMESPACE} describe gateway {GATEWAY}; Traefik's log (kubectl -n {NAMESPACE} logs "
               f"ds/{NAME})")
    url = f"http://[{vip}]/" if ":" in vip else f"http://{vip}/"
    asked = _parallel(inventory, [config.lb_nodes[0].address], lambda h: state.http_code(h, url))
    code = next(iter(asked.values()))
    if isinstance(code, str):
        checks.add("ingress", "cluster", f"ingress VIP {vip}:80", "ok", f"answers (HTTP {code})")
    else:
        checks.add("ingress", "cluster", f"ingress VIP {vip}:80", "fail",
                   f"no answer{': ' + _unreachable(code) if _unreachable(code) else ''}",
                   f"kubectl -n {NAMESPACE} get pods,svc -o wide: Traefik on the LB nodes and the Service holding "
                   f"{vip}")


def gather(config, inventory: Inventory, kubeconfig: Path) -> tuple[Checks, object]:
    """The checks, and the API client (None when the API does not answer)."""
    checks = Checks()
    from bmctl import release as releases
    release = releases.of(config)
    cps = [n.address for n in config.control_plane_nodes]
    kube = None
    found: dict[str, state.NodeState] = {}
    try:
        from bmctl.kube import Kube
        kube = Kube(kubeconfig)
        if kube.readyz():
            found = state.nodes(kube)
        else:
            kube_error = "the API server does not answer through the VIP"
            kube = None
    except Exception as exc:  # the API is one of the things checked: its failure is a result
        kube_error = f"the API server cannot be read: {str(exc).splitlines()[0][:300]}"
        kube = None
    if kube is None:
        checks.add("API", "cluster", "kube-apiserver", "fail", kube_error,
                   "the checks below that need the API are skipped; see the VIP and etcd rows for why")
    etcds = _parallel(inventory, cps, state.etcd)
    certs = _parallel(inventory, cps, state.certificates)
    if kube is not None:
        check_nodes(checks, config, release, found)
        check_static_pods(checks, config, found, state.static_pods(kube))
    check_etcd(checks, config, etcds)
    check_certificates(checks, certs)
    if config.bundled:
        check_vip(checks, config, inventory, kube)
    if kube is not None:
        if config.runs_metallb:
            check_metallb(checks, config, kube, found)
        check_network(checks, config, kube, found)
        if config.runs_ingress:
            check_ingress(checks, config, kube, inventory)
    return checks, kube


def check_cluster(target: str, workspace: Path | None, output: str, accept_new_host_keys: bool,
                  concurrency: int, snapshot: bool = False, snapshot_output: Path | None = None) -> int:
    config, ws = load(target, workspace)
    if not ws.kubeconfig_path.exists():
        raise BmctlError(f"cluster {config.name}: no kubeconfig at {ws.kubeconfig_path}, so it was not created from "
                         "this workspace.", f"run `bmctl create cluster -c {config.name}` first (or pass the "
                         "--workspace it was created from).")
    ws.ensure()
    log_dir = ws.new_log_dir("check-cluster")
    runlog.start(log_dir, [])
    start = time.monotonic()
    inventory = Inventory(config, access(config, accept_new_host_keys), concurrency)
    try:
        checks, kube = gather(config, inventory, ws.kubeconfig_path)
        seconds = time.monotonic() - start
        if snapshot:
            return _snapshot(config, ws, inventory, kube, checks, snapshot_output, output)
    finally:
        inventory.close()
        runlog.stop()
    failed = [c for c in checks if c.status == "fail"]
    warned = [c for c in checks if c.status == "warn"]
    if output == "json":
        out.print_json(json.dumps({"ok": not failed, "cluster": config.name, "seconds": round(seconds, 1),
                                   "checks": [asdict(c) for c in checks]}))
    else:
        table = Table(title=f"Health of cluster {config.name}")
        for col in ("area", "node", "object", "status", "detail"):
            table.add_column(col)
        style = {"ok": "green", "warn": "yellow", "fail": "bold red"}
        for c in checks:
            detail = c.detail + (f" -> {c.fix}" if c.fix else "")
            table.add_row(escape(c.area), escape(c.node), escape(c.object), f"[{style[c.status]}]{c.status}[/]",
                          escape(detail))
        out.print(table)
        verdict = (f"FAILED: {len(failed)} failure(s)" if failed else "healthy") + \
            (f", {len(warned)} warning(s)" if warned else "")
        out.print(f"Cluster {config.name}: {verdict} ({len(checks)} checks in {seconds:.1f} s). Logs: {log_dir}",
                  markup=False)
    return 1 if failed else 0


def _snapshot(config, ws, inventory: Inventory, kube, checks: Checks, path: Path | None, output: str) -> int:
    """Write the snapshot (bmctl/snapshot.py); its exit status is 0 once written, whatever the health
    (a snapshot is for a cluster that is not well)."""
    from bmctl import snapshot
    from bmctl.secrets import load_or_create
    from bmctl.workspace import _mkdir_private
    secrets = load_or_create(ws.secrets_path).values() if ws.secrets_path.exists() else []
    if path is None:
        path = _mkdir_private(ws.dir / "snapshots") / f"snapshot-{config.name}-{time.strftime('%Y%m%d-%H%M%S')}.tar.gz"
    elif path.parent and not path.parent.is_dir():
        raise BmctlError(f"--snapshot-output {path}: its folder does not exist.", "create it, or name another file.")
    summary = snapshot.write(path, config, inventory, kube, [asdict(c) for c in checks], secrets,
                             ws.kubeconfig_path, ws.dir / "log")
    failed = sum(1 for c in checks if c.status == "fail")
    if output == "json":
        out.print_json(json.dumps({**summary, "ok": not failed}))
    else:
        out.print(f"Snapshot of cluster {config.name}: {summary['path']} ({summary['bytes'] / 2**20:.1f} MiB, "
                  f"{summary['files']} files, {summary['seconds']} s; mode 0600). It holds no secret: Secrets by name "
                  f"only, {summary['redacted']} secret value(s) replaced with <redacted> (SNAPSHOT.txt says what is "
                  f"in it). Health: {'FAILED, ' + str(failed) + ' failure(s)' if failed else 'healthy'} "
                  "(health.json).", markup=False)
        for note in summary["notes"]:
            out.print(f"  not collected: {note}", markup=False)
    return 0
