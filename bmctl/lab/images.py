"""Build the lab's container images here, without Docker: OCI image layouts written by Python.

Every image the lab's clusters run (IMAGES below) is made of gzip'd tar layers written with fixed
owners, modes and times (the same inputs give the same digests), a config with Entrypoint/Cmd/Env
(always a PATH)/User/WorkingDir/StopSignal, a manifest and an index, in an OCI image layout that
`crane push` sends to the lab's registry (bmctl/lab/registry.py). Parts:
- binaries built from their Go modules (bmctl/lab/binaries.py), e.g. FROM scratch + kube-apiserver;
- Debian packages where an image needs more than one static binary (iptables, nft, ipset, conntrack,
  ip, haproxy, keepalived, FRR with the python3 its frr-reload.py runs under, and busybox for /bin/sh
  and the small tools bmctl's pod scripts call):
  `apt-get download` of the packages and their dependency closure, `dpkg-deb -x` into a staging
  root, and into the image only the files named here plus the shared libraries they load (read
  from their ELF headers), so a missing library fails the build, not the pod.
Layouts are cached outside the repository, keyed by their content (every file's source, size and
mtime, and the config): $BMCTL_IMAGE_CACHE (default ~/.cache/bmctl/images)/<name>/<key>/.
Run: python -m bmctl.lab.images [--list]
"""
from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import struct
import subprocess
import sys
import tarfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from bmctl.lab import binaries

HERE = Path(__file__).resolve().parent
BUILDER = "bmctl-lab-images-2"  # bump when what is written changes (layers, package choice)
PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
EPOCH = "1970-01-01T00:00:00Z"

# Debian packages the images take files from (with their dependency closure).
DEBIAN_PACKAGES = ("busybox-static", "haproxy", "keepalived", "iptables", "nftables", "ipset", "conntrack",
                   "iproute2", "netbase", "curl", "frr", "frr-pythontools", "tini", "bash", "util-linux", "coreutils")
LIB_DIRS = ("lib/x86_64-linux-gnu", "usr/lib/x86_64-linux-gnu", "lib64", "usr/lib64", "lib", "usr/lib")


def cache_dir() -> Path:
    return Path(os.environ.get("BMCTL_IMAGE_CACHE", Path.home() / ".cache" / "bmctl" / "images"))


def _print(msg: str) -> None:
    print(msg, flush=True)


# -- what goes into a layer ---------------------------------------------------------------------

@dataclass(frozen=True)
class Entry:
    """One file, folder or symlink of a layer (owner, mode and xattrs as the image has them)."""
    kind: str  # "file", "dir" or "link"
    source: Path | bytes | None = None  # a file's content
    target: str = ""  # a link's target
    mode: int = 0o755
    uid: int = 0
    gid: int = 0
    xattrs: tuple[tuple[str, bytes], ...] = ()

    def fingerprint(self) -> list:
        if isinstance(self.source, Path):
            st = self.source.stat()
            src = [str(self.source), st.st_size, st.st_mtime_ns]
        else:
            src = hashlib.sha256(self.source).hexdigest() if self.source is not None else None
        return [self.kind, src, self.target, self.mode, self.uid, self.gid, [[k, v.hex()] for k, v in self.xattrs]]


Layer = dict[str, Entry]  # path in the image (no leading /) -> entry


def data(text: str | bytes, mode: int = 0o644, uid: int = 0, gid: int = 0) -> Entry:
    return Entry("file", text.encode() if isinstance(text, str) else text, mode=mode, uid=uid, gid=gid)


def file(path: Path, mode: int = 0o755, xattrs=()) -> Entry:
    return Entry("file", Path(path), mode=mode, xattrs=tuple(xattrs))


def folder(mode: int = 0o755, uid: int = 0, gid: int = 0) -> Entry:
    return Entry("dir", mode=mode, uid=uid, gid=gid)


def link(target: str) -> Entry:
    return Entry("link", target=target, mode=0o777)


def file_capabilities(*caps: int) -> tuple[tuple[str, bytes], ...]:
    """The security.capability xattr of `setcap <caps>+ep` (struct vfs_cap_data, revision 2)."""
    permitted = sum(1 << c for c in caps)
    value = struct.pack("<IIIII", 0x02000000 | 0x1, permitted & 0xFFFFFFFF, 0, permitted >> 32, 0)
    return (("security.capability", value),)


CAP_NET_BIND_SERVICE = 10


def users(*extra: tuple[str, int]) -> Layer:
    """/etc/passwd and /etc/group as distroless has them (root, nobody, nonroot), plus `extra`."""
    accounts = [("root", 0, "/root"), ("nobody", 65534, "/nonexistent"), ("nonroot", 65532, "/home/nonroot")]
    accounts += [(name, uid, f"/var/lib/{name}") for name, uid in extra]
    passwd = "".join(f"{n}:x:{u}:{u}:{n}:{home}:/sbin/nologin\n" for n, u, home in accounts)
    group = "".join(f"{n}:x:{u}:\n" for n, u, _ in accounts)
    return {"etc/passwd": data(passwd), "etc/group": data(group), "tmp": folder(0o1777), "root": folder(0o700),
            "home/nonroot": folder(0o700, 65532, 65532)}


