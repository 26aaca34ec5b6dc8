from __future__ import annotations

from bmctl.config.model import APISERVER_PORT, MEMBERLIST_PORT
from bmctl.phases.base import Context, Phase, Step
from bmctl.render.controlplane_lb import HAPROXY_HEALTH_PORT


class Preflight(Phase):
    name = "preflight"
    title = "Preflight checks"

    def plan(self, ctx: Context) -> list[Step]:
        config = ctx.config
        lb = {n.address for n in config.lb_nodes}
        cps = {n.address for n in config.control_plane_nodes}
        steps = []
        for node in config.all_nodes:
            a = node.address
            steps.append(Step(a, f"SSH as {config.spec.nodeAccess.loginUser} and sudo; OS, kernel, binaries, "
                                 "time sync, swap off"))
            steps.append(Step(a, f"node IP {node.ip} present; subnet read from the node"))
            ports = []
            if a in cps:
                ports.append(APISERVER_PORT)
            if a in lb and config.bundled:
                ports += [config.lb.ports.controlPlaneLBPort, HAPROXY_HEALTH_PORT, MEMBERLIST_PORT]
            if ports:
                steps.append(Step(a, "ports free: " + ", ".join(str(p) for p in sorted(set(ports)))))
        if config.bundled:
            first = config.lb_nodes[0].address
            steps.append(Step(first, "all load-balancer nodes, VIPs and pools in one L2 subnet"))
            steps.append(Step(first, "VIPs and pool addresses not answering ARP"))
            steps.append(Step(first, f"no other VRRP router uses virtual_router_id {config.virtual_router_id}"))
        return steps
