"""Build every binary the lab needs from its Go module, version-stamped, with this machine's Go.

What is built (the lab's versions: GROUPS below is the one place they live; real clusters' versions
live in bmctl/release/):
- kubernetes v1.34.2: kube-apiserver, kube-controller-manager, kube-scheduler, kube-proxy, kubelet,
  kubeadm, kubectl, from a wrapper module that requires k8s.io/kubernetes and replaces each
  k8s.io/* staging module with its published v0.34.2;
- etcd v3.6.5 (and etcdctl, etcdutl): the version kubeadm 1.34 deploys (constants.SupportedEtcdVersion[34]);
- CoreDNS v1.12.1 (kubeadm 1.34's constants.CoreDNSVersion);
- flannel v0.27.4 (the lab's pod network) and its CNI plugin (see FLANNEL_CNI_PLUGIN);
- MetalLB v0.15.2 controller and speaker, and the FRR-mode tools its speaker image ships (cp-tool,
  frr-metrics: speaker/Dockerfile builds them from frr-tools/ with the same version ldflags);
- crane v0.22.1 (image pushes, the lab's registry) and crictl v1.34.0;
- the CNCF Distribution registry v3.1.2 (TLS + htpasswd auth, for bmctl's registry client tests);
- Traefik v3.7.12, the bundled ingress controller (see TRAEFIK);
- hey v0.1.4, the HTTP load generator benchmarks/ingress.py runs from the client namespace;
- pause and web, our own programs (bmctl/lab/cmd/).

Each group is one wrapper module and ONE `go build` of all its main packages (they share the
compilation), CGO off except flannel (its amd64 UDP backend is cgo; linked static, as upstream).
Binaries are cached outside the repository, keyed by name and version, each with a stamp of how it
was built (module versions, ldflags, Go version, own sources): a changed stamp rebuilds.
    $BMCTL_BIN_CACHE (default ~/.cache/bmctl/bin)/<name>-<version>[.stamp]
Run: python -m bmctl.lab.binaries [GROUP...] [--list]
"""
from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

OWN_SOURCES = Path(__file__).resolve().parent / "cmd"

KUBERNETES = "v1.34.2"
KUBERNETES_DATE = "2025-11-11T19:00:37Z"  # the module's release time (buildDate: builds are reproducible)
OTHER_KUBELET = "v1.33.6"  # the version stamped on the kubelet-other binary
ETCD = "v3.6.5"
COREDNS = "v1.12.1"
FLANNEL = "v0.27.4"
# flannel's CNI plugin. Upstream's kube-flannel.yml of v0.27.4 pairs flannel-io/cni-plugin
# v1.8.0-flannel1, which the Go module proxy here does not serve (no version of that module). We
# build the same plugin from the module it was split out of, containernetworking/plugins
# (plugins/meta/flannel, its last release there): the same delegation to bridge + host-local; it
# lacks v1.x's several-CIDRs-per-family subnet.env parsing, which a one-CIDR pod network never uses.
FLANNEL_CNI_PLUGIN = "v0.9.1"
METALLB = "v0.15.2"
CRANE = "v0.22.1"
CRICTL = "v1.34.0"
DISTRIBUTION = "v3.1.2"  # the newest github.com/distribution/distribution/v3 the Go module proxy serves
# Traefik, the bundled ingress (bmctl/render/ingress.py). Its go.mod repeats, as a dependency's replace
# and exclude lines do not carry over, what its own module needs to resolve: two Containous forks (the
# go-http-auth fork at the version the proxy here serves; Traefik v3.7.12 names a newer pseudo-version
# of it the proxy refuses, same API), the tencentcloud monorepo exclude, and its in-tree module
# github.com/traefik/traefik/dynamic/ext (absent from the module zip: a nested module), whose two
# extension points are empty structs in upstream's default build.
TRAEFIK = "v3.7.12"
TRAEFIK_CODENAME = "langres"
TRAEFIK_EXT = {"go.mod": "module github.com/traefik/traefik/dynamic/ext\n\ngo 1.24\n",
               "ext.go": "// Package ext: Traefik's dynamic configuration extension points, empty as in its\n"
                         "// default build.\npackage ext\n\n// HTTP extends dynamic.HTTPConfiguration.\n"
                         "type HTTP struct{}\n\n// Router extends dynamic.Router.\ntype Router struct{}\n"}