# -- Debian parts ---------------------------------------------------------------------------------

def _apt(*argv: str, cwd: Path | None = None) -> str:
    proc = subprocess.run(list(argv), capture_output=True, text=True, cwd=cwd)
    if proc.returncode != 0:
        raise RuntimeError(f"`{' '.join(argv)}` failed: {proc.stderr.strip()}\n"
                           "(Debian's package lists are needed: run `apt-get update` once)")
    return proc.stdout


def _show(names: list[str]) -> dict[str, dict]:
    """apt-cache's fields of each real package among `names` (virtual ones are left out)."""
    packages = {}
    for stanza in _apt("apt-cache", "show", "--no-all-versions", *names).split("\n\n"):
        fields = dict(line.split(": ", 1) for line in stanza.splitlines() if ": " in line and line[0] != " ")
        if "Package" in fields:
            packages[fields["Package"]] = fields
    return packages


def _dependencies(fields: dict) -> list[list[str]]:
    """Pre-Depends and Depends as groups of alternatives: "a (>= 1) | b:any" -> ["a", "b"]."""
    text = ", ".join(f for f in (fields.get("Pre-Depends"), fields.get("Depends")) if f)
    return [[alt.split()[0].split(":")[0] for alt in group.split("|")] for group in text.split(",") if group.strip()]


