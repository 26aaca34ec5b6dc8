"""The phases of `bmctl update loadbalancer`: check the nodes being added, provision and join them,
roll the control-plane load balancers one node at a time, then MetalLB, then verify.

Rolling: Keepalived and HAProxy reload in place when their files change (see
templates/static-pods/reload-on-change.sh.j2), so a kept node never loses the VIP nor refuses a
connection. The order keeps exactly one VRRP master at every moment, unicast or multicast:
1. a node being removed that holds the VIP hands it over first (its Keepalived stops: priority-0
   advert, the next node takes over at once), then every node being removed stops;
2. kept nodes that are backups, one at a time, each waited for (config loaded, HAProxy healthy);
3. the master last among kept nodes (its reload keeps the VIP);
4. new nodes last, so that every peer already lists them; they start as BACKUP with nopreempt.
"""
from __future__ import annotations

import time

from bmctl.config.changes import ConfigChanges
from bmctl.config.model import Node
from bmctl.host import Host, HostError, sync_files
from bmctl.host.files import remove_files
from bmctl.phases.base import Context, Phase, Step
from bmctl.phases.controlplane_lb import ControlPlaneLB, bgp_vip_state
from bmctl.state import holds
from bmctl.phases.facts import gather
from bmctl.phases.preflight import cluster_checks, node_checks, report
from bmctl.phases.reset import _listening, remove_lb_files
from bmctl.render import lb_node_files
from bmctl.render.controlplane_lb import (CHECK_SCRIPT, HAPROXY_DIR, HAPROXY_HEALTH_PORT, KEEPALIVED_DIR,
                                          MANIFEST_DIR, loaded_digest, status_file, vip_holder_manifest)

NODE_WAIT_SECONDS = 60
# How long a node being removed keeps HAProxy after its Keepalived stopped: connections that
# reached it just before the VIP moved finish instead of being cut.
DRAIN_SECONDS = 2.0


def _changes(ctx: Context) -> ConfigChanges:
    return ctx.options["changes"]


class UpdatePreflight(Phase):
    name = "preflight"
    title = "Preflight of the load-balancer nodes"

    def plan(self, ctx: Context) -> list[Step]:
        ch = _changes(ctx)
        steps = [Step(n.address, "SSH and sudo; read interfaces and addresses")
                 for n in [*ch.desired.lb_nodes, *ch.lb_removed]]
        for n in ch.lb_added:
            steps.append(Step(n.address, "OS, binaries, swap, time sync, ports free (new load-balancer node)"))
        if ch.lb_added or any(c.group == "pools-add" for c in ch.changes):
            steps.append(Step(ch.desired.lb_nodes[0].address, "new nodes and pools in the LB subnet; new pool "
                                                              "addresses not answering ARP; VRRP id ours alone"))
        return steps

    def run(self, ctx: Context) -> None:
        ch = _changes(ctx)
        config = ch.desired
        facts = gather(config, ctx.inventory, [n.address for n in config.lb_nodes])
        if ch.lb_removed:
            facts.update(gather(ch.applied, ctx.inventory, [n.address for n in ch.lb_removed]))
        ctx.facts.update(facts)
        checks = []
        added = [n.address for n in ch.lb_added]
        if added:
            per_node = ctx.inventory.parallel(added, lambda h: node_checks(config, h, facts[h.address]))
            checks += [c for a in added for c in per_node[a]]
        if added or any(c.group == "pools-add" for c in ch.changes):
            checks += cluster_checks(config, ctx.inventory, facts, frozenset(n.ip for n in ch.lb_removed))
        report(ctx, checks)
        ctx.progress.note(f"{len(facts)} load-balancer node(s) reachable; {len(checks)} check(s) passed")


def _loaded(host: Host, pods: dict[str, str]) -> dict[str, str]:
    """pod -> digest its reloader reports (missing file: '')."""
    state = host.run(["sh", "-c", 'for f; do printf "%s " "$f"; cat "$f" 2>/dev/null || echo; done', "sh",
                      *[status_file(p) for p in pods]], step="read loaded config digests", sudo=True).stdout
    out = {}
    for line in state.splitlines():
        path, _, digest = line.partition(" ")
        out[path.rsplit("/", 1)[-1].removesuffix(".loaded")] = digest.strip()
    return out


def _healthy(host: Host) -> bool:
    res = host.run(["curl", "-fsS", "-o", "/dev/null", "--max-time", "2",
                    f"http://127.0.0.1:{HAPROXY_HEALTH_PORT}/healthz"], step="HAProxy health", sudo=False,
                   check=False)
    return res.rc == 0


def wait_node_ready(host: Host, files: list) -> float:
    """Until the node's Keepalived and HAProxy run the files just written and HAProxy answers."""
    by_path = {f.path: f.content for f in files}
    want = {"haproxy": loaded_digest(by_path[f"{HAPROXY_DIR}/haproxy.cfg"])}
    bgp_mode = f"{KEEPALIVED_DIR}/keepalived.conf" not in by_path
    if not bgp_mode:
        want["keepalived"] = loaded_digest(by_path[f"{KEEPALIVED_DIR}/keepalived.conf"], by_path[CHECK_SCRIPT])
    start = time.monotonic()
    have: dict[str, str] = {}
    while time.monotonic() - start < NODE_WAIT_SECONDS:
        have = _loaded(host, want)
        if have == want and _healthy(host) and (not bgp_mode or bgp_vip_state(host).get("announced")):
            return time.monotonic() - start
        time.sleep(0.3)
    late = [p for p in want if have.get(p) != want[p]]
    raise HostError(host.address, "wait for the load balancer",
                    f"after {NODE_WAIT_SECONDS} s " + (f"{' and '.join(late)} still run(s) the old configuration"
                                                       if late else "HAProxy does not answer its health check"),
                    "look at the node's keepalived/haproxy static pod logs; re-run `bmctl update loadbalancer` "
                    "to continue (nodes already done are left alone).")


