from __future__ import annotations

from bmctl.phases.base import CLUSTER, Context, Phase, Step


class Verify(Phase):
    name = "verify"
    title = "Verification"

    def plan(self, ctx: Context) -> list[Step]:
        config = ctx.config
        steps = [Step(CLUSTER, f"the API answers through {config.lb.vips.controlPlaneVIP}:"
                               f"{config.lb.ports.controlPlaneLBPort}; every node Ready")]
        if config.bundled:
            steps.append(Step(CLUSTER, "MetalLB controller and speakers ready; pools accepted"))
        return steps