class Debian:
    """A staging root with DEBIAN_PACKAGES and their dependency closure unpacked (`dpkg-deb -x`)."""

    def __init__(self, cache: Path, say=_print) -> None:
        self.cache = cache / "debian"
        self.say = say
        self._root: Path | None = None
        self.versions: dict[str, str] = {}

    def _closure(self) -> dict[str, dict]:
        """Package -> its apt-cache fields, for DEBIAN_PACKAGES and their dependency closure; kept in
        a file until Debian's package lists change (apt-cache takes seconds, a publish should not)."""
        lists = sorted(Path("/var/lib/apt/lists").glob("*_Packages*"))
        state = [BUILDER, DEBIAN_PACKAGES, [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in lists]]
        memo = self.cache / f"closure-{hashlib.sha256(json.dumps(state).encode()).hexdigest()[:16]}.json"
        if memo.exists():
            return json.loads(memo.read_text())
        packages = self._ask_apt()
        self.cache.mkdir(parents=True, exist_ok=True)
        for old in self.cache.glob("closure-*.json"):
            old.unlink()
        memo.write_text(json.dumps(packages))
        return packages

    def _ask_apt(self) -> dict[str, dict]:
        """Follow Pre-Depends and Depends from DEBIAN_PACKAGES, taking of each `a | b` the first
        alternative that is a real package (what apt installs by default), so that no two packages
        that provide the same file (libsystemd0 and libelogind0) are unpacked into one root."""
        info: dict[str, dict] = {}
        virtual: set[str] = set()
        chosen = set(DEBIAN_PACKAGES)
        while True:
            groups = [g for p in chosen if p in info for g in _dependencies(info[p])]
            unknown = ({p for p in chosen} | {a for g in groups for a in g}) - info.keys() - virtual
            if unknown:
                found = _show(sorted(unknown))
                info.update(found)
                virtual |= unknown - found.keys()
                continue
            picked = {next(a for a in g if a in info) for g in groups if any(a in info for a in g)}
            if picked <= chosen:
                break
            chosen |= picked
        missing = [p for p in DEBIAN_PACKAGES if p not in info]
        if missing:
            raise RuntimeError(f"Debian packages not found: {', '.join(missing)} (run `apt-get update` once)")
        return {p: info[p] for p in sorted(chosen) if p in info}

    def root(self) -> Path:
        if self._root:
            return self._root
        packages = self._closure()
        self.versions = {p: f["Version"] for p, f in packages.items()}
        debs = {p: f"{p}_{f['Version'].replace(':', '%3a')}_{f['Architecture']}.deb" for p, f in packages.items()}
        key = hashlib.sha256("\n".join(sorted(debs.values())).encode()).hexdigest()[:16]
        root = self.cache / key
        if not (root / ".complete").exists():
            start = time.monotonic()
            download = self.cache / "debs"
            download.mkdir(parents=True, exist_ok=True)
            wanted = [f"{p}={packages[p]['Version']}" for p, deb in debs.items() if not (download / deb).exists()]
            if wanted:
                self.say(f"  debian: downloading {len(wanted)} packages")
                _apt("apt-get", "download", "-q", *wanted, cwd=download)
            shutil.rmtree(root, ignore_errors=True)
            (root / "root").mkdir(parents=True)
            for deb in sorted(debs.values()):
                _apt("dpkg-deb", "-x", str(download / deb), str(root / "root"))
            (root / ".complete").write_text("\n".join(sorted(debs.values())) + "\n")
            for other in self.cache.iterdir():  # roots of older package versions
                if other.is_dir() and other not in (root, download):
                    shutil.rmtree(other, ignore_errors=True)
            self.say(f"  debian: {len(debs)} packages unpacked in {time.monotonic() - start:.1f}s")
        self._root = root / "root"
        return self._root

    def version(self, package: str) -> str:
        self.root()
        return self.versions[package]

    # files of the staging root, as layer entries

    def _entry(self, rel: str) -> Entry:
        path = self.root() / rel
        if path.is_symlink():
            return link(os.readlink(path))
        if path.is_dir():
            return folder(path.stat().st_mode & 0o7777)
        return file(path, path.stat().st_mode & 0o7777)

    def _resolve(self, rel: str) -> list[str]:
        """`rel` and, if it is a symlink, every path its chain goes through, relative to the root."""
        chain = [rel]
        path = self.root() / rel
        while path.is_symlink():
            target = os.readlink(path)
            rel = os.path.normpath(target.lstrip("/") if target.startswith("/")
                                   else os.path.join(os.path.dirname(chain[-1]), target))
            chain.append(rel)
            path = self.root() / rel
        if not path.exists():
            raise RuntimeError(f"{chain[0]}: not in the Debian packages (dangling at {rel})")
        return chain

    def _library(self, soname: str, runpath: tuple[str, ...] = ()) -> str:
        """Where the loader finds `soname`: the object's own search path (DT_RUNPATH), then LIB_DIRS."""
        for d in (*runpath, *LIB_DIRS):
            if (self.root() / d / soname).exists() or (self.root() / d / soname).is_symlink():
                return f"{d}/{soname}"
        raise RuntimeError(f"shared library {soname} is in none of the Debian packages {DEBIAN_PACKAGES} "
                           "or their dependencies")

    def with_libraries(self, *paths: str, skip: tuple[str, ...] = ()) -> Layer:
        """`paths` (files, symlinks or whole folders) and every shared library they load, recursively;
        what a folder holds at a path of `skip` (or under it) is left out."""
        layer: Layer = {}
        todo = list(paths)
        while todo:
            rel = todo.pop()
            if rel in layer:
                continue
            if (self.root() / rel).is_dir() and not (self.root() / rel).is_symlink():
                layer[rel] = self._entry(rel)
                inside = [str(p.relative_to(self.root())) for p in (self.root() / rel).iterdir()]
                todo += [p for p in inside if not any(p == s or p.startswith(s.rstrip("/") + "/") for s in skip)]
                continue
            chain = self._resolve(rel)
            for r in chain:
                layer[r] = self._entry(r)
            interp, needed, runpath = elf_dynamic(self.root() / chain[-1])
            origin = os.path.dirname(chain[-1])
            search = tuple(os.path.normpath(d.replace("${ORIGIN}", "/" + origin).replace("$ORIGIN", "/" + origin))
                           .lstrip("/") for d in runpath)
            todo += ([interp.lstrip("/")] if interp else []) + [self._library(n, search) for n in needed]
        return layer

    def busybox(self, keep_out: Layer | None = None) -> Layer:
        """/bin/busybox (static) and a link for each applet, except names `keep_out` already has a binary for."""
        bb = self.root() / "bin" / "busybox"
        applets = subprocess.run([str(bb), "--list-full"], capture_output=True, text=True, check=True).stdout.split()
        taken = {Path(p).name for p, e in (keep_out or {}).items() if e.kind != "dir" and "bin/" in p}
        layer: Layer = {"bin/busybox": file(bb)}
        layer.update({a: link("/bin/busybox") for a in applets if Path(a).name not in taken and a != "bin/busybox"})
        return layer


def elf_dependencies(path: Path) -> tuple[str | None, list[str]]:
    """The interpreter (PT_INTERP) and DT_NEEDED libraries of a 64-bit little-endian ELF file."""
    interp, needed, _ = elf_dynamic(path)
    return interp, needed


