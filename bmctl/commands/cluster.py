"""`bmctl create cluster` and `bmctl check preflight`: phases, in order, over SSH."""
from __future__ import annotations

import json
import os
from pathlib import Path

import typer
from rich.table import Table

from bmctl import runlog
from bmctl.config import ClusterConfig, load_config, resolve_path
from bmctl.config.problems import Problem
from bmctl.errors import BmctlError
from bmctl.host import AccessOptions, Inventory
from bmctl.host.lock import ClusterLock
from bmctl.output import err, out, print_plan, print_problems
from bmctl.phases import Context, Phase, create_cluster_phases
from bmctl.phases.plan import plan, write_plan
from bmctl.phases.preflight import checks_json, run_preflight
from bmctl.progress import Progress
from bmctl.render import assumed_facts
from bmctl.secrets import ClusterSecrets, load_or_create
from bmctl.workspace import Workspace


def load(target: str, workspace: Path | None) -> tuple[ClusterConfig, Workspace]:
    root = workspace or Workspace(target).root
    path = resolve_path(target, root)
    config = load_config(path, target if path.name == f"{target}.yaml" else None)
    print_problems(list(config.warnings) + release_warnings(config))
    return config, Workspace(config.name, root)


def release_warnings(config: ClusterConfig) -> list[Problem]:
    """The release's images known to fall short of what this config needs (today: Keepalived)."""
    from bmctl import release
    if not config.bundled:
        return []
    found = release.of(config)
    return [Problem("header.releaseFile", f"the {name} image of {found.source} ({found.image(name)}): {why}",
                    "name a release file (header releaseFile) whose keepalived image has Keepalived 2.1 or later, "
                    "e.g. one built from Debian 12's keepalived 2.2.7 as `python -m bmctl.lab.images` does",
                    config.path, severity="warning")
            for name, why in release.shortcomings(found) if name == "keepalived"]


def open_bundle(config: ClusterConfig, verify: bool, say=None):
    """The bundle the header names (None without one); `verify` checks every member's sha256."""
    if not config.header.bundlePath:
        return None
    from bmctl.release.bundle import Bundle
    bundle = Bundle.open(config.workstation_file(config.header.bundlePath))
    if verify:
        bundle.verify(say or (lambda m: None))
    return bundle


def _env_seconds(name: str, default: float) -> float:
    value = os.environ.get(name)
    if value is None:
        return default
    try:
        seconds = float(value)
    except ValueError:
        raise BmctlError(f"{name}={value!r} is not a number of seconds.", f"set {name} to e.g. {default:g}.") from None
    if not 0 < seconds <= 3600:
        raise BmctlError(f"{name}={value!r} is out of range.", "use a value between 1 and 3600 seconds.")
    return seconds


def access(config: ClusterConfig, accept_new_host_keys: bool) -> AccessOptions:
    """How to reach the nodes. BMCTL_SSH_RETRY_SECONDS (60) bounds how long a lost connection is
    retried; BMCTL_SSH_STALL_SECONDS (30) is how long a quick command may stay silent before its
    connection counts as dead (also the connect timeout when shorter than 10 s)."""
    stall = _env_seconds("BMCTL_SSH_STALL_SECONDS", 30.0)
    return AccessOptions(user=config.spec.nodeAccess.loginUser, key_path=config.header.sshPrivateKeyPath,
                         known_hosts=config.header.sshKnownHostsPath, accept_new_host_keys=accept_new_host_keys,
                         retry_seconds=_env_seconds("BMCTL_SSH_RETRY_SECONDS", 60.0), stall_seconds=stall,
                         connect_timeout=min(10.0, stall))


def select(phases: list[Phase], until: str | None) -> list[Phase]:
    if until is None:
        return phases
    names = [p.name for p in phases]
    if until not in names:
        raise BmctlError(f"--until {until!r} is not a phase.", f"use one of {', '.join(names)}.")
    return phases[: names.index(until) + 1]


def dry_run_phases(config: ClusterConfig, ws: Workspace, phases: list[Phase], options: dict | None = None,
                   extra_facts: dict | None = None) -> None:
    """Render every phase's plan under bmctl-workspace/NAME/dry-run/ and print it; touch no machine."""
    facts = {**(extra_facts or {}), **assumed_facts(config)}
    ctx = Context(config=config, secrets=ClusterSecrets.redacted(), facts=facts, dry_run=True,
                  options=dict(options or {}), bundle=open_bundle(config, verify=False))
    planned = plan(phases, ctx)
    out_dir = ws.reset_dry_run()
    written = write_plan(planned, out_dir)
    print_plan(planned)
    assumed = sorted({f.interface for f in ctx.facts.values() if f.assumed})
    if assumed and written and config.bundled:  # manual mode runs no VRRP
        out.print(f"Note: the dry run assumes VRRP interface {', '.join(assumed)}; a real run uses the "
                  "interface that holds each node's IP (or spec.loadBalancer.vrrp.interface).")
    out.print(f"Dry run: {len(written)} files written under {out_dir}; no machine was touched.")


