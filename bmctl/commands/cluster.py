"""`bmctl create cluster`: the phases, in order; --dry-run renders them without touching a machine."""
from __future__ import annotations

from pathlib import Path

from bmctl.config import load_config, resolve_path
from bmctl.output import out, print_plan, print_problems
from bmctl.phases import Context, create_cluster_phases
from bmctl.phases.plan import plan, write_plan
from bmctl.render import assumed_facts
from bmctl.secrets import ClusterSecrets
from bmctl.workspace import Workspace


def load(target: str, workspace: Path | None):
    root = workspace or Workspace(target).root
    path = resolve_path(target, root)
    config = load_config(path, target if path.name == f"{target}.yaml" else None)
    print_problems(list(config.warnings))
    return config, Workspace(config.name, root)


def create_cluster(target: str, workspace: Path | None, dry_run: bool) -> None:
    config, ws = load(target, workspace)
    phases = create_cluster_phases()
    if dry_run:
        ctx = Context(config=config, secrets=ClusterSecrets.redacted(), facts=assumed_facts(config), dry_run=True)
        planned = plan(phases, ctx)
        out_dir = ws.reset_dry_run()
        written = write_plan(planned, out_dir)
        print_plan(planned)
        assumed = sorted({f.interface for f in ctx.facts.values() if f.assumed})
        if assumed:
            out.print(f"Note: the dry run assumes VRRP interface {', '.join(assumed)}; a real run uses the "
                      "interface that holds each node's IP (or spec.loadBalancer.vrrp.interface).")
        out.print(f"Dry run: {len(written)} files written under {out_dir}; no machine was touched.")
        return
    ctx = Context(config=config, secrets=ClusterSecrets.redacted(), facts=assumed_facts(config), dry_run=False)
    for phase in phases:
        if phase.applies(ctx):
            phase.run(ctx)