HEY = "v0.1.4"
OWN = "v1"  # pause and web: bump when their behaviour changes (a source change rebuilds anyway)
PAUSE_TAG = "3.10.1"  # kubeadm 1.34's constants.PauseVersion: the tag our pause image carries

K8S_VERSION_PACKAGES = ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version")


def _x(var: str, value: str) -> str:
    return f"-X {var}={value}"


def _k8s_ldflags(stamp: str = KUBERNETES) -> tuple[str, ...]:
    """What kube::version::ldflags (hack/lib/version.sh) stamps, in both version packages.

    gitCommit stays unset (as upstream does when it builds outside git): the proxy gives no commit.
    """
    major, minor = stamp[1:].split(".")[:2]
    values = {"gitVersion": stamp, "gitMajor": major, "gitMinor": minor, "gitTreeState": "clean",
              "buildDate": KUBERNETES_DATE}
    return tuple(_x(f"{pkg}.{k}", v) for pkg in K8S_VERSION_PACKAGES for k, v in values.items())


@dataclass(frozen=True)
class Group:
    """Main packages built by one `go build` from one wrapper module."""
    name: str
    version: str
    requires: dict[str, str]  # module -> version
    binaries: dict[str, str]  # binary name -> main package
    ldflags: tuple[str, ...] = ()
    cgo: bool = False
    tags: str = ""
    staging: bool = False  # replace k8s.io/kubernetes's ./staging modules with their published versions
    own: bool = False  # our own module (bmctl/lab/cmd), no wrapper
    replaces: tuple[tuple[str, str], ...] = ()      # (module, "other/module version" or "./dir")
    excludes: tuple[str, ...] = ()                  # "module version"
    local: tuple[tuple[str, tuple[tuple[str, str], ...]], ...] = ()  # (dir, ((file, text), ...)) in the wrapper
    sums_of: str = ""  # a required module whose go.sum the wrapper starts from (the checksum database
                       # here has no entry for some of its pinned dependencies; its go.sum has them)


