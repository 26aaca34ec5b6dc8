"""Node provisioning: kernel modules and sysctls, and the firewall ports bmctl's parts use."""
from __future__ import annotations

from bmctl.config.model import APISERVER_PORT, MEMBERLIST_PORT, ClusterConfig
from bmctl.host import Host, sync_files
from bmctl.phases.base import Context, Phase, Step
from bmctl.render.engine import RenderedFile, render

MODULES_FILE = "/etc/modules-load.d/bmctl.conf"
SYSCTL_FILE = "/etc/sysctl.d/90-bmctl.conf"
KUBELET_PORT = 10250

# Loads each module not loaded yet; prints the ones that could not be loaded.
_MODULES = r'''
for m; do
  [ -d "/sys/module/$m" ] || modprobe "$m" 2>/dev/null || echo "$m"
done
'''

# Opens each "port/proto" argument in the active firewall manager (ufw or firewalld); both commands
# are idempotent. Prints the manager used, or "none".
_FIREWALL = r'''
if command -v ufw >/dev/null 2>&1 && ufw status 2>/dev/null | grep -q "Status: active"; then
  for p; do ufw allow "$p" >/dev/null; done
  echo ufw
elif command -v firewall-cmd >/dev/null 2>&1 && firewall-cmd --state >/dev/null 2>&1; then
  for p; do firewall-cmd -q --permanent --add-port="$p"; done
  firewall-cmd -q --reload
  echo firewalld
else
  echo none
fi
'''


def provision_files(ipvs: bool) -> list[RenderedFile]:
    return [
        RenderedFile(MODULES_FILE, render("kubeadm/modules.conf.j2", ipvs=ipvs)),
        RenderedFile(SYSCTL_FILE, render("kubeadm/sysctl.conf.j2")),
    ]


def modules(ipvs: bool) -> list[str]:
    return [line for line in provision_files(ipvs)[0].content.splitlines() if line and not line.startswith("#")]


def firewall_ports(config: ClusterConfig, address: str) -> list[str]:
    ports = [f"{KUBELET_PORT}/tcp"]
    if address in {n.address for n in config.control_plane_nodes}:
        ports += [f"{APISERVER_PORT}/tcp", "2379-2380/tcp"]
    if config.bundled and address in {n.address for n in config.lb_nodes}:
        ports += [f"{config.lb.ports.controlPlaneLBPort}/tcp", f"{MEMBERLIST_PORT}/tcp", f"{MEMBERLIST_PORT}/udp"]
    return ports


class Provision(Phase):
    name = "provision"
    title = "Node provisioning"

    def plan(self, ctx: Context) -> list[Step]:
        ipvs = ctx.config.spec.clusterNetwork.kubeProxyMode == "ipvs"
        steps = []
        for address in ctx.only([n.address for n in ctx.config.all_nodes]):
            steps.append(Step(address, "kernel modules and sysctls", provision_files(ipvs)))
            steps.append(Step(address, "open in the firewall (ufw or firewalld, when active): " +
                              ", ".join(firewall_ports(ctx.config, address))))
        return steps

    def run(self, ctx: Context) -> None:
        ipvs = ctx.config.spec.clusterNetwork.kubeProxyMode == "ipvs"

        def provision(host: Host) -> None:
            changes = ctx.record(host.address, sync_files(host, provision_files(ipvs)))
            missing = host.run(["sh", "-c", _MODULES, "sh", *modules(ipvs)], step="load kernel modules").stdout.split()
            # -e: keys of modules that are not loaded are skipped, not fatal
            host.run(["sysctl", "-q", "-e", "-p", SYSCTL_FILE], step="apply sysctls")
            fw = host.run(["sh", "-c", _FIREWALL, "sh", *firewall_ports(ctx.config, host.address)],
                          step="open firewall ports").stdout.strip()
            changed = [c.path for c in changes if c.status != "unchanged"]
            ctx.progress.host(host.address, "kernel settings " + ("written: " + ", ".join(changed) if changed
                                                                   else "unchanged") +
                              f"; firewall: {fw}")
            if missing:
                ctx.progress.host(host.address, f"kernel modules not loaded: {', '.join(missing)} "
                                                "(Kubernetes networking may need them)", "warn")

        ctx.inventory.parallel(ctx.only([n.address for n in ctx.config.all_nodes]), provision)
