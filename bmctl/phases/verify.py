from __future__ import annotations

from bmctl import applied
from bmctl.kube import Kube, wait
from bmctl.phases.base import CLUSTER, Context, Phase, Step


class Verify(Phase):
    name = "verify"
    title = "Verification"

    def plan(self, ctx: Context) -> list[Step]:
        config = ctx.config
        steps = [Step(CLUSTER, f"the API answers through {config.lb.vips.controlPlaneVIP}:"
                               f"{config.lb.ports.controlPlaneLBPort}; every node registered")]
        if config.runs_metallb:
            steps.append(Step(CLUSTER, "MetalLB controller and speakers ready; pools accepted"))
        steps.append(Step(CLUSTER, "record the applied config (ConfigMap kube-system/bmctl-applied-config)"))
        return steps

    def run(self, ctx: Context) -> None:
        kube = Kube(ctx.options["kubeconfig_path"])
        wait("the API to answer through the VIP", kube.readyz, 120)
        ips = {n.ip for n in ctx.config.all_nodes}

        def registered():
            seen = {a.address for n in kube.core().list_node().items for a in (n.status.addresses or [])}
            return ips <= seen
        wait("every node to register", registered, 300, 2)
        ctx.progress.note(f"API answers through the VIP; {len(ips)} node(s) registered")
        text = ctx.options.get("config_text")
        if text is not None and ctx.options.get("workspace") is not None:
            applied.store(kube, ctx.options["workspace"], text)
            ctx.progress.note("applied config recorded (ConfigMap kube-system/bmctl-applied-config and "
                              "the workspace)")