GROUPS = [
    Group("kubernetes", KUBERNETES, {"k8s.io/kubernetes": KUBERNETES},
          {n: f"k8s.io/kubernetes/cmd/{n}" for n in ("kube-apiserver", "kube-controller-manager", "kube-scheduler",
                                                     "kube-proxy", "kubelet", "kubeadm", "kubectl")},
          _k8s_ldflags(), staging=True),
    # The same kubelet stamped as another release (tests: preflight refuses a node whose kubelet is
    # not the cluster's version). Only the link step differs from the kubelet above.
    Group("kubelet-other", KUBERNETES, {"k8s.io/kubernetes": KUBERNETES},
          {"kubelet-other": "k8s.io/kubernetes/cmd/kubelet"}, _k8s_ldflags(OTHER_KUBELET), staging=True),
    Group("etcd", ETCD, {"go.etcd.io/etcd/server/v3": ETCD, "go.etcd.io/etcd/etcdctl/v3": ETCD,
                         "go.etcd.io/etcd/etcdutl/v3": ETCD},
          {"etcd": "go.etcd.io/etcd/server/v3", "etcdctl": "go.etcd.io/etcd/etcdctl/v3",
           "etcdutl": "go.etcd.io/etcd/etcdutl/v3"},
          (_x("go.etcd.io/etcd/api/v3/version.GitSHA", "a061450"),)),  # the version itself is a constant there
    Group("coredns", COREDNS, {"github.com/coredns/coredns": COREDNS}, {"coredns": "github.com/coredns/coredns"},
          (_x("github.com/coredns/coredns/coremain.GitCommit", "707c7c1"),)),
    Group("flannel", FLANNEL, {"github.com/flannel-io/flannel": FLANNEL}, {"flanneld": "github.com/flannel-io/flannel"},
          (_x("github.com/flannel-io/flannel/pkg/version.Version", FLANNEL), "-extldflags=-static"),
          cgo=True, tags="netgo,osusergo"),
    Group("flannel-cni-plugin", FLANNEL_CNI_PLUGIN, {"github.com/containernetworking/plugins": FLANNEL_CNI_PLUGIN},
          {"flannel-cni-plugin": "github.com/containernetworking/plugins/plugins/meta/flannel"},
          (_x("github.com/containernetworking/plugins/pkg/utils/buildversion.BuildVersion", FLANNEL_CNI_PLUGIN),)),
    Group("metallb", METALLB, {"go.universe.tf/metallb": METALLB},
          {"metallb-controller": "go.universe.tf/metallb/controller",
           "metallb-speaker": "go.universe.tf/metallb/speaker",
           "metallb-cp-tool": "go.universe.tf/metallb/frr-tools/cp-tool",
           "metallb-frr-metrics": "go.universe.tf/metallb/frr-tools/metrics"},
          (_x("go.universe.tf/metallb/internal/version.gitCommit", "942c2fe5"),
           _x("go.universe.tf/metallb/internal/version.gitBranch", "v0.15"))),
    Group("crane", CRANE, {"github.com/google/go-containerregistry": CRANE},
          {"crane": "github.com/google/go-containerregistry/cmd/crane"},
          (_x("github.com/google/go-containerregistry/cmd/crane/cmd.Version", CRANE),)),
    Group("crictl", CRICTL, {"sigs.k8s.io/cri-tools": CRICTL}, {"crictl": "sigs.k8s.io/cri-tools/cmd/crictl"},
          (_x("sigs.k8s.io/cri-tools/pkg/version.Version", CRICTL),)),
    Group("distribution", DISTRIBUTION, {"github.com/distribution/distribution/v3": DISTRIBUTION},
          {"registry": "github.com/distribution/distribution/v3/cmd/registry"},
          (_x("github.com/distribution/distribution/v3/version.version", DISTRIBUTION),)),
    Group("traefik", TRAEFIK, {"github.com/traefik/traefik/v3": TRAEFIK},
          {"traefik": "github.com/traefik/traefik/v3/cmd/traefik"},
          (_x("github.com/traefik/traefik/v3/pkg/version.Version", TRAEFIK),
           _x("github.com/traefik/traefik/v3/pkg/version.Codename", TRAEFIK_CODENAME)),
          replaces=(("github.com/traefik/traefik/dynamic/ext", "./ext"),
                    ("github.com/abbot/go-http-auth",
                     "github.com/containous/go-http-auth v0.4.1-0.20200324110947-a37a7636d23e"),
                    ("github.com/gorilla/mux", "github.com/containous/mux v0.0.0-20250523120546-41b6ec3aed59")),
          excludes=("github.com/tencentcloud/tencentcloud-sdk-go v3.0.83+incompatible",),
          local=(("ext", tuple(TRAEFIK_EXT.items())),), sums_of="github.com/traefik/traefik/v3"),
    Group("hey", HEY, {"github.com/rakyll/hey": HEY}, {"hey": "github.com/rakyll/hey"}),  # no version variable
    Group("own", OWN, {}, {"pause": "bmctl.lab/cmd/pause", "web": "bmctl.lab/cmd/web"}, own=True),
]
BY_BINARY = {b: g for g in GROUPS for b in g.binaries}
BY_NAME = {g.name: g for g in GROUPS}


def cache_dir() -> Path:
    return Path(os.environ.get("BMCTL_BIN_CACHE", Path.home() / ".cache" / "bmctl" / "bin"))


_held = threading.local()