def elf_dynamic(path: Path) -> tuple[str | None, list[str], list[str]]:
    """The interpreter (PT_INTERP), DT_NEEDED libraries and search path (DT_RUNPATH, else DT_RPATH,
    with $ORIGIN left in) of a 64-bit little-endian ELF file."""
    blob = path.read_bytes()
    if blob[:4] != b"\x7fELF":
        return None, [], []
    if blob[4] != 2 or blob[5] != 1:
        raise RuntimeError(f"{path}: not a 64-bit little-endian ELF file")
    phoff, = struct.unpack_from("<Q", blob, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", blob, 0x36)
    loads, dynamic, interp = [], None, None
    for i in range(phnum):
        p_type, _, offset, vaddr, _, filesz, _, _ = struct.unpack_from("<IIQQQQQQ", blob, phoff + i * phentsize)
        if p_type == 1:
            loads.append((vaddr, offset, filesz))
        elif p_type == 2:
            dynamic = (offset, filesz)
        elif p_type == 3:
            interp = blob[offset:offset + filesz].rstrip(b"\0").decode()
    if not dynamic:
        return interp, [], []
    entries = [struct.unpack_from("<qQ", blob, dynamic[0] + j) for j in range(0, dynamic[1], 16)]
    strtab = next(v for tag, v in entries if tag == 5)
    base = next(off + strtab - va for va, off, size in loads if va <= strtab < va + size)

    def string(value: int) -> str:
        start = base + value
        return blob[start:blob.index(b"\0", start)].decode()

    needed, paths = [], {}
    for tag, value in entries:
        if tag == 0:
            break
        if tag == 1:
            needed.append(string(value))
        elif tag in (15, 29):  # DT_RPATH, DT_RUNPATH (which makes the loader ignore DT_RPATH)
            paths[tag] = [d for d in string(value).split(":") if d]
    return interp, needed, paths.get(29, paths.get(15, []))


# -- the images -----------------------------------------------------------------------------------

@dataclass
class Image:
    name: str  # the repository under the lab registry (kubeadm's names for the control plane)
    tag: str
    layers: list[Layer]
    entrypoint: list[str] | None = None
    cmd: list[str] | None = None
    user: str = ""
    workdir: str = ""
    stop_signal: str = ""
    ports: list[str] = field(default_factory=list)
    source: str = ""  # where its software comes from (its org.opencontainers.image.description label)

    def config(self) -> dict:
        cfg = {"Env": [PATH_ENV], "Labels": {"org.opencontainers.image.title": self.name,
                                             "org.opencontainers.image.version": self.tag,
                                             "org.opencontainers.image.description": self.source,
                                             "org.opencontainers.image.vendor": "bmctl lab"}}
        for key, value in (("Entrypoint", self.entrypoint), ("Cmd", self.cmd), ("User", self.user),
                           ("WorkingDir", self.workdir), ("StopSignal", self.stop_signal)):
            if value:
                cfg[key] = value
        if self.ports:
            cfg["ExposedPorts"] = {p: {} for p in self.ports}
        return cfg

    def key(self) -> str:
        recipe = {"builder": BUILDER, "name": self.name, "tag": self.tag, "config": self.config(),
                  "layers": [{p: e.fingerprint() for p, e in sorted(layer.items())} for layer in self.layers]}
        return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:20]


HAPROXY_ENTRYPOINT = """#!/bin/sh
set -e
# bmctl lab: the official haproxy image's entrypoint contract. A first argument that is an option
# means haproxy; haproxy runs in master-worker mode (-W: SIGUSR2 reloads) in the foreground (-db).
if [ "${1#-}" != "$1" ]; then
	set -- haproxy "$@"
fi
if [ "$1" = 'haproxy' ]; then
	shift
	set -- haproxy -W -db "$@"
fi
exec "$@"
"""


# The FRR image: what MetalLB's FRR mode (config/manifests/metallb-frr.yaml) runs from upstream's
# quay.io/frrouting/frr:9.1.0 (Alpine: FRR's docker/alpine/Dockerfile), from Debian's frr packages.
# Its accounts are the Alpine package's (frr.pre-install): user frr 100 in group frr 101 and in frrvty
# 102 (the daemons, started -u frr -g frr, refuse to run unless frr is in the vty group); MetalLB's
# cp-frr-files init container runs as 100:101 and copies into /etc/frr.
FRR_UID, FRR_GID, FRRVTY_GID = 100, 101, 102
FRR_DAEMONS = ("zebra", "bgpd", "bfdd", "staticd", "watchfrr")  # MetalLB's daemons file: bgpd, bfdd (+ zebra, staticd)
# Python's standard library less what frr-reload.py (argparse, logging, re, subprocess, ipaddress,
# pprint...) never imports: the test suite, packaging and GUI parts, databases, curses.
PYTHON_SKIP = ("test", "unittest", "idlelib", "tkinter", "turtledemo", "turtle.py", "ensurepip", "lib2to3", "venv",
               "distutils", "pydoc_data", "sqlite3", "dbm", "curses", "EXTERNALLY-MANAGED")
PYTHON_DYNLOAD_SKIP = ("_test", "_ctypes_test", "_xxtestfuzz", "xxlimited", "_sqlite3", "_dbm", "_curses", "nis.",
                       "ossaudiodev")

# Debian's vtysh authenticates its caller with PAM (service "frr") unless vtysh.conf says `username
# USER nopassword`, which MetalLB's does not: Debian's /etc/pam.d/frr lets anyone in (only frrvty's
# members reach the daemons' sockets) but has no account stack, and the image has no common-account
# for PAM to fall back on, so it gets one here.
FRR_PAM = """# Any user may call vtysh but only those belonging to the group frrvty can
# actually connect to the socket and use the program.
auth	sufficient	pam_permit.so
account	sufficient	pam_permit.so
"""