def stop_lb_node(host: Host, port: int, config) -> None:
    """The VIP's holder first (Keepalived leaves with its priority-0 advert; in BGP mode FRR withdraws
    the VIP and closes its sessions), then HAProxy, then the files."""
    bgp_mode = config.lb.type == "bgp"
    remove_files(host, [vip_holder_manifest(config)])
    deadline = time.monotonic() + NODE_WAIT_SECONDS
    while bgp_vip_state(host) if bgp_mode else _loaded(host, {"keepalived": ""}).get("keepalived"):
        if time.monotonic() > deadline:
            raise HostError(host.address, "stop the VIP's holder", f"{'FRR' if bgp_mode else 'Keepalived'} still "
                            f"runs {NODE_WAIT_SECONDS} s after its static pod was removed",
                            "check the node's kubelet, then re-run the update.")
        time.sleep(0.3)
    time.sleep(DRAIN_SECONDS)
    remove_files(host, [f"{MANIFEST_DIR}/haproxy.yaml"])
    while _listening(host, [port, HAPROXY_HEALTH_PORT]):
        if time.monotonic() > deadline:
            raise HostError(host.address, "stop HAProxy", f"port {port} still in use {NODE_WAIT_SECONDS} s after "
                            "HAProxy's static pod was removed", "check the node's kubelet, then re-run the update.")
        time.sleep(0.3)
    remove_lb_files(host, config)


def _running_peers(ch) -> list[str] | None:
    """BGP mode: the peers whose sessions the LB nodes' FRR has before MetalLB applies the new
    BGPPeers (the data-plane phase, after this one, checks the added peers' sessions)."""
    if ch.desired.lb.type != "bgp":
        return None
    before = {p.ip for p in ch.applied.lb.bgpPeers}
    return [p.ip for p in ch.desired.lb.bgpPeers if p.ip in before]


class RollingLB(Phase):
    name = "control-plane-lb"
    title = "Control-plane load balancers, one node at a time"

    def plan(self, ctx: Context) -> list[Step]:
        ch = _changes(ctx)
        config = ch.desired
        steps = []
        for n in ch.lb_removed:
            steps.append(Step(n.address, "hand the VIP over if held, stop Keepalived, then HAProxy; remove their "
                                         "files"))
        for n in ch.lb_kept:
            steps.append(Step(n.address, "rewrite what changed; Keepalived and HAProxy reload in place; wait until "
                                         "loaded and healthy (backups first, the VRRP master last)",
                              lb_node_files(config, n, ctx.facts[n.address])))
        for n in ch.lb_added:
            steps.append(Step(n.address, "write Keepalived and HAProxy; wait until they run (BACKUP, nopreempt)",
                              lb_node_files(config, n, ctx.facts[n.address])))
        steps.append(Step(config.lb_nodes[0].address, f"the VIP {config.lb.vips.controlPlaneVIP} held by exactly "
                                                      "one node and answering"))
        return steps

    def _holder(self, ctx: Context, nodes: list[Node]) -> str | None:
        if ctx.config.lb.type == "bgp":  # every healthy LB node announces the VIP: no master to keep for last
            return None
        vip = ctx.config.lb.vips.controlPlaneVIP
        held = ctx.inventory.parallel([n.address for n in nodes], lambda h: holds(h, vip))
        holders = [a for a, yes in held.items() if yes]
        return holders[0] if len(holders) == 1 else None

    def run(self, ctx: Context) -> None:
        ch = _changes(ctx)
        config = ch.desired
        port = config.lb.ports.controlPlaneLBPort
        inv = ctx.inventory
        master = self._holder(ctx, ch.applied.lb_nodes)
        ctx.options["vrrp_master"] = master
        if master is None:
            ctx.progress.note("the VIP is not held by exactly one node right now; updating in list order")
        removed = [n.address for n in ch.lb_removed]
        if master in removed:
            ctx.progress.host(master, "holds the VIP and is being removed: handing the VIP over first")
            stop_lb_node(inv[master], port, config)
            new_master = ControlPlaneLB.wait_for_vip(ctx, _running_peers(ch))
            ctx.progress.host(master, f"stopped; the VIP moved to {new_master}")
            master = new_master
        for address in removed:
            if address != ctx.options["vrrp_master"]:
                stop_lb_node(inv[address], port, config)
                ctx.progress.host(address, "Keepalived and HAProxy stopped, files removed")

        kept = [n for n in ch.lb_kept if n.address != master] + [n for n in ch.lb_kept if n.address == master]
        facts = ctx.node_facts([n.address for n in config.lb_nodes])
        for node in [*kept, *ch.lb_added]:
            host = inv[node.address]
            files = lb_node_files(config, node, facts[node.address])
            changes = ctx.record(node.address, sync_files(host, files))
            changed = [c.path.rsplit("/", 1)[-1] for c in changes if c.status != "unchanged"]
            role = "new node" if node in ch.lb_added else (
                "LB node" if config.lb.type == "bgp" else "VRRP master" if node.address == master else "backup")
            if not changed:
                ctx.progress.host(node.address, f"{role}: unchanged")
                continue
            took = wait_node_ready(host, files)
            ctx.progress.host(node.address, f"{role}: {', '.join(changed)} written; reloaded and healthy in "
                                            f"{took:.1f} s")
        holder = ControlPlaneLB.wait_for_vip(ctx, _running_peers(ch))
        ctx.options["vrrp_master_after"] = holder

