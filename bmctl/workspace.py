"""bmctl-workspace/NAME/: the config, kubeconfig, secrets, dry-run output and logs of a cluster."""
from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

DEFAULT_ROOT = "bmctl-workspace"


def _mkdir_private(path: Path) -> Path:
    """Create path and any missing parents as 0700 (mkdir's parents=True would use the umask).
    Folders that already exist are left as they are (the user may point --workspace anywhere)."""
    for p in [*reversed(path.parents), path]:
        if not p.exists():
            p.mkdir(mode=0o700, exist_ok=True)
            os.chmod(p, 0o700)
    return path


def write_private(path: Path, content: str, mode: int = 0o600) -> None:
    """Write a workspace file atomically, readable by the owner only."""
    _mkdir_private(path.parent)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(content)
        fh.flush()
        os.fsync(fh.fileno())
    os.chmod(tmp, mode)
    os.replace(tmp, path)


class Workspace:
    def __init__(self, name: str, root: str | os.PathLike | None = None) -> None:
        self.root = Path(root or os.environ.get("BMCTL_WORKSPACE", DEFAULT_ROOT))
        self.name = name
        self.dir = self.root / name

    @property
    def config_path(self) -> Path:
        return self.dir / f"{self.name}.yaml"

    @property
    def kubeconfig_path(self) -> Path:
        return self.dir / f"{self.name}-kubeconfig"

    @property
    def secrets_path(self) -> Path:
        return self.dir / ".secrets.yaml"

    @property
    def applied_path(self) -> Path:
        """A copy of the config last applied to the cluster (the cluster's ConfigMap is authoritative)."""
        return self.dir / "applied" / f"{self.name}.yaml"

    @property
    def dry_run_dir(self) -> Path:
        return self.dir / "dry-run"

    def ensure(self) -> Path:
        """The cluster's folder, 0700 (it holds secrets and the admin kubeconfig)."""
        _mkdir_private(self.dir)
        os.chmod(self.dir, 0o700)
        return self.dir

    def new_log_dir(self, op: str) -> Path:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        return _mkdir_private(self.dir / "log" / f"{op}-{stamp}")

    def reset_dry_run(self) -> Path:
        """An empty dry-run folder, so that it shows exactly this plan."""
        if self.dry_run_dir.exists():
            shutil.rmtree(self.dry_run_dir)
        self.ensure()
        return _mkdir_private(self.dry_run_dir)
