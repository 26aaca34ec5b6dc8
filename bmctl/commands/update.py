"""`bmctl update loadbalancer`: apply changes of spec.loadBalancer (and the control-plane backends) to a
running cluster, after refusing what cannot change and showing what will."""
from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape

from bmctl import applied as applied_store
from bmctl.commands.cluster import dry_run_phases, load, run_phases
from bmctl.config import ClusterConfig, ConfigError, parse_config
from bmctl.config.changes import GROUPS, ConfigChanges, compare, refusal
from bmctl.errors import BmctlError
from bmctl.output import err, out
from bmctl.phases import Phase
from bmctl.phases.dataplane_lb import DataPlaneLB, refuse_stranding
from bmctl.phases.ingress import Ingress
from bmctl.phases.kubeadm import Kubeadm
from bmctl.phases.network import PodNetwork
from bmctl.phases.provision import Provision
from bmctl.phases.verify import Verify
from bmctl.phases.drift import Drift, find_drift
from bmctl.phases.update import RollingLB, UpdatePreflight
from bmctl.render import assumed_facts
from bmctl.secrets import load_or_create
from bmctl.workspace import Workspace


def update_phases(ch: ConfigChanges) -> list[Phase]:
    phases: list[Phase] = [UpdatePreflight()]
    if ch.lb_added:
        # a joined node needs the pod network too (its flannel reads the node's IP annotation): Traefik
        # and every other pod on an LB node that is not hostNetwork runs on it
        phases += [Provision(), Kubeadm(), PodNetwork()]
    return phases + [RollingLB(), DataPlaneLB(), Ingress(), Verify()]


def _read_applied(ws: Workspace, kube, dry_run: bool) -> tuple[str, str]:
    """(text, where it came from): the cluster's ConfigMap, else the workspace copy."""
    if kube is not None:
        text = applied_store.read_cluster(kube)
        if text is not None:
            return text, f"ConfigMap kube-system/{applied_store.NAME}"
    text = applied_store.read_local(ws)
    if text is not None:
        if kube is not None:
            err.print(f"warning: the cluster has no ConfigMap kube-system/{applied_store.NAME}; comparing with the "
                      f"workspace copy {ws.applied_path}", markup=False)
        return text, str(ws.applied_path)
    raise BmctlError(f"no applied config found for cluster {ws.name!r} (neither the ConfigMap kube-system/"
                     f"{applied_store.NAME} nor {ws.applied_path}"
                     + (", and --dry-run does not read the cluster)" if dry_run else ")") + ".",
                     f"create the cluster first with `bmctl create cluster -c {ws.name}`"
                     + (", or run without --dry-run (it asks before changing anything)." if dry_run else "."))


def _applied_config(text: str, source: str) -> ClusterConfig:
    try:
        return parse_config(text, source)
    except ConfigError as exc:
        raise BmctlError(f"the applied config ({source}) no longer loads with this bmctl: "
                         f"{exc.errors[0].render() if exc.errors else exc}",
                         "update with the bmctl version that created the cluster, or re-create it.") from None


def print_changes(ch: ConfigChanges, drift: list[Drift], source: str) -> None:
    out.print(f"Changes to cluster {ch.desired.name} (applied config: {source}):", markup=False)
    for key, items in ch.grouped().items():
        out.print(f"[bold]{escape(GROUPS[key])}[/]")
        for c in items:
            out.print(f"  [green]~[/] {escape(c.text)}")
    if drift:
        out.print("[bold]Hand edits of bmctl-owned MetalLB and ingress objects (drift) to undo[/]")
        for d in drift:
            verb = {"apply": "restore", "delete": "delete", "strip": "remove fields from"}[d.action]
            out.print(f"  [yellow]![/] {escape(d.kind)} {escape(d.name)}: {escape(d.what)} -> {verb}")
    if not ch.changes and not drift:
        out.print("  nothing: the cluster matches the config.")


def update_loadbalancer(target: str, workspace: Path | None, yes: bool, dry_run: bool,
                        accept_new_host_keys: bool, concurrency: int) -> None:
    desired, ws = load(target, workspace)
    if not desired.bundled:
        raise BmctlError("spec.loadBalancer.mode is manual: bmctl installed no load balancer on this cluster, so "
                         "there is nothing to update.", "change your external load balancer directly.")
    kube = None
    if not dry_run:
        from bmctl.kube import Kube
        if not ws.kubeconfig_path.exists():
            raise BmctlError(f"no admin kubeconfig at {ws.kubeconfig_path}.",
                             f"create the cluster first with `bmctl create cluster -c {ws.name}`.")
        kube = Kube(ws.kubeconfig_path)
    text, source = _read_applied(ws, kube, dry_run)
    ch = compare(_applied_config(text, source), desired)
    if ch.refused:
        raise refusal(desired, ch.refused, "", "undo them in the file and run the update again")
    drift: list[Drift] = []
    if kube is not None:
        refuse_stranding(kube, desired)  # the data-plane phase's own check, before anything is touched
        # hand edits: what differs from what bmctl applied last (not from the new config)
        drift = find_drift(kube, ch.applied, load_or_create(ws.secrets_path))
    print_changes(ch, drift, source)
    phases = update_phases(ch)
    options = {"changes": ch, "only_nodes": {n.address for n in ch.lb_added}, "kubernetes": True,
               "extra_nodes": [n.address for n in ch.lb_removed]}
    if dry_run:
        dry_run_phases(desired, ws, phases, options, assumed_facts(ch.applied))
        return
    if not ch.changes and not drift:
        if source != f"ConfigMap kube-system/{applied_store.NAME}":
            applied_store.store(kube, ws, Path(desired.path).read_text(encoding="utf-8"))
        out.print("Nothing to update.")
        return
    if not yes:
        try:
            ok = typer.confirm("Apply these changes?", default=False)
        except typer.Abort:  # no terminal to answer on
            ok = False
        if not ok:
            raise BmctlError("update cancelled; nothing was changed.", "answer y, or pass --yes to skip the question.")
    ctx, log_dir = run_phases(desired, ws, "update-loadbalancer", phases, accept_new_host_keys, concurrency, options)
    before, after = ctx.options.get("vrrp_master"), ctx.options.get("vrrp_master_after")
    vip = (f"the VIP announced over BGP by {', '.join(n.address for n in desired.lb_nodes)}"
           if desired.lb.type == "bgp" else f"VRRP master {before or 'unknown'} -> {after}")
    out.print(f"Updated cluster {desired.name}: {len(ch.changes)} change(s), {len(drift)} drift(s) undone; "
              f"{vip}. Logs: {log_dir}")