@contextlib.contextmanager
def build_lock():
    """Held while the lab's binaries or images are being built (an flock on the binary cache's
    `.build.lock`): a second builder, in this process or another (a test's lab beside a build
    started in the background), waits for the first and then finds everything cached. Reentrant."""
    depth = getattr(_held, "depth", 0)
    if depth:
        _held.depth = depth + 1
        try:
            yield
        finally:
            _held.depth -= 1
        return
    cache_dir().mkdir(parents=True, exist_ok=True)
    with open(cache_dir() / ".build.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        _held.depth = 1
        try:
            yield
        finally:
            _held.depth = 0
            fcntl.flock(handle, fcntl.LOCK_UN)


def version(name: str) -> str:
    return BY_BINARY[name].version


def binary(name: str) -> Path:
    """The cached binary `name` (e.g. "kubelet", "etcd", "metallb-speaker"); it may not exist yet."""
    return cache_dir() / f"{name}-{version(name)}"


def go() -> str:
    return shutil.which("go") or "/usr/local/go/bin/go"


@functools.lru_cache(maxsize=None)
def module_dir(module: str, module_version: str) -> Path:
    """The folder of a Go module in the module cache (downloaded by the ordinary Go client if not
    there yet): images take upstream's own non-Go files from it (MetalLB's frr-reloader.sh)."""
    info = json.loads(_run_go(["mod", "download", "-json", f"{module}@{module_version}"], Path(tempfile.gettempdir())))
    return Path(info["Dir"])


def _go_version() -> str:
    return subprocess.run([go(), "env", "GOVERSION"], capture_output=True, text=True, check=True).stdout.strip()


def _own_sources_digest() -> str:
    h = hashlib.sha256()
    for path in sorted(OWN_SOURCES.rglob("*")):
        if path.is_file():
            h.update(str(path.relative_to(OWN_SOURCES)).encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


def stamp(group: Group, go_version: str | None = None) -> str:
    """How `group` is built, as a short digest: a cached binary with another stamp is rebuilt."""
    recipe = {"group": group.name, "version": group.version, "requires": group.requires,
              "binaries": group.binaries, "ldflags": group.ldflags, "cgo": group.cgo, "tags": group.tags,
              "staging": group.staging, "go": go_version or _go_version(),
              "replaces": group.replaces, "excludes": group.excludes, "local": group.local, "sums": group.sums_of,
              "own": _own_sources_digest() if group.own else None}
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]


def _stamp_file(name: str) -> Path:
    return binary(name).with_name(binary(name).name + ".stamp")


def state(name: str, current_stamp: str) -> str:
    """"ok", "missing" or "stale" (built another way: other ldflags, Go or sources)."""
    if not binary(name).exists():
        return "missing"
    recorded = _stamp_file(name).read_text().strip() if _stamp_file(name).exists() else ""
    return "ok" if recorded == current_stamp else "stale"


def _env(cgo: bool) -> dict:
    return {**os.environ, "CGO_ENABLED": "1" if cgo else "0", "GOFLAGS": "-mod=mod", "GOTOOLCHAIN": "local"}


def _run_go(args: list[str], cwd: Path, cgo: bool = False) -> str:
    proc = subprocess.run([go(), *args], cwd=cwd, env=_env(cgo), capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"go {' '.join(args)} failed in {cwd}:\n{proc.stderr[-4000:]}")
    return proc.stdout


def _staging_replaces(work: Path, kubernetes: str) -> dict[str, str]:
    """Every k8s.io/* module that k8s.io/kubernetes replaces with ./staging, at its published v0.X.Y."""
    info = json.loads(_run_go(["mod", "download", "-json", f"k8s.io/kubernetes@{kubernetes}"], work))
    gomod = Path(info["GoMod"]).read_text()
    staging = re.findall(r"^\s*(k8s\.io/[\w.-]+) => \./staging/", gomod, re.M)
    return {m: "v0." + kubernetes[3:] for m in staging}


def _wrapper_module(group: Group, work: Path) -> Path:
    """A module that requires the group's modules and names its main packages as tools (go 1.24)."""
    work.mkdir(parents=True, exist_ok=True)
    if group.own:
        shutil.copytree(OWN_SOURCES, work, dirs_exist_ok=True)
        return work
    lines = [f"module bmctl.lab/{group.name}", "", "go 1.24", ""]
    lines += [f"require {m} {v}" for m, v in group.requires.items()]
    if group.staging:
        (work / "go.mod").write_text("\n".join(lines) + "\n")
        lines += [f"replace {m} => {m} {v}" for m, v in _staging_replaces(work, group.version).items()]
    lines += [f"replace {m} => {target}" for m, target in group.replaces]
    lines += [f"exclude {e}" for e in group.excludes]
    for folder, files in group.local:
        for name, text in files:
            (work / folder).mkdir(parents=True, exist_ok=True)
            (work / folder / name).write_text(text)
    lines += [f"tool {pkg}" for pkg in group.binaries.values()]
    if group.sums_of:
        shutil.copy(module_dir(group.sums_of, group.requires[group.sums_of]) / "go.sum", work / "go.sum")
        (work / "go.sum").chmod(0o644)
    (work / "go.mod").write_text("\n".join(lines) + "\n")
    return work


def _default_name(pkg: str) -> str:
    """The file `go build -o DIR/` writes for a main package: its last path element that is not /vN."""
    parts = pkg.split("/")
    return parts[-2] if re.fullmatch(r"v\d+", parts[-1]) and len(parts) > 1 else parts[-1]


def _print(msg: str) -> None:
    print(msg, flush=True)


def _clock(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    return f"{m}m{s:02d}s" if m else f"{seconds:.1f}s"


def build_group(group: Group, names: list[str], current_stamp: str, say=_print) -> float:
    """One `go build` of `names` (binaries of `group`) into the cache; returns the seconds it took."""
    start = time.monotonic()
    cache_dir().mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f"bmctl-gobuild-{group.name}-") as tmp:
        mod = _wrapper_module(group, Path(tmp) / "mod")
        say(f"  {group.name}: resolving modules")
        _run_go(["mod", "tidy"], mod, group.cgo)
        out = Path(tmp) / "out"
        out.mkdir()
        pkgs = [group.binaries[n] for n in names]
        ldflags = " ".join(("-s", "-w", *group.ldflags))
        args = [go(), "build", "-v", "-trimpath", "-ldflags", ldflags, *(["-tags", group.tags] if group.tags else []),
                "-o", f"{out}/", *pkgs]
        say(f"  {group.name}: compiling {', '.join(names)} ({_clock(time.monotonic() - start)})")
        proc = subprocess.Popen(args, cwd=mod, env=_env(group.cgo), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                text=True)
        compiled, tail, done = [0], [], threading.Event()

        def ticker():
            while not done.wait(30):
                say(f"  {group.name}: {compiled[0]} packages compiled, {_clock(time.monotonic() - start)}")

        threading.Thread(target=ticker, daemon=True).start()
        for line in proc.stderr:
            compiled[0] += 1
            tail = (tail + [line])[-60:]
        done.set()
        if proc.wait() != 0:
            raise RuntimeError(f"go build of {group.name} failed:\n{''.join(tail)}")
        for name in names:
            target = binary(name)
            tmp_target = target.with_name(target.name + ".tmp")
            shutil.move(str(out / _default_name(group.binaries[name])), tmp_target)
            os.replace(tmp_target, target)
            _stamp_file(name).write_text(current_stamp + "\n")
    return time.monotonic() - start


def ensure(groups: list[str] | None = None, say=_print) -> dict[str, float]:
    """Build every missing or stale binary of `groups` (default: all); returns seconds per group built."""
    with build_lock():
        return _ensure(groups, say)


def _ensure(groups: list[str] | None, say) -> dict[str, float]:
    go_version = _go_version()
    timings = {}
    for group in (BY_NAME[g] for g in (groups or BY_NAME)):
        current = stamp(group, go_version)
        wanted = [n for n in group.binaries if state(n, current) != "ok"]
        if not wanted:
            continue
        say(f"building {group.name} {group.version}: {', '.join(wanted)} (cache {cache_dir()})")
        timings[group.name] = build_group(group, wanted, current, say)
        say(f"built {group.name} {group.version} in {_clock(timings[group.name])}")
    return timings


def listing() -> list[tuple[str, str, str, Path]]:
    """(binary, version, state, path) for every binary."""
    go_version = _go_version()
    rows = []
    for group in GROUPS:
        current = stamp(group, go_version)
        rows += [(n, group.version, state(n, current), binary(n)) for n in group.binaries]
    return rows


def main(argv: list[str]) -> int:
    if "--list" in argv:
        for name, ver, st, path in listing():
            size = f"{path.stat().st_size / 2**20:6.1f} MiB" if path.exists() else ""
            print(f"{name:24} {ver:10} {st:8} {size:>10}  {path}")
        return 0
    groups = [a for a in argv if not a.startswith("-")]
    unknown = [g for g in groups if g not in BY_NAME]
    if unknown:
        print(f"unknown group(s) {', '.join(unknown)}; groups: {', '.join(BY_NAME)}", file=sys.stderr)
        return 2
    start = time.monotonic()
    timings = ensure(groups or None)
    print(f"binaries: {len(timings)} group(s) built in {_clock(time.monotonic() - start)}"
          + ("" if timings else " (all cached)"))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
