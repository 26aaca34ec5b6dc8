"""`bmctl create config` and `bmctl check config`."""
from __future__ import annotations

import json
from pathlib import Path

from bmctl.config import load_config, resolve_path
from bmctl.config.model import DEFAULT_KUBERNETES_VERSION, DEFAULT_ADVERT_INTERVAL, derive_vrid
from bmctl.config.problems import ConfigError
from bmctl.config.rules import DNS_LABEL
from bmctl.config.addresses import parse_pool_entry, usable_count
from bmctl.errors import BmctlError
from bmctl.output import err, out, print_problems
from bmctl.render.engine import render
from bmctl.workspace import Workspace, write_private


def create_config(name: str, workspace: Path | None, force: bool) -> Path:
    if not DNS_LABEL.match(name) or len(name) > 50:
        raise BmctlError(f"{name!r} is not a valid cluster name.",
                         "use at most 50 lowercase letters, digits and '-', e.g. `-c prod`.")
    ws = Workspace(name, workspace)
    if ws.config_path.exists() and not force:
        raise BmctlError(f"{ws.config_path} already exists.", "edit it, or pass --force to overwrite it.")
    text = render("config/cluster.yaml.j2", name=name, ssh_key="~/.ssh/id_ed25519",
                  kubernetes_version=DEFAULT_KUBERNETES_VERSION, vrid=derive_vrid(name),
                  advert=f"{DEFAULT_ADVERT_INTERVAL:g}")
    ws.ensure()
    write_private(ws.config_path, text)
    out.print(f"Wrote {ws.config_path}. Fill in the <...> placeholders, then run: bmctl check config -c {name}")
    return ws.config_path


def check_config(target: str, workspace: Path | None, output: str) -> int:
    path = resolve_path(target, workspace or Workspace(target).root)
    expected = None if path.name != f"{target}.yaml" else target
    try:
        config = load_config(path, expected)
    except ConfigError as exc:
        if output == "json":
            out.print_json(json.dumps({"ok": False, "problems": [p.as_dict() for p in exc.problems]}))
        else:
            print_problems(exc.problems)
            n = len(exc.errors)
            err.print(f"{n} error{'s' if n != 1 else ''} in {path}.")
        return 1
    if output == "json":
        out.print_json(json.dumps({"ok": True, "cluster": config.name,
                                   "problems": [p.as_dict() for p in config.warnings]}))
        return 0
    print_problems(list(config.warnings))
    lb = config.lb
    pools = ", ".join(f"{p.name} ({usable_count([parse_pool_entry(a) for a in p.addresses], p.avoidBuggyIPs):,}"
                      f" addresses{', manual' if p.manualAssign else ''})" for p in lb.addressPools)
    out.print(f"{path}: OK. Cluster {config.name!r}: {len(config.control_plane_nodes)} control-plane, "
              f"{len(config.lb_nodes)} load-balancer, {len(config.worker_nodes)} worker node(s); "
              f"API VIP {lb.vips.controlPlaneVIP}:{lb.ports.controlPlaneLBPort} "
              f"(VRRP id {config.virtual_router_id}); pools: {pools or 'none'}.")
    return 0