FRR_DOCKER_START = """#!/bin/bash
# bmctl lab: the start command of FRR's own image (upstream's docker/alpine/docker-start), which
# MetalLB's frr container runs as `/sbin/tini -- /usr/lib/frr/docker-start`: watchfrr in the
# foreground, watching the daemons that /etc/frr/daemons enables (zebra and staticd always). watchfrr
# starts each of them with /usr/lib/frr/watchfrr.sh (frrcommon.sh's daemon_start: `DAEMON -d -F
# PROFILE $DAEMON_options`, then `vtysh -b -d DAEMON` loads /etc/frr/frr.conf into it) and restarts
# any that dies.
log_success_msg() {
	echo "$@"
}
log_warning_msg() {
	echo "$@" >&2
}
log_failure_msg() {
	echo "$@" >&2
}

source /usr/lib/frr/frrcommon.sh
exec /usr/lib/frr/watchfrr $(daemon_list)
"""


def frr_users() -> Layer:
    """users() plus FRR's accounts as upstream's image has them."""
    layer = users()
    passwd = layer["etc/passwd"].source.decode() + f"frr:x:{FRR_UID}:{FRR_GID}:frr:/var/run/frr:/sbin/nologin\n"
    group = layer["etc/group"].source.decode() + f"frr:x:{FRR_GID}:\nfrrvty:x:{FRRVTY_GID}:frr\n"
    return {**layer, "etc/passwd": data(passwd), "etc/group": data(group)}


def _frr(deb: Debian) -> Layer:
    """FRR's daemons, vtysh, its scripts and frr-reload.py with the python3 it runs under, tini, bash,
    curl, and the tools MetalLB's frr containers and frrcommon.sh call that busybox lacks (flock,
    install); busybox for the rest (sh with [[, sleep infinity, tail, sed, date, kill...)."""
    root = deb.root()
    python = "usr/lib/python3.11"
    stdlib = [f"{python}/{p.name}" for p in sorted((root / python).iterdir())
              if p.name not in PYTHON_SKIP and p.name != "lib-dynload"]
    dynload = [f"{python}/lib-dynload/{p.name}" for p in sorted((root / python / "lib-dynload").iterdir())
               if not p.name.startswith(PYTHON_DYNLOAD_SKIP)]
    layer = deb.with_libraries(
        *(f"usr/lib/frr/{d}" for d in FRR_DAEMONS), "usr/lib/frr/frrinit.sh", "usr/lib/frr/frrcommon.sh",
        "usr/lib/frr/watchfrr.sh", "usr/lib/frr/frr-reload.py", "usr/bin/vtysh",
        "usr/lib/x86_64-linux-gnu/frr", "usr/share/yang", "lib/x86_64-linux-gnu/security/pam_permit.so",
        "usr/bin/python3", *stdlib, *dynload, "bin/bash", "usr/bin/flock", "usr/bin/install", "usr/bin/curl",
        skip=("usr/lib/x86_64-linux-gnu/frr/modules/pathd_pcep.so",))  # pathd is not in the image
    layer["sbin/tini"] = file(root / "usr/bin/tini-static")  # where Alpine's tini is (upstream's entrypoint)
    frr_owned = {"uid": FRR_UID, "gid": FRR_GID}
    for name in ("daemons", "frr.conf", "vtysh.conf", "support_bundle_commands.conf"):
        layer[f"etc/frr/{name}"] = Entry("file", root / "etc/frr" / name, mode=0o640, **frr_owned)
    layer.update({"etc/frr": folder(0o755, **frr_owned), "run": folder(), "var/run": link("/run"),
                  "run/frr": folder(0o755, **frr_owned), "var/log/frr": folder(0o755, **frr_owned),
                  "var/tmp": folder(0o1777), "var/tmp/frr": folder(0o755, **frr_owned),
                  "var/lib/frr": folder(0o755, **frr_owned),
                  "etc/pam.d/frr": data(FRR_PAM), "usr/lib/frr/docker-start": data(FRR_DOCKER_START, 0o755)})
    return {**deb.busybox(layer), **layer}


def _tag(debian_version: str) -> str:
    """A Debian version as an image tag (no epoch; `+` and `~` are not allowed in tags)."""
    return debian_version.split(":", 1)[-1].replace("+", "-").replace("~", "-")


def _bin(name: str, path: str, mode: int = 0o755, xattrs=()) -> Layer:
    built = binaries.binary(name)
    if not built.exists():
        raise RuntimeError(f"{built} is missing: run `python -m bmctl.lab.binaries`")
    return {path: file(built, mode, xattrs)}


