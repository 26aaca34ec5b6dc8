"""A lab node's unit supervisor: the one stand-in left on a lab node, doing systemd's job.

LAB ONLY. A lab node is a network + mount namespace, not a machine: it has no systemd. What a real
node's systemd does for the node software, this does, no more:
- reads unit files and drop-ins from /etc/systemd/system and /lib/systemd/system (`[Service]`
  Environment=, EnvironmentFile=, ExecStartPre=, ExecStart=, Restart=, RestartSec=, KillMode=), with
  systemd's `$VAR` / `${VAR}` expansion, so kubeadm's `10-kubeadm.conf` drop-in,
  `/var/lib/kubelet/kubeadm-flags.env` and `/etc/default/kubelet` work as on a real node;
- starts the units enabled in multi-user.target.wants at boot, restarts them per Restart=;
- puts each unit in a cgroup of its own under the node's cgroup (as systemd's system.slice does), so
  stopping a unit stops what it started (KillMode=process: the main process only, as containerd's
  unit says, so containers outlive a containerd restart);
- answers the `systemctl` commands that kubeadm and bmctl send (start, stop, restart, enable
  [--now], disable, is-active, is-enabled, status, daemon-reload, show) on a Unix socket, through
  the lab's `systemctl` shim (bmctl/lab/systemctl.py).
What it does not model: dependencies and ordering between units (After=, Requires=), timers,
sockets, journald (each unit logs to a file in the node's state folder), resource controls.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

UNIT_DIRS = (Path("/etc/systemd/system"), Path("/lib/systemd/system"), Path("/usr/lib/systemd/system"))
WANTS = Path("/etc/systemd/system/multi-user.target.wants")
SOCKET = "/run/bmctl-lab/systemd.sock"
STOP_TIMEOUT = 10.0


@dataclass
class Unit:
    name: str
    exec_start: list[str] = field(default_factory=list)
    exec_start_pre: list[str] = field(default_factory=list)
    environment: dict[str, str] = field(default_factory=dict)
    environment_files: list[str] = field(default_factory=list)
    restart: str = "no"
    restart_sec: float = 0.1
    kill_mode: str = "control-group"
    loaded: bool = False


def _assignments(value: str) -> dict[str, str]:
    """Environment="A=1" "B=2 3" -> {A: 1, B: 2 3}."""
    env = {}
    for word in shlex.split(value):
        if "=" in word:
            k, v = word.split("=", 1)
            env[k] = v
    return env


def load_unit(name: str) -> Unit:
    """The unit as systemd would load it: the first unit file found, then every drop-in in
    filename order (a later one overrides; an empty ExecStart= resets the list)."""
    unit = Unit(name)
    main = next((d / f"{name}.service" for d in UNIT_DIRS if (d / f"{name}.service").is_file()), None)
    if main is None:
        return unit
    unit.loaded = True
    dropins = {}
    for d in reversed(UNIT_DIRS):  # /etc wins over /lib for a drop-in of the same name
        folder = d / f"{name}.service.d"
        if folder.is_dir():
            dropins.update({p.name: p for p in folder.glob("*.conf")})
    for path in [main, *(dropins[k] for k in sorted(dropins))]:
        section = ""
        for raw in _logical_lines(path.read_text()):
            line = raw.strip()
            if not line or line[0] in "#;":
                continue
            if line.startswith("["):
                section = line.strip("[]")
                continue
            if section != "Service" or "=" not in line:
                continue
            key, value = (s.strip() for s in line.split("=", 1))
            if key == "ExecStart":
                unit.exec_start = [value] if value else []
            elif key == "ExecStartPre":
                unit.exec_start_pre = [*unit.exec_start_pre, value] if value else []
            elif key == "Environment":
                unit.environment.update(_assignments(value))
            elif key == "EnvironmentFile":
                unit.environment_files.append(value)
            elif key == "Restart":
                unit.restart = value
            elif key == "RestartSec":
                unit.restart_sec = float(value.rstrip("s") or 0)
            elif key == "KillMode":
                unit.kill_mode = value
    return unit


def _logical_lines(text: str) -> list[str]:
    return text.replace("\\\n", " ").splitlines()


def read_env_file(path: str) -> dict[str, str]:
    env = {}
    for line in Path(path).read_text().splitlines():
        line = line.strip()
        if not line or line[0] in "#;" or "=" not in line:
            continue
        k, v = line.split("=", 1)
        v = v.strip()
        if len(v) >= 2 and v[0] == v[-1] and v[0] in "\"'":
            v = v[1:-1]
        env[k.strip()] = v
    return env


def expand(command: str, env: dict[str, str]) -> list[str]:
    """systemd's rules: `${VAR}` is replaced as is inside a word; a word that is exactly `$VAR`
    is split at whitespace into words (an empty one disappears)."""
    argv = []
    for word in shlex.split(command):
        m = re.fullmatch(r"\$(\w+)", word)
        if m:
            argv.extend(env.get(m.group(1), "").split())
            continue
        argv.append(re.sub(r"\$\{(\w+)\}", lambda mm: env.get(mm.group(1), ""), word))
    return argv


class Supervisor:
    """Runs the node's units. `cgroup` is the node's cgroup path (e.g. /bmctl-lab-ab12cd/n1);
    `logs` its state folder, where each unit logs to UNIT.log."""

    def __init__(self, cgroup: str, logs: Path) -> None:
        self.cgroup = cgroup
        self.logs = logs
        self.lock = threading.RLock()
        self.procs: dict[str, subprocess.Popen] = {}
        self.wanted: set[str] = set()  # units that should run (started, not stopped)
        self.failed: set[str] = set()
        self.stopping = threading.Event()

    # -- cgroups ------------------------------------------------------------------------------
    def unit_cgroup(self, name: str) -> str:
        return f"{self.cgroup}/system.slice/{name}.service"

    def _place(self, pid: int, path: str) -> None:
        for hierarchy in cgroup_hierarchies():
            folder = Path(hierarchy) / path.lstrip("/")
            _mkcg(hierarchy, path)
            try:
                (folder / "cgroup.procs").write_text(str(pid))
            except OSError:
                pass

    # -- units --------------------------------------------------------------------------------
    def start(self, name: str) -> str | None:
        with self.lock:
            self.wanted.add(name)
            self.failed.discard(name)
            proc = self.procs.get(name)
            if proc is not None and proc.poll() is None:
                return None
            unit = load_unit(name)
            if not unit.loaded:
                self.wanted.discard(name)
                return f"Unit {name}.service not found."
            if not unit.exec_start:
                return f"Unit {name}.service has no ExecStart."
            env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8",
                   **unit.environment}
            for ef in unit.environment_files:
                optional = ef.startswith("-")
                path = ef.lstrip("-")
                if os.path.exists(path):
                    env.update(read_env_file(path))
                elif not optional:
                    self.failed.add(name)
                    return f"{name}.service: EnvironmentFile {path} is missing."
            log = open(self.logs / f"{name}.log", "ab")
            for pre in unit.exec_start_pre:
                ignore = pre.startswith("-")
                try:
                    rc = subprocess.run(expand(pre.lstrip("-"), env), env=env, stdout=log, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL).returncode
                except OSError:
                    rc = 203  # systemd's EXIT_EXEC
                if rc != 0 and not ignore:
                    self.failed.add(name)
                    return f"{name}.service: ExecStartPre failed ({rc})."
            argv = expand(unit.exec_start[-1].lstrip("-@"), env)
            log.write(f"-- bmctl lab supervisor: starting {name}: {shlex.join(argv)}\n".encode())
            log.flush()
            cg = self.unit_cgroup(name)
            try:
                proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, cwd="/", start_new_session=True)
            except OSError as exc:
                self.failed.add(name)
                self.wanted.discard(name)
                return f"{name}.service: cannot run {argv[0]}: {exc.strerror}."
            self._place(proc.pid, cg)
            self.procs[name] = proc
            return None

    def stop(self, name: str) -> None:
        with self.lock:
            self.wanted.discard(name)
            proc = self.procs.pop(name, None)
            unit = load_unit(name)
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if unit.kill_mode != "process":
            kill_cgroup(self.unit_cgroup(name))

    def restart(self, name: str) -> str | None:
        self.stop(name)
        return self.start(name)

    def is_active(self, name: str) -> str:
        with self.lock:
            proc = self.procs.get(name)
            if proc is not None and proc.poll() is None:
                return "active"
            if name in self.wanted:
                return "activating"  # waiting to be restarted
            return "failed" if name in self.failed else "inactive"

    @staticmethod
    def is_enabled(name: str) -> bool:
        return (WANTS / f"{name}.service").exists()

    @staticmethod
    def enable(name: str) -> str | None:
        unit = next((d / f"{name}.service" for d in UNIT_DIRS if (d / f"{name}.service").is_file()), None)
        if unit is None:
            return f"Unit {name}.service not found."
        WANTS.mkdir(parents=True, exist_ok=True)
        link = WANTS / f"{name}.service"
        if not link.exists():
            link.symlink_to(unit)
        return None

    @staticmethod
    def disable(name: str) -> None:
        (WANTS / f"{name}.service").unlink(missing_ok=True)

    # -- the loop -----------------------------------------------------------------------------
    def boot(self) -> None:
        if WANTS.is_dir():
            for link in sorted(WANTS.glob("*.service")):
                self.start(link.name[: -len(".service")])

    def run(self) -> None:
        """Restart units that exited, per their Restart= (always / on-failure), after RestartSec."""
        exited: dict[str, float] = {}
        while not self.stopping.wait(0.2):
            with self.lock:
                for name, proc in list(self.procs.items()):
                    rc = proc.poll()
                    if rc is None:
                        exited.pop(name, None)
                        continue
                    unit = load_unit(name)
                    again = unit.restart == "always" or (unit.restart == "on-failure" and rc != 0)
                    if not again or name not in self.wanted:
                        self.procs.pop(name)
                        self.wanted.discard(name)
                        if rc != 0:
                            self.failed.add(name)
                        continue
                    first = exited.setdefault(name, time.monotonic())
                    if time.monotonic() - first >= unit.restart_sec:
                        exited.pop(name)
                        self.procs.pop(name)
                        if unit.kill_mode != "process":
                            kill_cgroup(self.unit_cgroup(name))
                        self.start(name)

    def shutdown(self) -> None:
        self.stopping.set()
        for name in list(self.procs):
            self.stop(name)

    # -- systemctl ----------------------------------------------------------------------------
    def command(self, argv: list[str]) -> tuple[int, str]:
        args = [a for a in argv if not a.startswith("-")]
        now = "--now" in argv
        quiet = "-q" in argv or "--quiet" in argv
        if not args:
            return 1, "systemctl (bmctl lab): a command is needed\n"
        verb, names = args[0], [n[: -len(".service")] if n.endswith(".service") else n for n in args[1:]]
        if verb in ("daemon-reload", "reset-failed"):
            return 0, ""
        out, rc = [], 0
        for name in names:
            if verb == "start":
                err = self.start(name)
            elif verb == "stop":
                self.stop(name)
                err = None
            elif verb in ("restart", "try-restart", "reload-or-restart"):
                err = self.restart(name) if verb != "try-restart" or self.is_active(name) == "active" else None
            elif verb == "enable":
                err = self.enable(name) or (self.start(name) if now else None)
            elif verb == "disable":
                self.disable(name)
                if now:
                    self.stop(name)
                err = None
            elif verb == "is-active":
                state = self.is_active(name)
                if not quiet:
                    out.append(state)
                rc = rc or (0 if state in ("active", "activating") else 3)
                continue
            elif verb == "is-enabled":
                enabled = self.is_enabled(name)
                if not quiet:
                    out.append("enabled" if enabled else ("disabled" if load_unit(name).loaded else "not-found"))
                rc = rc or (0 if enabled else 1)
                continue
            elif verb == "status":
                unit = load_unit(name)
                state = self.is_active(name)
                out.append(f"* {name}.service\n     Loaded: {'loaded' if unit.loaded else 'not-found'}\n"
                           f"     Active: {state}")
                rc = rc or (0 if state == "active" else (4 if not unit.loaded else 3))
                continue
            elif verb == "show":
                out.append(f"ActiveState={self.is_active(name)}\nLoadState="
                           f"{'loaded' if load_unit(name).loaded else 'not-found'}")
                continue
            else:
                return 1, f"systemctl (bmctl lab): unknown command {verb}\n"
            if err:
                out.append(err)
                rc = 5 if "not found" in err else 1
        return rc, "".join(f"{line}\n" for line in out)

    def serve(self) -> None:
        Path(SOCKET).parent.mkdir(parents=True, exist_ok=True)
        try:
            os.unlink(SOCKET)
        except FileNotFoundError:
            pass
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        server.bind(SOCKET)
        os.chmod(SOCKET, 0o600)
        server.listen(16)
        server.settimeout(0.5)
        while not self.stopping.is_set():
            try:
                conn, _ = server.accept()
            except socket.timeout:
                continue
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()
        server.close()

    def _answer(self, conn: socket.socket) -> None:
        with conn:
            try:
                rc, text = self.command(read_message(conn))
            except Exception as exc:  # the shim prints it; the supervisor keeps running
                rc, text = 1, f"systemctl (bmctl lab): {exc}\n"
            conn.sendall(json.dumps({"rc": rc, "out": text}).encode() + b"\n")


def read_message(sock: socket.socket):
    """One JSON message, newline-terminated (the shim's request, the supervisor's answer)."""
    data = b""
    while not data.endswith(b"\n"):
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return json.loads(data)


# -- cgroup helpers (v1 hierarchies as mounted in the node; also the unified one) ---------------
def cgroup_hierarchies() -> list[str]:
    mounts = []
    for line in Path("/proc/self/mounts").read_text().splitlines():
        parts = line.split()
        if parts[2] in ("cgroup", "cgroup2") and parts[1].startswith("/sys/fs/cgroup/"):
            mounts.append(parts[1])
    return mounts


def _mkcg(hierarchy: str, path: str) -> None:
    """Create the cgroup path; in cpuset, each new level copies cpus and mems from its parent."""
    folder = Path(hierarchy)
    for part in path.strip("/").split("/"):
        parent, folder = folder, folder / part
        if not folder.is_dir():
            folder.mkdir(exist_ok=True)
            if (folder / "cpuset.cpus").exists():
                for f in ("cpuset.cpus", "cpuset.mems"):
                    (folder / f).write_text((parent / f).read_text())


def cgroup_pids(path: str) -> set[int]:
    pids: set[int] = set()
    for hierarchy in cgroup_hierarchies():
        root = Path(hierarchy) / path.lstrip("/")
        if not root.is_dir():
            continue
        for procs in root.rglob("cgroup.procs"):
            try:
                pids.update(int(p) for p in procs.read_text().split())
            except OSError:
                pass
        break  # every process is in every hierarchy: one is enough
    return pids


def kill_cgroup(path: str, timeout: float = STOP_TIMEOUT) -> None:
    """SIGTERM every process of the cgroup subtree, then SIGKILL what is left (timeout 0: SIGKILL
    at once, as a power cut)."""
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)) if timeout else ((signal.SIGKILL, 5.0),):
        pids = cgroup_pids(path) - {os.getpid()}
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and cgroup_pids(path) - {os.getpid()}:
            time.sleep(0.1)


def remove_cgroup(path: str) -> None:
    """rmdir the cgroup subtree in every hierarchy, deepest first (only empty cgroups go)."""
    for hierarchy in cgroup_hierarchies():
        root = Path(hierarchy) / path.lstrip("/")
        if not root.is_dir():
            continue
        for folder in sorted((p for p in root.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
            try:
                folder.rmdir()
            except OSError:
                pass
        try:
            root.rmdir()
        except OSError:
            pass
