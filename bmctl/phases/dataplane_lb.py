from __future__ import annotations

import yaml

import bmctl.kube as kubeapi
from bmctl.config.model import LB_NODE_LABEL
from bmctl.errors import BmctlError
from bmctl.kube import Kube, wait
from bmctl.phases.drift import restore, stranded_services, undeclared_drift
from bmctl.phases.base import CLUSTER, Context, Phase, Step
from bmctl.render import kube_proxy_config, metallb_manifests
from bmctl.render.engine import RenderedFile
from bmctl.render.metallb import NAMESPACE

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
    title = "Data-plane load balancer (MetalLB, layer 2)"

    def applies(self, ctx: Context) -> bool:
        return ctx.config.bundled

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
        steps.append(Step(CLUSTER, "wait for the controller Deployment and speakers on every LB node"))
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
        ctx.progress.note(f"MetalLB controller ready; {len(want)} speaker(s) ready")
