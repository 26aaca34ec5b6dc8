from __future__ import annotations

import re

import yaml

import bmctl.kube as kubeapi
from bmctl.config.model import LB_NODE_LABEL
from bmctl.errors import BmctlError
from bmctl.host import Host
from bmctl.kube import Kube, wait
from bmctl.phases.drift import restore, stranded_services, undeclared_drift
from bmctl.phases.base import CLUSTER, Context, Phase, Step
from bmctl.render import kube_proxy_config, metallb_manifests
from bmctl.render.engine import RenderedFile
from bmctl.render.metallb import NAMESPACE, UPSTREAM_VERSION

WAIT_SECONDS = 300


def node_names_by_ip(kube: Kube) -> dict[str, str]:
    out = {}
    for node in kube.core().list_node().items:
        for addr in node.status.addresses or []:
            if addr.type == "InternalIP":
                out[addr.address] = node.metadata.name
    return out


def label_lb_nodes(ctx: Context, kube: Kube) -> list[str]:
    """Label the LB nodes, and only them, baremetal.cluster.gke.io/lbnode=true."""
    wanted_ips = {n.ip for n in ctx.config.lb_nodes}
    names = wait("every load-balancer node to register",
                 lambda: (lambda m: m if wanted_ips <= set(m) else None)(node_names_by_ip(kube)), WAIT_SECONDS, 2)
    lb_names = {names[ip] for ip in wanted_ips}
    core = kube.core()
    for node in core.list_node().items:
        has = (node.metadata.labels or {}).get(LB_NODE_LABEL) == "true"
        if node.metadata.name in lb_names and not has:
            core.patch_node(node.metadata.name, {"metadata": {"labels": {LB_NODE_LABEL: "true"}}})
        elif node.metadata.name not in lb_names and LB_NODE_LABEL in (node.metadata.labels or {}):
            core.patch_node(node.metadata.name, {"metadata": {"labels": {LB_NODE_LABEL: None}}})
    return sorted(lb_names)


def _ready_pods(kube: Kube, selector: str) -> list:
    pods = kube.core().list_namespaced_pod(NAMESPACE, label_selector=selector).items
    return [p for p in pods if p.status and p.status.phase == "Running" and any(
        c.type == "Ready" and c.status == "True" for c in (p.status.conditions or []))]


# What a speaker reports on /metrics once it has loaded MetalLB's configuration (MetalLB v0.15.2,
# internal/k8s/controllers/stats.go, set by its config reconciler): loaded at least once, not stale.
# Loaded stays 0 while the API server refuses the speaker anything that reconciler reads (pools,
# advertisements, peers, secrets, configmaps, nodes, namespaces...), but not when it refuses what
# another controller watches, e.g. ServiceL2Status at cluster scope (issue 12): each controller-runtime
# controller waits only for its own informers, and the speaker exits only at the 2-minute cache-sync
# timeout. Such a refusal is logged by client-go's reflector with the server's "... is forbidden:
# User ..." message, retried at most 60 s apart, so it shows in any 90 s of the speaker's log.
SPEAKER_CONFIG_METRICS = {"metallb_k8s_client_config_loaded_bool": "1", "metallb_k8s_client_config_stale_bool": "0"}
REFUSED = " is forbidden: "
LOG_WINDOW_SECONDS = 90
SPEAKER_CHECK_SECONDS = 120


def _bgp_sessions_down(metrics: str, peers: list[str]) -> list[str]:
    """The peers (IP) whose session a speaker's /metrics does not show up
    (`metallb_bgp_session_up{peer="IP:179"} 1`, MetalLB v0.15.2 internal/bgp/native/stats.go)."""
    up = set(re.findall(r'^metallb_bgp_session_up\{[^}]*peer="([^"]+):\d+"[^}]*\} 1$', metrics, re.M))
    return [p for p in peers if p not in up]


