from __future__ import annotations

from bmctl.phases.base import Context, Phase, Step
from bmctl.render.kubeadm import kubeadm_action, kubeadm_config


class Kubeadm(Phase):
    name = "kubeadm"
    title = "Kubernetes (kubeadm)"

    def plan(self, ctx: Context) -> list[Step]:
        config = ctx.config
        steps = []
        for node in config.all_nodes:
            action = kubeadm_action(config, node)
            what = {"init": "kubeadm init (first control-plane node)",
                    "join-control-plane": "kubeadm join --control-plane (one at a time)",
                    "join": "kubeadm join (workers and load-balancer nodes, in parallel)"}[action]
            steps.append(Step(node.address, what, [kubeadm_config(config, node, ctx.secrets)]))
        steps.append(Step(config.control_plane_nodes[0].address,
                          f"fetch admin.conf into the workspace as {config.name}-kubeconfig"))
        return steps
