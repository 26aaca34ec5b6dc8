"""The lab's kubelet stand-in: runs the static pods of one lab node as processes.

Real kubelets and container images cannot run in the lab, so this thin runner does the part of a
kubelet's job that bmctl relies on, for the manifests in /etc/kubernetes/manifests:
- each container's `command` + `args` run as a process in the node's network namespace;
- each hostPath volumeMount is bind-mounted at its mountPath in a private mount namespace of that
  container (a wrong path in a manifest therefore breaks the container, as on a real node), and the
  container gets a private /run;
- a hostPath of type DirectoryOrCreate is created;
- a container whose main process exits loses its other processes (as a container does) and is
  restarted after a second (restartPolicy Always); a changed manifest
  restarts its pod; a removed manifest stops it.
Nothing else of a kubelet (images, probes, status) is emulated. It is lab-only: bmctl never knows.
"""
from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

MANIFESTS = Path("/etc/kubernetes/manifests")
# Ancestors that must never be shadowed by a tmpfs to create a missing mountPath.
_PROTECTED = {"/", "/usr", "/etc", "/var", "/bin", "/sbin", "/lib", "/lib64", "/usr/bin", "/usr/sbin",
              "/usr/lib", "/usr/local", "/opt", "/home", "/root", "/tmp", "/proc", "/sys", "/dev"}

# Positional args: pairs of (source, target, shadow) then "--" then the command.
_CONTAINER_SH = r'''
set -e
while [ "$1" != "--" ]; do
  src=$1; dst=$2; shadow=$3; ro=$4; shift 4
  if [ ! -e "$dst" ]; then
    if [ "$shadow" != "-" ]; then mount -t tmpfs -o mode=0755 bmctl-lab "$shadow"; fi
    mkdir -p "$dst"
  fi
  mount --bind "$src" "$dst"
  if [ "$ro" = "ro" ]; then mount -o remount,bind,ro "$dst"; fi
done
shift
mount -t tmpfs -o mode=0755 bmctl-lab-run /run
exec "$@"
'''


def _shadow_for(target: str) -> str:
    """The existing ancestor to cover with a tmpfs so a missing mountPath can be made, or '-'."""
    path = Path(target)
    if path.exists():
        return "-"
    parent = path.parent
    while not parent.exists():
        parent = parent.parent
    if str(parent) in _PROTECTED:
        raise ValueError(f"mountPath {target} does not exist and {parent} cannot be shadowed")
    return str(parent)


@dataclass
class Container:
    pod: str
    name: str
    argv: list[str]
    mounts: list[tuple[str, str, bool]]
    digest: str
    proc: subprocess.Popen | None = None
    restarts: int = 0
    next_start: float = 0.0
    env: dict = field(default_factory=dict)

    @property
    def key(self) -> str:
        return f"{self.pod}_{self.name}"


def parse_manifest(path: Path) -> list[Container]:
    text = path.read_text()
    digest = hashlib.sha256(text.encode()).hexdigest()
    pod = yaml.safe_load(text)
    name = pod["metadata"]["name"]
    volumes = {v["name"]: v for v in pod["spec"].get("volumes", [])}
    out = []
    for c in pod["spec"]["containers"]:
        argv = [*c.get("command", []), *c.get("args", [])]
        mounts = []
        for m in c.get("volumeMounts", []):
            vol = volumes[m["name"]]
            if "hostPath" not in vol:
                continue
            if vol["hostPath"].get("type") == "DirectoryOrCreate":
                os.makedirs(vol["hostPath"]["path"], mode=0o755, exist_ok=True)
            mounts.append((vol["hostPath"]["path"], m["mountPath"], bool(m.get("readOnly"))))
        out.append(Container(name, c["name"], argv, mounts, digest))
    return out


class Runner:
    def __init__(self, state_dir: Path, manifests: Path = MANIFESTS, poll: float = 0.3) -> None:
        self.state_dir = state_dir
        self.manifests = manifests
        self.poll = poll
        self.containers: dict[str, Container] = {}
        self.cluster_containers: dict[str, Container] = {}  # set by the cluster agent (workloads.py)
        self.stopping = threading.Event()
        (state_dir / "pods").mkdir(parents=True, exist_ok=True)

    def _start(self, c: Container) -> None:
        argv = ["unshare", "--mount", "--propagation", "private", "sh", "-c", _CONTAINER_SH, "sh"]
        try:
            for src, dst, ro in c.mounts:
                argv += [src, dst, _shadow_for(dst), "ro" if ro else "rw"]
        except ValueError as exc:
            self._note(c, f"cannot start: {exc}")
            c.next_start = time.monotonic() + 5
            return
        argv += ["--", *c.argv]
        log = open(self.state_dir / "pods" / f"{c.key}.log", "ab")
        env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", **c.env}
        c.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                  start_new_session=True, env=env)
        log.close()
        (self.state_dir / "pods" / f"{c.key}.pid").write_text(f"{c.proc.pid}\n")
        self._note(c, f"started pid {c.proc.pid}: {' '.join(c.argv)}")

    def _note(self, c: Container, text: str) -> None:
        with open(self.state_dir / "pods" / f"{c.key}.log", "a") as fh:
            fh.write(f"--- kubelet stand-in {time.strftime('%H:%M:%S')}: {text}\n")

    def _stop(self, c: Container) -> None:
        if c.proc is not None and c.proc.poll() is None:
            try:
                os.killpg(c.proc.pid, signal.SIGTERM)
                c.proc.wait(timeout=5)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                try:
                    os.killpg(c.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                c.proc.wait()
        c.proc = None
        (self.state_dir / "pods" / f"{c.key}.pid").unlink(missing_ok=True)

    def sync_once(self) -> None:
        wanted: dict[str, Container] = {}
        if self.manifests.is_dir():
            for path in sorted(self.manifests.iterdir()):
                if path.name.startswith(".") or not path.is_file():
                    continue
                try:
                    for c in parse_manifest(path):
                        wanted[c.key] = c
                except Exception:  # noqa: BLE001 - a kubelet skips manifests it cannot read
                    continue
        wanted.update(self.cluster_containers)
        for key, c in list(self.containers.items()):
            if key not in wanted or wanted[key].digest != c.digest:
                self._note(c, "manifest removed" if key not in wanted else "manifest changed: restarting")
                self._stop(c)
                del self.containers[key]
        now = time.monotonic()
        for key, c in wanted.items():
            current = self.containers.setdefault(key, c)
            if current.proc is None:
                if now >= current.next_start:
                    self._start(current)
            elif current.proc.poll() is not None:
                # as in a container, the other processes die with the main one
                try:
                    os.killpg(current.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self._note(current, f"exited with {current.proc.returncode}; restarting in 1 s")
                current.proc = None
                current.restarts += 1
                current.next_start = now + 1.0

    def run(self) -> None:
        while not self.stopping.is_set():
            self.sync_once()
            self.stopping.wait(self.poll)
        for c in self.containers.values():
            self._stop(c)
