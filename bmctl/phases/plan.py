"""Dry runs: the plan of a list of phases, written under bmctl-workspace/NAME/dry-run/."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from bmctl.phases.base import CLUSTER, Context, Phase, Step
from bmctl.workspace import write_private


@dataclass
class PlannedPhase:
    phase: Phase
    steps: list[Step]


def plan(phases: list[Phase], ctx: Context) -> list[PlannedPhase]:
    return [PlannedPhase(p, p.plan(ctx)) for p in phases if p.applies(ctx)]


def file_destination(out_dir: Path, step: Step, path: str) -> Path:
    """dry-run/<node-address>/<path on the node>, or dry-run/cluster/<manifest>."""
    base = out_dir / ("cluster" if step.target == CLUSTER else step.target)
    return base / path.lstrip("/")


def write_plan(planned: list[PlannedPhase], out_dir: Path) -> list[Path]:
    written = []
    summary = []
    for pp in planned:
        steps = []
        for step in pp.steps:
            files = []
            for f in step.files:
                dest = file_destination(out_dir, step, f.path)
                write_private(dest, f.content)
                written.append(dest)
                files.append({"path": f.path, "mode": oct(f.mode), "dry_run_copy": str(dest.relative_to(out_dir))})
            steps.append({"target": step.target, "title": step.title, "files": files})
        summary.append({"phase": pp.phase.name, "title": pp.phase.title, "steps": steps})
    write_private(out_dir / "plan.json", json.dumps(summary, indent=2) + "\n")
    return written
