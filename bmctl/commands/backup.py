"""`bmctl backup cluster`: etcd snapshot, PKI, kubeadm configuration and bmctl's secrets in one file
(bmctl/phases/backup.py says what is in it)."""
from __future__ import annotations

import time
from pathlib import Path

from bmctl.commands.cluster import dry_run_phases, load, run_phases
from bmctl.errors import BmctlError
from bmctl.output import out
from bmctl.phases.backup import HOLDS, Backup
from bmctl.workspace import _mkdir_private


def backup_cluster(target: str, workspace: Path | None, backup_file: Path | None, dry_run: bool,
                   accept_new_host_keys: bool, concurrency: int) -> None:
    config, ws = load(target, workspace)
    if backup_file is None:
        backup_file = ws.dir / "backups" / f"backup-{config.name}-{time.strftime('%Y%m%d-%H%M%S')}.tar"
        if not dry_run:
            _mkdir_private(backup_file.parent)
    else:
        backup_file = backup_file.expanduser().absolute()
        if not backup_file.parent.is_dir():
            raise BmctlError(f"--backup-file {backup_file}: its folder {backup_file.parent} does not exist.",
                             "create it first, or name a file in an existing folder.")
        if backup_file.exists():
            raise BmctlError(f"--backup-file {backup_file} exists; a backup never overwrites one.",
                             "name another file, or move that one away first.")
    phases = [Backup(backup_file)]
    if dry_run:
        dry_run_phases(config, ws, phases)
        return
    if not ws.kubeconfig_path.exists() or not ws.secrets_path.exists():
        raise BmctlError(f"cluster {config.name}: no kubeconfig or secrets in {ws.dir}, so it was not created from "
                         "this workspace.", f"run it from the workspace `bmctl create cluster -c {config.name}` used "
                         "(--workspace).")
    start = time.monotonic()
    ctx, log_dir = run_phases(config, ws, "backup-cluster", phases, accept_new_host_keys, concurrency)
    done = ctx.options["backup"]
    out.print(f"Backup of cluster {config.name}: {done['path']} ({done['bytes'] / 2**20:.1f} MiB, etcd revision "
              f"{done['revision']}, {time.monotonic() - start:.1f} s; mode 0600). It holds {HOLDS}. Logs: {log_dir}",
              markup=False)
