"""The pod network: flannel (host-gw) applied through the API, or, with `clusterNetwork.cni: none`,
nothing but a wait for the user's own CNI to make every node Ready. Runs after kubeadm and before
MetalLB (whose controller and CoreDNS are not hostNetwork: they need the pod network)."""
from __future__ import annotations

import netaddr

from bmctl.errors import BmctlError
from bmctl.kube import Kube, wait
from bmctl.phases.base import CLUSTER, Context, Phase, Step
from bmctl.phases.dataplane_lb import node_names_by_ip
from bmctl.render.network import (BACKEND, DAEMONSET, NAMESPACE, POD_SELECTOR, PUBLIC_IP_ANNOTATION, cni,
                                  flannel_objects, network_manifests, pod_network)

WAIT_SECONDS = 300
FLANNEL_PUBLIC_IP = "flannel.alpha.coreos.com/public-ip"   # the IP a running flannel published for its node
# What flannel leaves on a node (reset removes it after `kubeadm reset`): its CNI config, its state
# in /run/flannel, the cni0 bridge and flannel.* links, and the host-gw routes to the other nodes'
# pod CIDRs (proto boot, inside the pod network, which is $1). Idempotent.
NODE_CLEANUP = r'''set -e
rm -f -- /etc/cni/net.d/10-flannel.conflist
rm -rf -- /run/flannel
ip -o link show | while IFS=': ' read -r _ name _; do
  case "${name%@*}" in cni0|flannel.*) ip link delete "${name%@*}" ;; esac
done
ip route flush root "$1" proto boot
'''


def node_cleanup_argv(config) -> list[str]:
    return ["sh", "-c", NODE_CLEANUP, "sh", config.spec.clusterNetwork.pods.cidrBlocks[0]]


def flannel_leftovers(config) -> str:
    """What NODE_CLEANUP removes, for reset's plan."""
    return ("/etc/cni/net.d/10-flannel.conflist, /run/flannel, the cni0 and flannel.* links, the host-gw routes "
            f"in {config.spec.clusterNetwork.pods.cidrBlocks[0]}")


def check_one_segment(ctx: Context) -> None:
    """host-gw routes go via each node's IP, so every node must be on-link from every other."""
    nodes = ctx.config.all_nodes
    facts = ctx.node_facts([n.address for n in nodes])
    far = []
    for node in nodes:
        net = netaddr.IPNetwork(f"{node.ip}/{facts[node.address].prefixlen}")
        far += [f"{other.ip} from {node.ip} ({net.cidr})" for other in nodes if netaddr.IPAddress(other.ip) not in net]
    if far:
        raise BmctlError(f"flannel's {BACKEND} backend routes pod traffic via each node's IP, but some nodes are "
                         f"not on one L2 segment: {', '.join(far[:5])}" + (" ..." if len(far) > 5 else "") + ".",
                         "put every node's IP (k8sIP if set) in one subnet, or set spec.clusterNetwork.cni: none "
                         "and install a CNI that routes between subnets.")


def _ready(obj) -> bool:
    return any(c.type == "Ready" and c.status == "True" for c in (obj.status.conditions or []))


