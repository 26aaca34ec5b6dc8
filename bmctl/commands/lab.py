"""`bmctl lab up|down|status`."""
from __future__ import annotations

from pathlib import Path

from rich.table import Table

from bmctl.lab.lab import Lab
from bmctl.output import out
from bmctl.workspace import Workspace


def _lab(workspace: Path | None) -> Lab:
    return Lab(Workspace("lab", workspace).dir / "lab-state")


def up(workspace: Path | None, control_planes: int, lb_nodes: int, workers: int, host_address: bool,
       subnet: str | None = None, real_nodes: bool = True) -> None:
    lab = _lab(workspace)
    Lab.check_prerequisites(real_nodes)
    Workspace("lab", workspace).ensure()
    state = lab.up(control_planes, lb_nodes, workers, host_address, subnet=subnet, real_nodes=real_nodes,
                   say=lambda msg: out.print(msg, markup=False))
    net = Lab.net_of(state)
    out.print(f"Lab up: {len(state['nodes'])} nodes on {net.bridge_cidr}, pods on {net.pods} (bridge namespace "
              f"{state['bridge_ns']}, client namespace {state['client_ns']}).", markup=False)
    out.print(f"Config: {state['config']}. Try: bmctl check preflight -c lab && bmctl create cluster -c lab")


def down(workspace: Path | None) -> None:
    _lab(workspace).down()
    out.print("Lab removed.")


def status(workspace: Path | None) -> None:
    rows = _lab(workspace).status()
    table = Table(title="bmctl lab")
    for col in ("node", "address", "role", "netns", "sshd", "static pods"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["name"], r["address"], r["role"], r["netns"], "up" if r["ssh"] else "down",
                      ", ".join(r["static_pods"]) or "-")
    out.print(table)
