"""Build the real Kubernetes and MetalLB parts the lab runs, from their Go modules.

kube-apiserver and kube-proxy come from a wrapper module that requires k8s.io/kubernetes at one
pinned version and replaces each k8s.io/* staging module with its published v0.X.Y; etcd from
go.etcd.io/etcd/server/v3 (a three-line main around etcdmain); MetalLB's controller and speaker
from go.universe.tf/metallb. Binaries are cached outside the repository, keyed by version:
    $BMCTL_BIN_CACHE (default ~/.cache/bmctl/bin)/<name>-<version>
Run: python -m bmctl.lab.binaries [--list]
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

KUBERNETES = "v1.34.2"
ETCD = "v3.5.35"
METALLB = "v0.15.2"


def cache_dir() -> Path:
    return Path(os.environ.get("BMCTL_BIN_CACHE", Path.home() / ".cache" / "bmctl" / "bin"))


def binary(name: str) -> Path:
    version = {"kube-apiserver": KUBERNETES, "kube-proxy": KUBERNETES, "etcd": ETCD,
               "metallb-controller": METALLB, "metallb-speaker": METALLB}[name]
    return cache_dir() / f"{name}-{version}"


def _go(args: list[str], cwd: Path, env: dict | None = None) -> str:
    full = {**os.environ, "CGO_ENABLED": "0", "GOFLAGS": "-mod=mod", "GOTOOLCHAIN": "local", **(env or {})}
    go = shutil.which("go") or "/usr/local/go/bin/go"
    proc = subprocess.run([go, *args], cwd=cwd, env=full, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"go {' '.join(args)} failed in {cwd}:\n{proc.stderr[-4000:]}")
    return proc.stdout


def _module(workdir: Path, name: str, requires: dict[str, str], replaces: dict[str, str] | None = None,
            main: str | None = None) -> Path:
    workdir.mkdir(parents=True, exist_ok=True)
    lines = [f"module {name}", "", "go 1.24", ""]
    lines += [f"require {m} {v}" for m, v in requires.items()]
    lines += [f"replace {m} => {m} {v}" for m, v in (replaces or {}).items()]
    (workdir / "go.mod").write_text("\n".join(lines) + "\n")
    if main:
        (workdir / "main.go").write_text(main)
    return workdir


def _staging_replaces(work: Path) -> dict[str, str]:
    """Every k8s.io/* module that k8s.io/kubernetes replaces with ./staging, at its published v0.X.Y."""
    info = json.loads(_go(["mod", "download", "-json", f"k8s.io/kubernetes@{KUBERNETES}"], work))
    gomod = Path(info["GoMod"]).read_text()
    staging = re.findall(r"^\s*(k8s\.io/[\w.-]+) => \./staging/", gomod, re.M)
    published = "v0." + KUBERNETES[3:]
    return {m: published for m in staging}


def build_kubernetes(work: Path) -> None:
    wanted = [n for n in ("kube-apiserver", "kube-proxy") if not binary(n).exists()]
    if not wanted:
        return
    mod = _module(work / "k8s", "bmctl.lab/k8s", {"k8s.io/kubernetes": KUBERNETES})
    replaces = _staging_replaces(mod)
    _module(mod, "bmctl.lab/k8s", {"k8s.io/kubernetes": KUBERNETES}, replaces)
    (mod / "tools.go").write_text("//go:build tools\n\npackage tools\n\nimport (\n"
                                  '\t_ "k8s.io/kubernetes/cmd/kube-apiserver/app"\n'
                                  '\t_ "k8s.io/kubernetes/cmd/kube-proxy/app"\n)\n')
    _go(["mod", "tidy"], mod)
    for name in wanted:
        _go(["build", "-trimpath", "-ldflags", "-s -w", "-o", str(binary(name)), f"k8s.io/kubernetes/cmd/{name}"], mod)


def build_etcd(work: Path) -> None:
    if binary("etcd").exists():
        return
    mod = _module(work / "etcd", "bmctl.lab/etcd", {"go.etcd.io/etcd/server/v3": ETCD},
                  main='package main\n\nimport (\n\t"os"\n\n\t"go.etcd.io/etcd/server/v3/etcdmain"\n)\n\n'
                       'func main() { etcdmain.Main(os.Args) }\n')
    _go(["mod", "tidy"], mod)
    _go(["build", "-trimpath", "-ldflags", "-s -w", "-o", str(binary("etcd")), "."], mod)


def build_metallb(work: Path) -> None:
    wanted = [n for n in ("metallb-controller", "metallb-speaker") if not binary(n).exists()]
    if not wanted:
        return
    mod = _module(work / "metallb", "bmctl.lab/metallb", {"go.universe.tf/metallb": METALLB})
    (mod / "tools.go").write_text("//go:build tools\n\npackage tools\n\nimport (\n"
                                  '\t_ "go.universe.tf/metallb/controller"\n\t_ "go.universe.tf/metallb/speaker"\n)\n')
    _go(["mod", "tidy"], mod)
    for name in wanted:
        pkg = "go.universe.tf/metallb/" + name.split("-", 1)[1]
        _go(["build", "-trimpath", "-ldflags", "-s -w", "-o", str(binary(name)), pkg], mod)


def ensure(parts: list[str] | None = None) -> None:
    cache_dir().mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="bmctl-gobuild-"))
    builders = {"etcd": build_etcd, "metallb": build_metallb, "kubernetes": build_kubernetes}
    for name in parts or list(builders):
        print(f"building {name} (cached in {cache_dir()})", flush=True)
        builders[name](work)


if __name__ == "__main__":
    if "--list" in sys.argv:
        for n in ("etcd", "kube-apiserver", "kube-proxy", "metallb-controller", "metallb-speaker"):
            print(binary(n), "present" if binary(n).exists() else "missing")
    else:
        ensure([a for a in sys.argv[1:] if not a.startswith("-")] or None)