def _metrics(host: Host, pod, container: str) -> tuple[str, str | None]:
    """A container's /metrics (its port named monitoring), read from its node (hostNetwork: it listens on
    the node IP, status.hostIP): (text, None), or ("", why not)."""
    port = next(p.container_port for c in pod.spec.containers if c.name == container
                for p in c.ports or [] if p.name == "monitoring")
    ip = pod.status.host_ip
    url = f"http://[{ip}]:{port}/metrics" if ":" in ip else f"http://{ip}:{port}/metrics"
    res = host.run(["curl", "-fsSg", "--max-time", "3", url], step=f"read the MetalLB {container}'s metrics",
                   sudo=False, check=False)
    if res.rc != 0:
        return "", f"its metrics at {url} do not answer ({res.stderr.strip() or f'curl exit {res.rc}'})"
    return res.stdout, None


def _speaker_metrics_problem(host: Host, pod, peers: list[str] = ()) -> str | None:
    """The speaker's configuration state (its own metrics) and, in BGP mode, its sessions (FRR mode:
    frr-metrics' metrics, the same metallb_bgp_session_up)."""
    text, why = _metrics(host, pod, "speaker")
    if why:
        return why
    values = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name in SPEAKER_CONFIG_METRICS:
            values[name] = value.strip()
    bad = [f"{n} {values.get(n, 'missing')}" for n, want in SPEAKER_CONFIG_METRICS.items() if values.get(n) != want]
    if bad:
        return f"it has not loaded MetalLB's configuration ({', '.join(bad)})"
    if not peers:
        return None
    if any(c.name == "frr-metrics" for c in pod.spec.containers):
        text, why = _metrics(host, pod, "frr-metrics")
        if why:
            return why
    down = _bgp_sessions_down(text, list(peers))
    return f"its BGP session to {', '.join(down)} is not established" if down else None


def _speaker_refused(kube: Kube, pod) -> str | None:
    """The last API refusal in the speaker's recent log, if any."""
    log = kube.core().read_namespaced_pod_log(pod.metadata.name, NAMESPACE, container="speaker",
                                              since_seconds=LOG_WINDOW_SECONDS)
    refused = [line for line in log.splitlines() if REFUSED in line]
    return f"the API server refuses it access: {refused[-1][-400:]}" if refused else None


def wait_speakers_working(ctx: Context, kube: Kube, names: list[str]) -> None:
    """Ready is not enough (/metrics answers whatever the speaker does): each speaker must have
    loaded its configuration, and the API server must refuse it nothing."""
    address = {name: n.address for ip, name in node_names_by_ip(kube).items()
               for n in ctx.config.lb_nodes if n.ip == ip}
    problems: dict[str, str] = {}
    unread: set[str] = set()

    def problem(pod, metrics: str | None) -> str | None:
        if metrics:
            return metrics
        try:
            return _speaker_refused(kube, pod)
        except kubeapi.ApiException as exc:  # no log from the kubelet (the lab's stand-in has none)
            if pod.spec.node_name not in unread:
                unread.add(pod.spec.node_name)
                ctx.progress.note(f"{pod.spec.node_name}: speaker log unreadable ({exc.status} {exc.reason}); "
                                  "checked its metrics only")
            return None

    def working() -> bool:
        ready = {p.spec.node_name: p for p in _ready_pods(kube, "app=metallb,component=speaker")}
        pods = {address[n]: ready[n] for n in names if n in ready}
        peers = [p.ip for p in ctx.config.lb.bgpPeers] if ctx.config.lb.type == "bgp" else []
        metrics = ctx.inventory.parallel(list(pods), lambda host: _speaker_metrics_problem(host, pods[host.address],
                                                                                           peers))
        problems.clear()
        problems.update({n: "its speaker pod is not Ready" for n in names if n not in ready})
        for addr, pod in pods.items():
            why = problem(pod, metrics[addr])
            if why:
                problems[pod.spec.node_name] = f"{why} (pod {pod.metadata.name})"
        return not problems

    try:
        wait("MetalLB speakers to load their configuration", working, SPEAKER_CHECK_SECONDS, 2)
    except BmctlError as exc:
        detail = "; ".join(f"{n} ({address.get(n, '?')}): {p}" for n, p in sorted(problems.items()))
        raise BmctlError(f"MetalLB speaker(s) not working after {SPEAKER_CHECK_SECONDS} s: {detail or exc.message}",
                         f"read that speaker's log (kubectl -n {NAMESPACE} logs POD): 'forbidden' means its RBAC "
                         f"does not match the speaker's MetalLB version (bmctl applies upstream's {UPSTREAM_VERSION} "
                         "RBAC: check the speaker image and that nothing edited ClusterRole metallb-system:speaker); "
                         "'failed to parse the configuration' names the MetalLB object at fault. Then re-run the "
                         "same command.") from None


