from __future__ import annotations

from bmctl.phases.base import Context, Phase, Step
from bmctl.render import lb_node_files


class ControlPlaneLB(Phase):
    name = "control-plane-lb"
    title = "Control-plane load balancer (Keepalived + HAProxy)"

    def applies(self, ctx: Context) -> bool:
        return ctx.config.bundled

    def plan(self, ctx: Context) -> list[Step]:
        config = ctx.config
        steps = []
        for node in config.lb_nodes:
            files = lb_node_files(config, node, ctx.facts[node.address])
            steps.append(Step(node.address, "write HAProxy and Keepalived configs and static pods", files))
        vip = config.lb.vips.controlPlaneVIP
        steps.append(Step(config.lb_nodes[0].address,
                          f"wait until the VIP {vip} is held by one node and HAProxy answers on "
                          f"{vip}:{config.lb.ports.controlPlaneLBPort}"))
        return steps