def _netfilter(deb: Debian) -> Layer:
    """iptables (nft and legacy, behind iptables-wrapper), nft, ipset, conntrack: what kube-proxy and
    flannel call, as upstream's distroless-iptables has them."""
    layer = deb.with_libraries("usr/sbin/xtables-nft-multi", "usr/sbin/xtables-legacy-multi", "usr/sbin/nft",
                               "usr/sbin/ipset", "usr/sbin/conntrack", "usr/lib/x86_64-linux-gnu/xtables",
                               "etc/protocols", "etc/services", "etc/ethertypes")
    sbin = deb.root() / "usr/sbin"
    layer.update({f"usr/sbin/{p.name}": link(os.readlink(p)) for p in sbin.iterdir()
                  if p.is_symlink() and os.readlink(p).startswith("xtables-")})
    layer["usr/sbin/iptables-wrapper"] = file(HERE / "iptables-wrapper")
    for cmd in ("iptables", "iptables-save", "iptables-restore", "ip6tables", "ip6tables-save", "ip6tables-restore"):
        layer[f"usr/sbin/{cmd}"] = link("iptables-wrapper")
    return layer


def specs(deb: Debian) -> list[Image]:
    """Every image of the lab, in the order of the release file."""
    k8s = binaries.KUBERNETES
    base = users()

    def scratch(name: str, tag: str, binary: str, path: str, source: str, **kw) -> Image:
        return Image(name, tag, [base, _bin(binary, path)], entrypoint=[f"/{path}"], source=source, **kw)

    netfilter = _netfilter(deb)
    # (frr's rt_protos.d/frr.conf is in the staging root's etc/iproute2: the image keeps iproute2's own)
    flannel_tools = {**netfilter, **deb.with_libraries("bin/ip", "etc/iproute2",
                                                       skip=("etc/iproute2/rt_protos.d/frr.conf",))}
    haproxy = deb.with_libraries("usr/sbin/haproxy")
    haproxy.update({"usr/local/sbin/haproxy": link("/usr/sbin/haproxy"),
                    "usr/local/bin/docker-entrypoint.sh": data(HAPROXY_ENTRYPOINT, 0o755),
                    "usr/local/etc/haproxy": folder(), "var/lib/haproxy": folder(0o755, 99, 99)})
    # keepalived writes its pid files in /run (the Debian package's runtime folder)
    # curl for bmctl's track script (busybox-static's wget crashes in getaddrinfo without NSS)
    keepalived = {**deb.with_libraries("usr/sbin/keepalived", "usr/bin/curl"), "etc/keepalived": folder(),
                  "run": folder(), "var/run": link("/run")}
    debian = f"Debian {deb.version('busybox-static')} busybox"
    metallb = binaries.module_dir("go.universe.tf/metallb", binaries.METALLB)
    metallb_frr_tools = {**_bin("metallb-cp-tool", "cp-tool"), **_bin("metallb-frr-metrics", "frr-metrics"),
                         "frr-reloader.sh": file(metallb / "frr-tools/reloader/frr-reloader.sh", 0o755),
                         "LICENSE": file(metallb / "LICENSE", 0o644)}
    return [
        Image("pause", binaries.PAUSE_TAG, [base, _bin("pause", "pause")], entrypoint=["/pause"], user="65535:65535",
              source="bmctl/lab/cmd/pause"),
        Image("etcd", binaries.ETCD.lstrip("v") + "-0", [base, {"var/lib/etcd": folder(0o700)},
                                                          {**_bin("etcd", "usr/local/bin/etcd"),
                                                           **_bin("etcdctl", "usr/local/bin/etcdctl"),
                                                           **_bin("etcdutl", "usr/local/bin/etcdutl")}],
              cmd=["/usr/local/bin/etcd"], source=f"go.etcd.io/etcd/server/v3 {binaries.ETCD}"),
        *(scratch(n, k8s, n, f"usr/local/bin/{n}", f"k8s.io/kubernetes {k8s}")
          for n in ("kube-apiserver", "kube-controller-manager", "kube-scheduler")),
        Image("kube-proxy", k8s, [base, {**deb.busybox(netfilter), **netfilter}, _bin("kube-proxy", "usr/local/bin/kube-proxy")],
              entrypoint=["/usr/local/bin/kube-proxy"], source=f"k8s.io/kubernetes {k8s}; {debian}, iptables, "
              f"nftables, ipset, conntrack"),
        Image("coredns", binaries.COREDNS, [base, _bin("coredns", "coredns", xattrs=file_capabilities(CAP_NET_BIND_SERVICE))],
              entrypoint=["/coredns"], user="nonroot:nonroot", workdir="/", ports=["53/tcp", "53/udp"],
              source=f"github.com/coredns/coredns {binaries.COREDNS}"),
        Image("flannel", binaries.FLANNEL, [base, {**deb.busybox(flannel_tools), **flannel_tools},
                                            _bin("flanneld", "opt/bin/flanneld")],
              entrypoint=["/opt/bin/flanneld"], source=f"github.com/flannel-io/flannel {binaries.FLANNEL}; {debian}, "
              "iptables, nftables, iproute2"),
        Image("flannel-cni-plugin", binaries.FLANNEL_CNI_PLUGIN, [base, deb.busybox(), _bin("flannel-cni-plugin", "flannel")],
              cmd=["/bin/sh"], source=f"github.com/containernetworking/plugins {binaries.FLANNEL_CNI_PLUGIN} "
              f"plugins/meta/flannel; {debian}"),
        scratch("metallb-controller", binaries.METALLB, "metallb-controller", "controller",
                f"go.universe.tf/metallb {binaries.METALLB}"),
        # upstream's speaker/Dockerfile: /speaker, and for FRR mode /cp-tool, /frr-metrics and
        # /frr-reloader.sh, which the speaker pod's init containers copy into the frr containers
        Image("metallb-speaker", binaries.METALLB, [base, _bin("metallb-speaker", "speaker"), metallb_frr_tools],
              entrypoint=["/speaker"], source=f"go.universe.tf/metallb {binaries.METALLB}"),
        Image("haproxy", _tag(deb.version("haproxy")), [users(("haproxy", 99)), {**deb.busybox(haproxy), **haproxy}],
              entrypoint=["docker-entrypoint.sh"], cmd=["haproxy", "-f", "/usr/local/etc/haproxy/haproxy.cfg"],
              user="haproxy", workdir="/var/lib/haproxy", stop_signal="SIGUSR1",
              source=f"Debian haproxy {deb.version('haproxy')}; {debian}"),
        Image("keepalived", _tag(deb.version("keepalived")), [base, {**deb.busybox(keepalived), **keepalived}],
              entrypoint=["/usr/sbin/keepalived"],
              cmd=["--dont-fork", "--log-console", "--use-file=/etc/keepalived/keepalived.conf"],
              source=f"Debian keepalived {deb.version('keepalived')}; {debian}"),
        Image("frr", _tag(deb.version("frr")), [frr_users(), _frr(deb)], entrypoint=["/sbin/tini", "--"],
              cmd=["/usr/lib/frr/docker-start"],
              source=f"Debian frr {deb.version('frr')}, frr-pythontools, python3.11 "
              f"{deb.version('python3.11-minimal')}, tini {deb.version('tini')}, bash, curl; {debian}"),
        # upstream's image (docker-library/traefik, alpine) runs /entrypoint.sh -> traefik; the pod spec
        # gives every argument and runs as 65532 with a read-only root, so the binary alone is enough
        Image("traefik", binaries.TRAEFIK, [base, _bin("traefik", "usr/local/bin/traefik")],
              entrypoint=["/usr/local/bin/traefik"], ports=["80/tcp"], source=f"github.com/traefik/traefik/v3 "
              f"{binaries.TRAEFIK}"),
        Image("web", binaries.OWN, [base, _bin("web", "web")], entrypoint=["/web"], user="65532:65532",
              ports=["8080/tcp"], source="bmctl/lab/cmd/web"),
    ]