class PodNetwork(Phase):
    name = "pod-network"
    title = "Pod network (flannel host-gw, or your own CNI)"

    def plan(self, ctx: Context) -> list[Step]:
        config = ctx.config
        count = len(config.all_nodes)
        if cni(config) == "none":
            return [Step(CLUSTER, "cni: none: deploy no pod network; wait for every node to become Ready "
                                  f"({count}) once you install your CNI")]
        steps = [Step(CLUSTER, f"check every node's IP is on one L2 segment ({BACKEND} routes via node IPs)"),
                 Step(CLUSTER, f"annotate every Node {PUBLIC_IP_ANNOTATION}=<its IP> (flannel uses that "
                               "interface, not the default route's)")]
        steps += [Step(CLUSTER, f"server-side apply {m.path} (flannel, {BACKEND}, Network {pod_network(config)})", [m])
                  for m in network_manifests(config)]
        steps.append(Step(CLUSTER, f"wait for DaemonSet {NAMESPACE}/{DAEMONSET} ready on every node ({count}), "
                                   "then every node Ready"))
        return steps

    def run(self, ctx: Context) -> None:
        kube = Kube(ctx.options["kubeconfig_path"])
        ips = [n.ip for n in ctx.config.all_nodes]
        names = wait(f"every node to register ({len(ips)})",
                     lambda: (lambda m: m if set(ips) <= set(m) else None)(node_names_by_ip(kube)), WAIT_SECONDS, 2)
        nodes = {names[ip]: ip for ip in ips}
        if cni(ctx.config) == "none":
            ctx.progress.note(f"cni: none: bmctl deploys no pod network; waiting up to {WAIT_SECONDS} s for "
                              f"{len(nodes)} node(s) to become Ready: install your CNI now (kubectl --kubeconfig "
                              f"{ctx.options['kubeconfig_path']} apply -f <your CNI's manifest>)")
            self._wait_nodes_ready(ctx, kube, nodes, byo=True)
            return
        check_one_segment(ctx)
        annotated = self._annotate(kube, nodes)
        objs = flannel_objects(ctx.config)
        for obj in objs:
            kube.apply(obj)
        ctx.progress.note(f"applied flannel ({BACKEND}, Network {pod_network(ctx.config)}): {len(objs)} object(s)")
        self._restart_misaddressed(ctx, kube, nodes, annotated)
        self._wait_flannel(kube, nodes)
        self._wait_nodes_ready(ctx, kube, nodes, byo=False)

    @staticmethod
    def _annotate(kube: Kube, nodes: dict[str, str]) -> set[str]:
        """Annotate the nodes that lack their IP; returns their names."""
        core = kube.core()
        done = set()
        for node in core.list_node().items:
            ip = nodes.get(node.metadata.name)
            if ip is not None and (node.metadata.annotations or {}).get(PUBLIC_IP_ANNOTATION) != ip:
                core.patch_node(node.metadata.name, {"metadata": {"annotations": {PUBLIC_IP_ANNOTATION: ip}}})
                done.add(node.metadata.name)
        return done

    @staticmethod
    def _restart_misaddressed(ctx: Context, kube: Kube, nodes: dict[str, str], annotated: set[str]) -> None:
        """flannel reads its node's IP annotation when it starts; a flannel that started before it was
        set (a node that joined later) publishes another IP, or, on a node without a default route,
        finds no interface and crash-loops with a growing back-off: restart it so that it picks the
        right one at once."""
        core = kube.core()
        wrong = {n.metadata.name for n in core.list_node().items if n.metadata.name in nodes and
                 (n.metadata.annotations or {}).get(FLANNEL_PUBLIC_IP, nodes[n.metadata.name])
                 != nodes[n.metadata.name]}
        for pod in core.list_namespaced_pod(NAMESPACE, label_selector=POD_SELECTOR).items:
            if pod.spec.node_name in wrong:
                core.delete_namespaced_pod(pod.metadata.name, NAMESPACE)
                ctx.progress.note(f"restarted flannel on {pod.spec.node_name}: it used another IP than the node's")
            elif pod.spec.node_name in annotated and not _ready(pod):
                core.delete_namespaced_pod(pod.metadata.name, NAMESPACE)
                ctx.progress.note(f"restarted flannel on {pod.spec.node_name}: it started before the node's IP "
                                  "annotation")

    @staticmethod
    def _wait_flannel(kube: Kube, nodes: dict[str, str]) -> None:
        core = kube.core()
        daemonsets = kube.dynamic.resources.get(api_version="apps/v1", kind="DaemonSet")
        state = {"left": sorted(nodes)}

        def ready() -> bool:
            ds = daemonsets.get(name=DAEMONSET, namespace=NAMESPACE).to_dict()
            status = ds.get("status", {})
            rolled = (status.get("observedGeneration", 0) >= ds["metadata"]["generation"] and
                      status.get("updatedNumberScheduled", 0) == status.get("desiredNumberScheduled", -1)
                      == status.get("numberReady", 0))
            pods = core.list_namespaced_pod(NAMESPACE, label_selector=POD_SELECTOR).items
            on = {p.spec.node_name for p in pods if p.status.phase == "Running" and _ready(p)}
            state["left"] = sorted(set(nodes) - on)
            return rolled and not state["left"]

        try:
            wait(f"DaemonSet {NAMESPACE}/{DAEMONSET} (flannel) to be ready on every node ({len(nodes)})",
                 ready, WAIT_SECONDS, 2)
        except BmctlError as exc:
            try:
                no_cidr = [n.metadata.name for n in core.list_node().items
                           if n.metadata.name in nodes and not n.spec.pod_cidr]
            except Exception:  # noqa: BLE001 - only a hint for the error message
                no_cidr = []
            raise BmctlError(f"{exc.message}; no ready flannel pod on: {', '.join(state['left'])}" +
                             (f"; no podCIDR assigned to: {', '.join(no_cidr)} (kubeadm's networking.podSubnet "
                              "makes the controller-manager assign them)" if no_cidr else ""),
                             f"kubectl -n {NAMESPACE} logs ds/{DAEMONSET} (and describe the pods) shows why; "
                             "re-run the same command to continue.") from None

    @staticmethod
    def _wait_nodes_ready(ctx: Context, kube: Kube, nodes: dict[str, str], byo: bool) -> None:
        state = {"left": []}

        def why(node) -> str:
            return next((c.message for c in node.status.conditions or [] if c.type == "Ready"), "no Ready condition")

        def ready() -> bool:
            items = [n for n in kube.core().list_node().items if n.metadata.name in nodes]
            state["left"] = [f"{n.metadata.name} ({why(n)})" for n in items if not _ready(n)]
            return len(items) == len(nodes) and not state["left"]

        try:
            wait(f"every node ({len(nodes)}) to become Ready" + (" (cni: none: with your CNI)" if byo else ""),
                 ready, WAIT_SECONDS, 2)
        except BmctlError as exc:
            kubeconfig = ctx.options["kubeconfig_path"]
            fix = (f"with spec.clusterNetwork.cni: none, bmctl deploys no pod network: install your CNI "
                   f"(kubectl --kubeconfig {kubeconfig} apply -f <your CNI's manifest>), then re-run the same "
                   "command to continue." if byo else
                   "kubectl describe node shows the kubelet's reason; re-run the same command to continue.")
            raise BmctlError(f"{exc.message}; not Ready: {'; '.join(state['left'])}", fix) from None
        ctx.progress.note(f"{len(nodes)} node(s) Ready")
