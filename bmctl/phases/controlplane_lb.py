from __future__ import annotations

import json
import time

from bmctl.host import Host, HostError, sync_files
from bmctl.phases.base import CLUSTER, Context, Phase, Step
from bmctl.phases.facts import read_facts_and_files
from bmctl.render import lb_node_files
from bmctl.render.bgp import VIP_STATUS
from bmctl.render.controlplane_lb import lb_node_paths
from bmctl.state import holds
from bmctl.render.kubelet import BOOTSTRAP_CONFIG, BOOTSTRAP_DROPIN, lb_bootstrap_files

VIP_WAIT_SECONDS = 90
KUBELET_CONF = "/etc/kubernetes/kubelet.conf"

# Where a node's kubelet stands (see bmctl/render/kubelet.py): "kubeadm" once kubeadm configured it
# (then a leftover bootstrap drop-in goes and the kubelet restarts with kubeadm's configuration),
# "standalone" before, "no-kubelet" on a node without one. Arguments: kubelet.conf, drop-in, config.
_KUBELET_STATE = r'''
set -eu
command -v kubelet >/dev/null 2>&1 || { echo no-kubelet; exit 0; }
if [ -f "$1" ]; then
  if [ -e "$2" ]; then rm -f "$2" "$3"; systemctl daemon-reload; systemctl restart kubelet; fi
  echo kubeadm; exit 0
fi
echo "standalone $(systemctl is-active kubelet || true)"
'''




def _answers(host: Host, vip: str, port: int) -> bool:
    """HAProxy accepts connections on VIP:port (the apiservers behind it may not be up yet)."""
    target = f"https://[{vip}]:{port}/" if ":" in vip else f"https://{vip}:{port}/"
    res = host.run(["curl", "-sk", "-o", "/dev/null", "--connect-timeout", "2", "--max-time", "3", target],
                   step="reach the VIP", sudo=False, check=False)
    return res.rc not in (7, 28)  # 7: refused, 28: timed out; anything else got past the TCP handshake


class ControlPlaneLB(Phase):
    name = "control-plane-lb"
    title = "Control-plane load balancer (HAProxy; the VIP by Keepalived, or by BGP from FRR)"

    def applies(self, ctx: Context) -> bool:
        return ctx.config.bundled

    def plan(self, ctx: Context) -> list[Step]:
        config = ctx.config
        steps = []
        for node in config.lb_nodes:
            files = lb_node_files(config, node, ctx.facts[node.address])
            holder = "FRR (BGP)" if config.lb.type == "bgp" else "Keepalived"
            steps.append(Step(node.address, f"write HAProxy and {holder} configs and static pods", files))
        vip = config.lb.vips.controlPlaneVIP
        if config.lb.type == "bgp":
            peers = ", ".join(p.ip for p in config.lb.bgpPeers)
            steps.append(Step(CLUSTER, f"wait until every LB node has its BGP sessions to {peers} established and "
                                       f"announces the VIP {vip}/32 (its HAProxy answers)"))
            return steps
        steps.append(Step(config.lb_nodes[0].address,
                          f"wait until the VIP {vip} is held by one node and HAProxy answers on "
                          f"{vip}:{config.lb.ports.controlPlaneLBPort}"))
        return steps

    def run(self, ctx: Context) -> None:
        self.write_files(ctx)
        self.start_kubelets(ctx)
        self.wait_for_vip(ctx)

    @staticmethod
    def start_kubelets(ctx: Context) -> None:
        """LB nodes whose kubelet kubeadm has not configured yet run it standalone, so that it
        starts Keepalived and HAProxy (bmctl/render/kubelet.py says why)."""
        config = ctx.config

        def start(host: Host) -> None:
            state = host.run(["sh", "-c", _KUBELET_STATE, "sh", KUBELET_CONF, BOOTSTRAP_DROPIN, BOOTSTRAP_CONFIG],
                             step="read the kubelet's state").stdout.split()
            if state[0] != "standalone":
                return
            changes = ctx.record(host.address, sync_files(host, lb_bootstrap_files(config, ctx.cgroup_driver())))
            if any(c.status != "unchanged" for c in changes) or state[1:] != ["active"]:
                host.run(["systemctl", "daemon-reload"], step="systemctl daemon-reload")
                host.run(["systemctl", "enable", "kubelet"], step="enable the kubelet")
                host.run(["systemctl", "restart", "kubelet"], step="start the kubelet standalone")
                ctx.progress.host(host.address, "kubelet started standalone (the load-balancer static pods until "
                                                "kubeadm)")

        ctx.inventory.parallel([n.address for n in config.lb_nodes], start)

    @staticmethod
    def write_files(ctx: Context) -> None:
        """Every LB node's files, all nodes at once: one command per node for a no-change re-run, two
        when files change (facts, when preflight did not read them, come with the first)."""
        config = ctx.config
        nodes = {n.address: n for n in config.lb_nodes}

        def write(host: Host) -> list:
            node = nodes[host.address]
            known = ctx.known_facts(host.address)
            if known is None:  # preflight skipped (--force): facts and file state at once
                known, state = read_facts_and_files(host, node.ip, config.lb.vrrp.interface,
                                                      lb_node_paths(config))
                ctx.facts[host.address] = known
            else:
                state = None
            changes = ctx.record(host.address, sync_files(host, lb_node_files(config, node, known), state))
            counts: dict[str, int] = {}
            for c in changes:
                counts[c.status] = counts.get(c.status, 0) + 1
            ctx.progress.host(host.address, "load-balancer files: " +
                              ", ".join(f"{n} {s}" for s, n in sorted(counts.items())))
            return changes

        ctx.inventory.parallel(list(nodes), write)

    @staticmethod
    def wait_for_vip(ctx: Context, peers: list[str] | None = None) -> str:
        """Layer 2: one LB node holds the VIP and HAProxy answers there. BGP: every LB node announces
        it to `peers` (default: every configured peer)."""
        if ctx.config.lb.type == "bgp":
            return wait_for_bgp_vip(ctx, peers)
        config = ctx.config
        vip = config.lb.vips.controlPlaneVIP
        port = config.lb.ports.controlPlaneLBPort
        addresses = [n.address for n in config.lb_nodes]
        deadline = time.monotonic() + VIP_WAIT_SECONDS
        holders: list[str] = []
        while time.monotonic() < deadline:
            held = ctx.inventory.parallel(addresses, lambda h: holds(h, vip))
            holders = [a for a in addresses if held[a]]
            if len(holders) == 1 and _answers(ctx.inventory[holders[0]], vip, port):
                ctx.progress.host(holders[0], f"holds the VIP {vip}; HAProxy answers on port {port}")
                return holders[0]
            time.sleep(0.3)
        state = f"held by {', '.join(holders)}" if holders else "held by no node"
        raise HostError(addresses[0], "wait for the VIP",
                        f"after {VIP_WAIT_SECONDS} s the VIP {vip} is {state} or HAProxy does not answer on {port}",
                        "look at the keepalived and haproxy static pods' logs on the load-balancer nodes "
                        "(a blocked VRRP multicast needs spec.loadBalancer.vrrp.unicast: true).")