IMAGE_NAMES = ("pause", "etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kube-proxy", "coredns",
               "flannel", "flannel-cni-plugin", "metallb-controller", "metallb-speaker", "haproxy", "keepalived", "frr",
               "traefik", "web")


# -- OCI image layout ------------------------------------------------------------------------------

class _Digesting:
    """A write-only stream that hashes and counts what passes through to `out`."""

    def __init__(self, out) -> None:
        self.out, self.sha, self.size = out, hashlib.sha256(), 0

    def write(self, b) -> int:
        self.sha.update(b)
        self.size += len(b)
        self.out.write(b)
        return len(b)

    def tell(self) -> int:
        return self.size

    def flush(self) -> None:
        pass


def _parents(layer: Layer) -> Layer:
    """Every folder above an entry that the layer does not list itself (root-owned, 0755)."""
    full = dict(layer)
    for path in layer:
        parent = os.path.dirname(path)
        while parent and parent not in full:
            full[parent] = folder()
            parent = os.path.dirname(parent)
    return full


def write_layer(layer: Layer, blobs: Path) -> tuple[str, str, int]:
    """The layer as a gzip'd tar blob in `blobs`: (digest, diff_id, size)."""
    tmp = blobs / f".layer-{os.getpid()}-{id(layer)}"
    with open(tmp, "wb") as f:
        compressed = _Digesting(f)
        gz = gzip.GzipFile(fileobj=compressed, mode="wb", mtime=0, compresslevel=6)
        raw = _Digesting(gz)
        with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for path, entry in sorted(_parents(layer).items()):
                info = tarfile.TarInfo(path)
                info.mode, info.uid, info.gid, info.mtime = entry.mode, entry.uid, entry.gid, 0
                info.uname = info.gname = ""
                if entry.xattrs:
                    info.pax_headers = {f"SCHILY.xattr.{k}": v.decode("utf-8", "surrogateescape")
                                        for k, v in entry.xattrs}
                if entry.kind == "dir":
                    info.type = tarfile.DIRTYPE
                    tar.addfile(info)
                elif entry.kind == "link":
                    info.type, info.linkname = tarfile.SYMTYPE, entry.target
                    tar.addfile(info)
                else:
                    src = entry.source
                    stream = open(src, "rb") if isinstance(src, Path) else io.BytesIO(src)
                    with stream:
                        info.size = os.fstat(stream.fileno()).st_size if isinstance(src, Path) else len(src)
                        tar.addfile(info, stream)
        gz.close()
    digest = "sha256:" + compressed.sha.hexdigest()
    os.replace(tmp, blobs / digest.split(":")[1])
    return digest, "sha256:" + raw.sha.hexdigest(), compressed.size


