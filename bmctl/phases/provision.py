from __future__ import annotations

from bmctl.host import Host, sync_files
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

    def run(self, ctx: Context) -> None:
        ipvs = ctx.config.spec.clusterNetwork.kubeProxyMode == "ipvs"

        def provision(host: Host) -> None:
            changes = sync_files(host, provision_files(ipvs))
            # -e: keys of modules not loaded yet (br_netfilter) are skipped, not fatal
            host.run(["sysctl", "-q", "-e", "-p", SYSCTL_FILE], step="apply sysctls")
            changed = [c.path for c in changes if c.status != "unchanged"]
            ctx.progress.host(host.address, "kernel settings " + ("written: " + ", ".join(changed) if changed
                                                                   else "unchanged"))

        ctx.inventory.parallel([n.address for n in ctx.config.all_nodes], provision)
