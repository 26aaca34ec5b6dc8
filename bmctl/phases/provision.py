from __future__ import annotations

from bmctl.phases.base import Context, Phase, Step
from bmctl.render.engine import RenderedFile, render

MODULES_FILE = "/etc/modules-load.d/bmctl.conf"
SYSCTL_FILE = "/etc/sysctl.d/90-bmctl.conf"


def provision_files(ipvs: bool) -> list[RenderedFile]:
    return [
        RenderedFile(MODULES_FILE, render("kubeadm/modules.conf.j2", ipvs=ipvs)),
        RenderedFile(SYSCTL_FILE, render("kubeadm/sysctl.conf.j2")),
    ]


class Provision(Phase):
    name = "provision"
    title = "Node provisioning"

    def plan(self, ctx: Context) -> list[Step]:
        ipvs = ctx.config.spec.clusterNetwork.kubeProxyMode == "ipvs"
        steps = []
        for node in ctx.config.all_nodes:
            steps.append(Step(node.address, "kernel modules, sysctls, swap off", provision_files(ipvs)))
            steps.append(Step(node.address, "container runtime, kubelet and kubeadm present"))
        return steps