def _blob(blobs: Path, content: bytes) -> tuple[str, int]:
    digest = hashlib.sha256(content).hexdigest()
    (blobs / digest).write_bytes(content)
    return "sha256:" + digest, len(content)


def _json(obj) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


@dataclass
class Built:
    """An image as an OCI layout on disk."""
    name: str
    tag: str
    layout: Path
    digest: str  # the manifest's digest (what the registry serves it as)
    size: int  # compressed bytes of its layers and config


def write_layout(image: Image, dest: Path) -> Built:
    """`image` as an OCI image layout at `dest` (index.json written last: its presence means complete)."""
    shutil.rmtree(dest, ignore_errors=True)
    blobs = dest / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    layers = [write_layer(layer, blobs) for layer in image.layers]
    config = {"architecture": "amd64", "os": "linux", "created": EPOCH, "config": image.config(),
              "rootfs": {"type": "layers", "diff_ids": [diff_id for _, diff_id, _ in layers]},
              "history": [{"created": EPOCH, "created_by": f"bmctl.lab.images: {image.name} layer {i}"}
                          for i in range(len(layers))]}
    config_digest, config_size = _blob(blobs, _json(config))
    manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest,
                           "size": config_size},
                "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": d, "size": s}
                           for d, _, s in layers]}
    digest, size = _blob(blobs, _json(manifest))
    (dest / "oci-layout").write_bytes(_json({"imageLayoutVersion": "1.0.0"}))
    index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
             "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": digest, "size": size,
                            "annotations": {"org.opencontainers.image.ref.name": image.tag}}]}
    (dest / "index.json").write_bytes(_json(index))
    return Built(image.name, image.tag, dest, digest, config_size + sum(s for _, _, s in layers))


def read_layout(name: str, tag: str, dest: Path) -> Built:
    index = json.loads((dest / "index.json").read_text())
    desc = index["manifests"][0]
    blobs = dest / "blobs" / "sha256"
    manifest = json.loads((blobs / desc["digest"].split(":")[1]).read_text())
    size = manifest["config"]["size"] + sum(layer["size"] for layer in manifest["layers"])
    return Built(name, tag, dest, desc["digest"], size)


def build_all(say=_print) -> dict[str, Built]:
    """Every image, from the cache when its content is unchanged; name -> Built."""
    from bmctl.lab.binaries import build_lock
    with build_lock():
        return _build_all(say)


def _build_all(say) -> dict[str, Built]:
    start = time.monotonic()
    deb = Debian(cache_dir(), say)
    todo, built = [], {}
    for image in specs(deb):
        dest = cache_dir() / image.name / image.key()
        if (dest / "index.json").exists():
            built[image.name] = read_layout(image.name, image.tag, dest)
        else:
            todo.append((image, dest))

    def one(item) -> Built:
        image, dest = item
        t = time.monotonic()
        result = write_layout(image, dest)
        for old in dest.parent.iterdir():  # earlier builds of this image
            if old != dest:
                shutil.rmtree(old, ignore_errors=True)
        say(f"  image {image.name}:{image.tag} {result.size / 2**20:.1f} MiB in {time.monotonic() - t:.1f}s")
        return result

    if todo:
        say(f"building {len(todo)} image(s): {', '.join(i.name for i, _ in todo)} (cache {cache_dir()})")
        with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:  # gzip releases the GIL
            for result in pool.map(one, todo):
                built[result.name] = result
        say(f"built {len(todo)} image(s) in {time.monotonic() - start:.1f}s")
    return {name: built[name] for name in IMAGE_NAMES}


def listing() -> list[tuple[Image, Path, bool]]:
    """(image, its layout folder, whether it is built) for every image, building nothing."""
    return [(i, cache_dir() / i.name / i.key(), (cache_dir() / i.name / i.key() / "index.json").exists())
            for i in specs(Debian(cache_dir()))]


def main(argv: list[str]) -> int:
    if "--list" in argv:
        for image, layout, ok in listing():
            built = read_layout(image.name, image.tag, layout) if ok else None
            size = f"{built.size / 2**20:7.1f} MiB  {built.digest}" if built else "missing"
            print(f"{image.name + ':' + image.tag:40} {size}")
        return 0
    start = time.monotonic()
    result = build_all()
    total = sum(b.size for b in result.values())
    print(f"images: {len(result)} ready ({total / 2**20:.0f} MiB compressed) in {time.monotonic() - start:.1f}s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