def refuse_stranding(kube: Kube, config) -> None:
    """Never apply pools that would take an assigned IP away from a Service."""
    try:
        stranded = stranded_services(kube, config)
    except kubeapi.ApiException as exc:
        if exc.status == 404:  # no Services API yet? nothing can be stranded
            return
        raise
    if stranded:
        raise BmctlError(f"the address pools in the config would take the external IP away from "
                         f"{len(stranded)} Service(s): {', '.join(stranded)}. Nothing was changed.",
                         "keep the pools able to hand out those IPs (e.g. leave avoidBuggyIPs false on the pool "
                         "that holds an address ending in .0 or .255), or move the Services to other IPs first.")


class DataPlaneLB(Phase):
    name = "data-plane-lb"
    title = "Data-plane load balancer (MetalLB: layer 2 or BGP)"

    def applies(self, ctx: Context) -> bool:
        return ctx.config.runs_metallb

    def plan(self, ctx: Context) -> list[Step]:
        config = ctx.config
        lb_nodes = ", ".join(n.address for n in config.lb_nodes)
        steps = [Step(CLUSTER, f"label {LB_NODE_LABEL}=true on {lb_nodes} (and no other node)")]
        proxy = RenderedFile("kube-proxy-config.yaml", kube_proxy_config(config))
        mode = config.spec.clusterNetwork.kubeProxyMode
        steps.append(Step(CLUSTER, f"kube-proxy mode {mode}" + (" with strictARP" if mode == "ipvs" else ""),
                          [proxy]))
        for manifest in metallb_manifests(config, ctx.secrets):
            steps.append(Step(CLUSTER, f"server-side apply {manifest.path}", [manifest]))
        steps.append(Step(CLUSTER, "wait for the controller Deployment and speakers on every LB node, each speaker "
                                   "with its configuration loaded (its /metrics, read on the node) and no API refusal"))
        return steps

    def run(self, ctx: Context) -> None:
        kube = Kube(ctx.options["kubeconfig_path"])
        refuse_stranding(kube, ctx.config)
        names = label_lb_nodes(ctx, kube)
        ctx.progress.note(f"labelled {LB_NODE_LABEL}=true: {', '.join(names)}")
        for manifest in metallb_manifests(ctx.config, ctx.secrets):
            objs = [d for d in yaml.safe_load_all(manifest.content) if d]
            for obj in objs:
                kube.apply(obj)
            if any(o["kind"] == "CustomResourceDefinition" for o in objs):
                crds = [o["metadata"]["name"] for o in objs]
                wait("the MetalLB CRDs to be established", lambda: all(
                    any(c["type"] == "Established" and c["status"] == "True"
                        for c in kube.dynamic.resources.get(api_version="apiextensions.k8s.io/v1",
                                                             kind="CustomResourceDefinition").get(name=n)
                        .to_dict().get("status", {}).get("conditions", []))
                    for n in crds), 60)
                kube.forget_discovery()
            ctx.progress.note(f"applied {manifest.path} ({len(objs)} object(s))")
        wait("the MetalLB controller pod to be ready", lambda: _ready_pods(kube, "app=metallb,component=controller"),
             WAIT_SECONDS, 2)
        drift = undeclared_drift(kube, ctx.config, ctx.secrets)
        if drift:
            restore(kube, drift)
            for d in drift:
                ctx.progress.note(f"restored {d.kind} {d.name}: {d.what}")
        want = set(names)
        wait(f"MetalLB speakers ready on exactly the {len(want)} load-balancer node(s) {', '.join(sorted(want))}",
             lambda: {p.spec.node_name for p in _ready_pods(kube, "app=metallb,component=speaker")} == want,
             WAIT_SECONDS, 2)
        wait_speakers_working(ctx, kube, sorted(want))
        ctx.progress.note(f"MetalLB controller ready; {len(want)} speaker(s) ready, configuration loaded")