def run_phases(config: ClusterConfig, ws: Workspace, op: str, phases: list[Phase], accept_new_host_keys: bool,
               concurrency: int, options: dict | None = None) -> tuple[Context, Path]:
    """Run phases in order over SSH with progress and a log folder; returns the context and the logs."""
    ws.ensure()
    secrets = load_or_create(ws.secrets_path)
    log_dir = ws.new_log_dir(op)
    runlog.start(log_dir, secrets.values())
    options = options or {}
    inventory = Inventory(config, access(config, accept_new_host_keys), concurrency,
                          tuple(options.get("extra_nodes", ())))
    progress = Progress()
    ctx = Context(config=config, secrets=secrets, facts={}, dry_run=False, inventory=inventory, progress=progress,
                  options={"kubeconfig_path": ws.kubeconfig_path, "workspace": ws,
                           "config_text": Path(config.path).read_text(encoding="utf-8"), **options})
    todo = [p for p in phases if p.applies(ctx)]
    if any(p.name == "provision" for p in todo):  # a bad bundle is refused before any node is touched
        ctx.bundle = open_bundle(config, verify=True, say=progress.note)
    lock = ClusterLock(inventory[config.control_plane_nodes[0].address], op.replace("-", " ", 1))
    try:
        taken_over = lock.acquire()
        if taken_over:
            progress.note(taken_over)
        for i, phase in enumerate(todo, 1):
            progress.phase(i, len(todo), phase.title)
            phase.run(ctx)
            progress.phase_done(phase.title)
    except BaseException as exc:
        runlog.log().error("stopped: %s", getattr(exc, "message", exc))
        err.print(f"Logs: {log_dir}", markup=False)
        raise
    finally:
        lock.release()
        inventory.close()
        runlog.stop()
    ctx.options["ran"] = [p.name for p in todo]
    return ctx, log_dir


def create_cluster(target: str, workspace: Path | None, dry_run: bool, force: bool = False,
                   until: str | None = None, accept_new_host_keys: bool = False, concurrency: int = 16) -> None:
    config, ws = load(target, workspace)
    phases = select(create_cluster_phases(), until)
    if dry_run:
        dry_run_phases(config, ws, phases)
        return
    refuse_changes_to_a_running_cluster(config, ws)
    kubernetes = any(p.name == "kubeadm" for p in phases)
    phases = [p for p in phases if not (force and p.name == "preflight")]
    ctx, log_dir = run_phases(config, ws, "create-cluster", phases, accept_new_host_keys, concurrency,
                              {"kubernetes": kubernetes})
    changes = ctx.options.get("file_changes", {})
    changed = sum(1 for per_host in changes.values() for c in per_host if c.status != "unchanged")
    out.print(f"Done: {', '.join(ctx.options['ran'])} on {len(config.all_nodes)} node(s); "
              f"{changed} file(s) changed. Logs: {log_dir}")
    if ws.kubeconfig_path.exists() and kubernetes:
        out.print(f"Kubeconfig: {ws.kubeconfig_path} (kubectl --kubeconfig {ws.kubeconfig_path} get nodes)")


def refuse_changes_to_a_running_cluster(config: ClusterConfig, ws: Workspace) -> None:
    """Re-running create on a cluster it made must not change what cannot change (VIPs, pools...)."""
    from bmctl import applied
    from bmctl.config import ConfigError, parse_config
    from bmctl.config.changes import compare, refusal
    text = applied.read_local(ws)
    if text is None:
        return
    try:
        before = parse_config(text, str(ws.applied_path))
    except ConfigError:
        return
    refused = compare(before, config).refused
    if refused:
        raise refusal(config, refused, f"cluster {config.name} is running with the config in {ws.applied_path}; ",
                      "undo them; other load-balancer changes go through `bmctl update loadbalancer`")


def check_preflight(target: str, workspace: Path | None, output: str, accept_new_host_keys: bool,
                    concurrency: int, until: str | None = None) -> int:
    config, ws = load(target, workspace)
    kubernetes = any(p.name == "kubeadm" for p in select(create_cluster_phases(), until))
    ws.ensure()
    log_dir = ws.new_log_dir("check-preflight")
    runlog.start(log_dir, [])
    inventory = Inventory(config, access(config, accept_new_host_keys), concurrency)
    try:
        checks, _ = run_preflight(config, inventory, kubernetes)
    finally:
        inventory.close()
        runlog.stop()
    failed = any(c.status == "fail" for c in checks)
    if output == "json":
        out.print_json(json.dumps({"ok": not failed, "checks": checks_json(checks)}))
    else:
        table = Table(title=f"Preflight of cluster {config.name}")
        for col in ("node", "check", "status", "detail"):
            table.add_column(col)
        style = {"ok": "green", "warn": "yellow", "fail": "bold red"}
        for c in checks:
            table.add_row(c.node, c.check, f"[{style[c.status]}]{c.status}[/]", c.detail)
        out.print(table)
        out.print("Preflight " + ("FAILED" if failed else "passed") + f". Logs: {log_dir}")
    return 1 if failed else 0


def reset_cluster(target: str, workspace: Path | None, force: bool, dry_run: bool,
                  accept_new_host_keys: bool, concurrency: int, purge: bool = False) -> None:
    from bmctl.phases.reset import Reset
    config, ws = load(target, workspace)
    if dry_run:
        dry_run_phases(config, ws, [Reset(purge)])
        return
    if not force:
        try:
            yes = typer.confirm(f"Reset cluster {config.name!r} on {len(config.all_nodes)} node(s)? This removes "
                                "Kubernetes and the load balancers from every node", default=False)
        except typer.Abort:  # no terminal to answer on (stdin closed)
            yes = False
        if not yes:
            raise BmctlError("reset cancelled; nothing was changed.", "answer y, or pass --force to skip the question.")
    _, log_dir = run_phases(config, ws, "reset-cluster", [Reset(purge)], accept_new_host_keys, concurrency)
    for path in (ws.kubeconfig_path, ws.applied_path):
        if path.exists():
            path.unlink()
    out.print(f"Reset {len(config.all_nodes)} node(s) of cluster {config.name}. Logs: {log_dir}")