def bgp_vip_state(host: Host) -> dict:
    """What the node's vip-health container last wrote: {"announced": bool, "sessions": {peer: state}}
    ({} before it wrote anything)."""
    res = host.run(["cat", VIP_STATUS], step="read the VIP's BGP state", sudo=False, check=False)
    try:
        data = json.loads(res.stdout) if res.rc == 0 else {}
    except ValueError:
        return {}
    summary = data.get("summary") or {}
    peers = (summary.get("ipv4Unicast") or summary).get("peers") or {}
    return {"announced": bool(data.get("announced")), "sessions": {ip: p.get("state") for ip, p in peers.items()},
            "received": {ip: p.get("pfxRcd", 0) for ip, p in peers.items()}}


def wait_for_bgp_vip(ctx: Context, peers: list[str] | None = None) -> str:
    """BGP mode: every LB node's FRR has an established session to each peer and announces the VIP
    (its HAProxy answers)."""
    config = ctx.config
    vip = config.lb.vips.controlPlaneVIP
    peers = [p.ip for p in config.lb.bgpPeers] if peers is None else peers
    addresses = [n.address for n in config.lb_nodes]
    deadline = time.monotonic() + VIP_WAIT_SECONDS
    problems: dict[str, str] = {}
    while True:
        states = ctx.inventory.parallel(addresses, bgp_vip_state)
        problems.clear()
        for address in addresses:
            state = states[address]
            down = [p for p in peers if state.get("sessions", {}).get(p) != "Established"]
            if not state:
                problems[address] = "its FRR static pod has not started (no VIP state yet)"
            elif down:
                problems[address] = f"no established BGP session to {', '.join(down)}"
            elif not state["announced"]:
                problems[address] = "its HAProxy does not answer, so it does not announce the VIP"
        if not problems:
            ctx.progress.note(f"the VIP {vip}/32 is announced to {', '.join(peers)} by {', '.join(addresses)}")
            _warn_without_routes(ctx, addresses, peers, states)
            return addresses[0]
        if time.monotonic() > deadline:
            raise HostError(next(iter(problems)), "wait for the VIP over BGP",
                            f"after {VIP_WAIT_SECONDS} s: " + "; ".join(f"{a}: {p}" for a, p in problems.items()),
                            "check that each peer accepts a session from the LB node's address with the AS numbers "
                            "in the config (localASN, bgpPeers[].asn) and runs BFD or tolerates it; look at the frr "
                            "static pod's log on that node (kube-system/frr-NODE, or /var/lib/bmctl/frr/etc/frr.log).")
        time.sleep(0.5)


ROUTES_GRACE_SECONDS = 5  # a peer's routes follow its session's first updates


def _warn_without_routes(ctx: Context, addresses: list[str], peers: list[str], states: dict) -> None:
    """A warning per LB node and peer that sends it no route: that node then answers the clients the
    peer sends its way through its own routing table only, which a link that comes back without its
    configured routes leaves without a way back (the README's "BGP mode" says what routers send)."""
    deadline = time.monotonic() + ROUTES_GRACE_SECONDS
    while True:
        silent = {a: [p for p in peers if not states[a].get("received", {}).get(p)] for a in addresses}
        silent = {a: ps for a, ps in silent.items() if ps}
        if not silent or time.monotonic() > deadline:
            break
        time.sleep(0.5)
        states = ctx.inventory.parallel(list(silent), bgp_vip_state) | \
            {a: s for a, s in states.items() if a not in silent}
    for address, quiet in silent.items():
        ctx.progress.host(address, f"warning: BGP peer {', '.join(quiet)} sends this node no route: its replies to the "
                                   "clients that peer sends here follow the node's own routes only; have the router "
                                   "send the LB nodes a default route (or the clients' prefixes), see BGP mode in the "
                                   "README", status="warn")
