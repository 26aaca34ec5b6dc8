from __future__ import annotations

from bmctl.config.model import LB_NODE_LABEL
from bmctl.phases.base import CLUSTER, Context, Phase, Step
from bmctl.render import kube_proxy_config, metallb_manifests
from bmctl.render.engine import RenderedFile


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
