"""`bmctl lab up|down|status`: a one-host stand-in for a rack of machines.

One network namespace per node on one bridge (the bridge in a namespace of its own), a real sshd
per node with private /etc/kubernetes, /etc/keepalived, /etc/haproxy (and the other folders bmctl
writes), a client namespace, documentation-range addresses only and no route out. Optionally the
host itself gets an address on the bridge (a route to the lab subnet only), so that bmctl, kubectl
and curl run from the host as from an admin workstation. With a router (`router=True`, `bmctl lab
up --router`), a BGP router (FRR, bmctl/lab/router.py) stands between the bridge and the client,
and the cluster's Services are advertised to it (the layout: bmctl/lab/net.py).
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import netaddr
import yaml

from bmctl.errors import BmctlError
from bmctl.lab.net import MAX_NODES, LabNet, fence, needed, pick

# Folders bmctl writes on a node; each lab node gets a private copy (bind mount).
NODE_DIRS = ["/etc/kubernetes", "/etc/keepalived", "/etc/haproxy", "/etc/bmctl", "/etc/sysctl.d", "/etc/modules-load.d",
             "/var/backups/bmctl", "/var/lib/bmctl", "/var/lib/etcd"]
STOCK_BASHRC = "# ~/.bashrc: executed by bash(1) for non-login shells (a lab node's: nothing to run).\n"
# Login users every lab node has besides root (its own /etc/passwd, group, shadow, sudoers.d and
# /home): name -> whether it has passwordless sudo. Both log in with the lab's key.
SUDO_USER = "bmctl-ops"
PLAIN_USER = "bmctl-plain"
LAB_USERS = {SUDO_USER: True, PLAIN_USER: False}
TOOLS = ["ip", "unshare", "mount", "ssh-keygen", "keepalived", "haproxy", "curl", "nsenter"]
# Real nodes: what the lab's bundle takes from this machine's Debian packages (containerd, runc; the
# CNI plugins too), and what kubeadm's preflight looks for on a node (conntrack, iptables); the rest
# of the node software is built with Go (bmctl/lab/binaries.py).
REAL_NODE_TOOLS = ["containerd", "runc", "conntrack", "iptables"]


def _no_hash(shadow_line: str) -> str:
    """A shadow entry without its password hash: `*` (no password), `!*` if it was locked."""
    fields = shadow_line.split(":")
    if len(fields) > 1:
        fields[1] = "!*" if fields[1].startswith("!") else "*"
    return ":".join(fields)


def sh(*argv: str, check: bool = True, capture: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(list(argv), capture_output=capture, text=True)
    if check and proc.returncode != 0:
        raise BmctlError(f"`{' '.join(argv)}` failed: {(proc.stderr or proc.stdout).strip()}")
    return proc


def host_cgroup_v1() -> bool:
    """This machine mounts cgroup v1 (a tmpfs of controllers at /sys/fs/cgroup, not cgroup2fs)."""
    return os.path.isdir("/sys/fs/cgroup") and not os.path.exists("/sys/fs/cgroup/cgroup.controllers")


@dataclass
class LabNode:
    name: str
    address: str
    role: str
    netns: str


class Lab:
    """A lab whose state (keys, per-node folders, pids) lives in `state_dir`."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = Path(state_dir).resolve()
        self.state_file = self.state_dir / "lab.json"

    # -- state --------------------------------------------------------------------------------
    def load(self) -> dict:
        if not self.state_file.exists():
            raise BmctlError(f"no lab at {self.state_dir}.", "start one with `bmctl lab up`.")
        return json.loads(self.state_file.read_text())

    def save(self, state: dict) -> None:
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2))
        os.replace(tmp, self.state_file)
        _write_record(state, self.state_dir)

    @property
    def exists(self) -> bool:
        return self.state_file.exists()

    # -- up -----------------------------------------------------------------------------------
    @staticmethod
    def check_prerequisites(real_nodes: bool = False, router: bool = False) -> None:
        if os.geteuid() != 0:
            raise BmctlError("the lab needs root (it creates network namespaces and mounts).",
                             "run `sudo bmctl lab up`.")
        sbin = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
        missing = [t for t in TOOLS + (REAL_NODE_TOOLS if real_nodes else []) if shutil.which(t, path=sbin) is None]
        if not os.path.exists("/usr/sbin/sshd"):
            missing.append("sshd")
        if real_nodes and not os.path.exists("/usr/lib/cni/bridge"):  # the lab bundle's CNI plugins
            missing.append("containernetworking-plugins")
        if router:
            from bmctl.lab import router as lab_router
            lack = lab_router.missing()
            if lack:
                raise BmctlError(f"the lab's router (--router) needs FRR: {', '.join(lack)} missing.",
                                 "install Debian's frr package: apt-get install frr")
        if missing:
            raise BmctlError(f"the lab needs {', '.join(missing)}.",
                             "install them: apt-get install keepalived haproxy openssh-server iproute2 curl util-linux "
                             "containerd runc containernetworking-plugins conntrack iptables (and Go for the builds)")

    def up(self, control_planes: int = 3, lb_nodes: int = 2, workers: int = 1, host_address: bool = True,
           config_path: Path | None = None, cluster: str = "lab", subnet: str | None = None,
           real_nodes: bool = True, say=None, router: bool = False) -> dict:
        """`real_nodes`: every node runs a real containerd and kubelet (with kubeadm and crictl) under
        the lab's unit supervisor, pulling images from a registry in the lab (built here first, with
        progress through `say`); otherwise bare nodes run sshd alone (for benchmarks that only write
        files). `router`: a BGP router (FRR) between the bridge and the client, the node subnet a
        /25, and lab.yaml with BGP load balancing (see bmctl/lab/net.py and bmctl/lab/router.py)."""
        self.check_prerequisites(real_nodes, router)
        if self.exists:
            raise BmctlError(f"a lab already exists at {self.state_dir}.", "run `bmctl lab down` first.")
        total = control_planes + lb_nodes + workers
        if control_planes < 1 or total > MAX_NODES:
            raise BmctlError(f"a lab has 1 to {MAX_NODES} nodes with at least one control-plane node.")
        keep = needed()  # this machine's DNS servers, proxies and package hosts: never fenced
        net = pick(subnet, routed=router, keep=keep)
        held = [a for a in keep if netaddr.IPAddress(a) in netaddr.IPNetwork(net.segment)]
        if host_address and held:
            raise BmctlError(f"the lab's node segment {net.segment} holds {', '.join(held)}, which this machine uses "
                             f"({'; '.join(keep[a] for a in held)}); with this machine on the lab's bridge, that "
                             "address would be reached on the bridge instead.",
                             "run `bmctl lab up --no-host-address`, or choose another range with --subnet.")
        self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        lab_id = uuid.uuid4().hex[:6]
        prefix = f"bl{lab_id}"
        state = {"id": lab_id, "owner": _process_id(os.getpid()), "bridge_ns": f"{prefix}-br", "client_ns": f"{prefix}-client", "nodes": [],
                 "pids": {}, "host_veth": None, "config": None, "cluster": cluster,
                 "net": net.to_dict(), "real_nodes": real_nodes, "kept": keep,
                 "router": ({"ns": f"{prefix}-router", "dir": str(self.state_dir / "frr"), "pids": {}}
                            if router else None)}
        self.save(state)  # from here on, `down` can undo whatever was made
        try:
            self._keys(state)
            self._network(state, control_planes, lb_nodes, workers, host_address)
            if router:
                from bmctl.lab import router as lab_router
                try:
                    lab_router.create(state, net)
                finally:
                    self.save(state)
            if real_nodes:
                self._registry(state, say or (lambda msg: None))
            self._start_nodes(state)
            state["config"] = str(self._write_config(state, config_path))
        except BaseException:
            self.save(state)
            self.down()
            raise
        self.save(state)
        return state

    def _keys(self, state: dict) -> None:
        key = self.state_dir / "id_ed25519"
        sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"bmctl-lab-{state['id']}", "-f", str(key))
        shutil.copy(f"{key}.pub", self.state_dir / "authorized_keys")
        os.chmod(self.state_dir / "authorized_keys", 0o600)

    @staticmethod
    def net_of(state: dict) -> LabNet:
        return LabNet(**state["net"])

    @property
    def net(self) -> LabNet:
        return self.net_of(self.load())

    def _network(self, state: dict, cps: int, lbs: int, workers: int, host_address: bool) -> None:
        br = state["bridge_ns"]
        net = self.net_of(state)
        sh("ip", "netns", "add", br)
        sh("ip", "-n", br, "link", "add", "br0", "type", "bridge")
        sh("ip", "-n", br, "link", "set", "br0", "type", "bridge", "mcast_snooping", "0")
        sh("ip", "-n", br, "link", "set", "br0", "up")
        roles = ["control-plane"] * cps + ["load-balancer"] * lbs + ["worker"] * workers
        for i, role in enumerate(roles):
            name = f"n{i + 1}"
            node = LabNode(name, net.node_ip(i), role, f"bl{state['id']}-{name}")
            state["nodes"].append(node.__dict__)
            self.save(state)
            self._attach(br, node.netns, name, node.address, net.prefix)
            for dst, via in self._routes(state):  # with a router: the half of the segment behind it
                sh("ip", "-n", node.netns, "route", "add", dst, "via", via)
        if net.routed:
            self._router_links(state, net)
        else:
            self._attach(br, state["client_ns"], "client", net.client_ip, net.prefix)
        # This machine reaches the lab only through its own address on the bridge, if it has one:
        # every other lab address is unreachable from here, so that a command run outside the lab's
        # namespaces fails at once instead of sending lab traffic out of this machine's default route.
        # The addresses this machine itself uses (state["kept"]: DNS servers, proxies, package hosts)
        # stay out of the fence, so they are reached as before.
        state["host_fences"] = []
        for cidr in [net.pods] + ([] if host_address else [net.segment]):
            for piece in fence(cidr, state.get("kept") or {}):
                if sh("ip", "route", "add", "unreachable", piece, check=False).returncode == 0:
                    state["host_fences"].append(piece)
        self.save(state)
        if host_address:
            state["host_veth"] = f"bl{state['id']}"
            self.save(state)
            sh("ip", "link", "add", state["host_veth"], "type", "veth", "peer", "name", "host", "netns", br)
            sh("ip", "-n", br, "link", "set", "host", "master", "br0", "up")
            sh("ip", "addr", "add", f"{net.host_ip}/{net.prefix}", "dev", state["host_veth"])
            sh("ip", "link", "set", state["host_veth"], "up")
            if net.routed:  # like a workstation in another rack: Service IPs and the client via the router
                sh("ip", "route", "add", net.routed_cidr, "via", net.router_ip, "dev", state["host_veth"])

    def _router_links(self, state: dict, net: LabNet) -> None:
        """The router's namespace: eth0 on the bridge (router_ip), client0 to the client namespace,
        whose one interface (eth0) has a default route via the router and nothing else."""
        rns, client = state["router"]["ns"], state["client_ns"]
        self._attach(state["bridge_ns"], rns, "router", net.router_ip, net.prefix)
        sh("ip", "netns", "add", client)
        sh("ip", "link", "add", "client0", "netns", rns, "type", "veth", "peer", "name", "eth0", "netns", client)
        client_len = net.client_subnet.split("/")[1]
        sh("ip", "-n", rns, "addr", "add", f"{net.router_client_ip}/{client_len}", "dev", "client0")
        sh("ip", "-n", rns, "link", "set", "client0", "up")
        sh("ip", "-n", client, "addr", "add", f"{net.client_ip}/{client_len}", "dev", "eth0")
        sh("ip", "-n", client, "link", "set", "eth0", "up")
        sh("ip", "-n", client, "link", "set", "lo", "up")
        sh("ip", "-n", client, "route", "add", "default", "via", net.router_client_ip)

    def _attach(self, br: str, netns: str, port: str, address: str, prefix: int) -> None:
        sh("ip", "netns", "add", netns)
        sh("ip", "link", "add", "eth0", "netns", netns, "type", "veth", "peer", "name", port, "netns", br)
        sh("ip", "-n", br, "link", "set", port, "master", "br0", "up")
        sh("ip", "-n", netns, "addr", "add", f"{address}/{prefix}", "dev", "eth0")
        sh("ip", "-n", netns, "link", "set", "eth0", "up")
        sh("ip", "-n", netns, "link", "set", "lo", "up")

    def _registry(self, state: dict, say) -> None:
        """The lab's OCI registry, in a namespace of its own on the bridge, holding every image the
        cluster runs (built here); the release that names them is saved as release.yaml."""
        from bmctl.lab import release
        net = self.net_of(state)
        ns = f"bl{state['id']}-registry"
        state["registry_ns"] = ns
        self.save(state)
        self._attach(state["bridge_ns"], ns, "registry", net.registry_ip, net.prefix)
        built = release.prepare(say=say)
        bundle = release.bundle(say=say, built=built)
        state["bundle"] = str(bundle)
        pid, content = release.publish(ns, net.registry_ip, self.state_dir / "registry", say=say, built=built,
                                       bundle_path=bundle)
        state["pids"]["registry"] = pid
        state["release"] = str(self.state_dir / "release.yaml")
        self.save(state)
        release.write_release(self.state_dir / "release.yaml", content)

    def _systemctl(self) -> Path:
        """The unit supervisor's `systemctl` (mounted over the node's /usr/bin/systemctl)."""
        shim = self.state_dir / "systemctl"
        shim.write_text(f"#!/bin/sh\nexec {sys.executable} -m bmctl.lab.systemctl \"$@\"\n")
        shim.chmod(0o755)
        return shim

    def _start_nodes(self, state: dict) -> None:
        from bmctl.lab import realnode
        real = state.get("real_nodes", False)
        node_dirs = NODE_DIRS + (realnode.NODE_DIRS if real else [])
        masks: list[list[str]] = []
        if real:
            empty = self.state_dir / "empty"
            empty.mkdir(mode=0o755, exist_ok=True)
            masks = [["/dev/null", f] for f in realnode.HIDDEN_FILES] + \
                    [[str(empty), d] for d in realnode.HIDDEN_DIRS] + \
                    [[str(self._systemctl()), f] for f in realnode.SYSTEMCTL]
        with _registry() as reg:
            reg["labs"].append(state["id"])
            for d in node_dirs:
                if not os.path.isdir(d):
                    os.makedirs(d, exist_ok=True)
                    reg["created_dirs"].append(d)
        state["registered"] = True
        self.save(state)
        known = []
        (self.state_dir / "bashrc").write_text(STOCK_BASHRC)
        accounts = self._accounts()
        for node in state["nodes"]:
            ndir = self.state_dir / node["name"]
            ndir.mkdir(mode=0o700, exist_ok=True)
            hostkey = ndir / "ssh_host_ed25519_key"
            sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", node["name"], "-f", str(hostkey))
            known.append(f"{node['address']} {(ndir / 'ssh_host_ed25519_key.pub').read_text().split()[0]} "
                         f"{(ndir / 'ssh_host_ed25519_key.pub').read_text().split()[1]}")
            (ndir / "sshd_config").write_text("\n".join([
                f"ListenAddress {node['address']}", "Port 22", f"HostKey {hostkey}",
                f"PidFile {ndir / 'sshd.pid'}",
                f"AuthorizedKeysFile {self.state_dir / 'authorized_keys'} .ssh/authorized_keys",
                "PermitRootLogin prohibit-password", "PasswordAuthentication no",
                "KbdInteractiveAuthentication no", "UsePAM no", "StrictModes no", "X11Forwarding no",
                "MaxSessions 64", "MaxStartups 64:30:128", "Subsystem sftp internal-sftp", ""]))
            hosts = Path("/etc/hosts").read_text() if Path("/etc/hosts").exists() else ""
            (ndir / "hosts").write_text(f"{hosts.rstrip()}\n{node['address']} {node['name']}\n".lstrip())
            private = {d: ndir / "fs" / d.strip("/").replace("/", "_") for d in node_dirs}
            if real:
                cgroup = realnode.node_cgroup(state["id"], node["name"])
                realnode.copy_defaults(private["/etc/default"])
                realnode.prepare_files(lambda path: _private_path(private, path), cgroup)
            spec = {"binds": [[str(src), d] for d, src in private.items()],
                    # A stock root account: this machine's own ~/.bashrc (which bash sources for
                    # every SSH command) may start tools (pyenv, ...) a server would not have.
                    # The login users' accounts (sudoers.d only where sudo is installed), and the
                    # node's own name in its /etc/hosts, as an installed server has (sudo looks it up).
                    "optional_binds": [[str(self.state_dir / "bashrc"), "/root/.bashrc"],
                                       [str(ndir / "hosts"), "/etc/hosts"], *accounts, *masks],
                    "hostname": node["name"],
                    "sshd_config": str(ndir / "sshd_config"), "sshd_log": str(ndir / "sshd.log"),
                    "state_dir": str(ndir),
                    # the node's network configuration: routes put back whenever eth0 comes up
                    "interface": "eth0", "routes": self._routes(state),
                    "cgroup": realnode.node_cgroup(state["id"], node["name"]) if real else None}
            (ndir / "node.json").write_text(json.dumps(spec, indent=2))
            state["pids"][node["name"]] = self._power_on(node)
            self.save(state)
        (self.state_dir / "known_hosts").write_text("\n".join(known) + "\n")
        deadline = time.monotonic() + 30
        for node in state["nodes"]:
            while not self._listening(node["netns"], 22):
                if time.monotonic() > deadline:
                    raise BmctlError(f"sshd of lab node {node['name']} did not start; see "
                                     f"{self.state_dir / node['name'] / 'sshd.log'}")
                time.sleep(0.1)

    def _accounts(self) -> list[list[str]]:
        """The files that give every node the LAB_USERS: copies of this machine's passwd, group and
        shadow with them added (uids this machine does not use; in the shadow copy no account keeps
        a password hash, locked ones stay locked), a sudoers.d with NOPASSWD for the sudo user, and
        a /home with each one's authorized_keys. Returns [source, node path] binds."""
        etc = self.state_dir / "etc"
        etc.mkdir(mode=0o755, exist_ok=True)
        used = {int(line.split(":")[2]) for f in ("/etc/passwd", "/etc/group")
                for line in Path(f).read_text().splitlines() if line.count(":") >= 3}
        uid = 1900
        home = self.state_dir / "home"
        home.mkdir(mode=0o755, exist_ok=True)
        rows = {"passwd": [], "group": [], "shadow": []}
        for name in LAB_USERS:
            while uid in used:
                uid += 1
            used.add(uid)
            rows["passwd"].append(f"{name}:x:{uid}:{uid}:bmctl lab login user:/home/{name}:/bin/bash")
            rows["group"].append(f"{name}:x:{uid}:")
            rows["shadow"].append(f"{name}:*:20000:0:99999:7:::")  # no password; not locked
            ssh_dir = home / name / ".ssh"
            ssh_dir.mkdir(parents=True, mode=0o700, exist_ok=True)
            shutil.copy(self.state_dir / "authorized_keys", ssh_dir / "authorized_keys")
            for path in (home / name, ssh_dir, ssh_dir / "authorized_keys"):
                os.chown(path, uid, uid)
        binds = []
        for kind, added in rows.items():
            source = Path("/etc") / kind
            if not source.exists():
                continue
            lines = source.read_text().splitlines()
            if kind == "shadow":  # logins are by key only: no hash leaves /etc/shadow
                lines = [_no_hash(line) for line in lines]
            copy = etc / kind
            copy.write_text("\n".join([*lines, *added]) + "\n")
            st = source.stat()
            os.chown(copy, st.st_uid, st.st_gid)
            copy.chmod(st.st_mode & 0o7777)
            binds.append([str(copy), str(source)])
        sudoers = self.state_dir / "sudoers.d"
        sudoers.mkdir(mode=0o755, exist_ok=True)
        rule = sudoers / "bmctl-lab"
        rule.write_text("".join(f"{n} ALL=(ALL:ALL) NOPASSWD: ALL\n" for n, ok in LAB_USERS.items() if ok))
        rule.chmod(0o440)
        return [*binds, [str(sudoers), "/etc/sudoers.d"], [str(home), "/home"]]

    def _power_on(self, node: dict) -> int:
        ndir = self.state_dir / node["name"]
        proc = subprocess.Popen(
            ["ip", "netns", "exec", node["netns"], "unshare", "--mount", "--uts", "--propagation", "private",
             sys.executable, "-m", "bmctl.lab.node", str(ndir / "node.json")],
            stdout=open(ndir / "node.log", "ab"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True, cwd="/")
        return proc.pid

    def reboot(self, name: str) -> None:
        """A power cycle of one node: every process it runs is SIGKILLed at once (its mounts and /run
        go with them), then it boots again: sshd, containerd and the kubelet, which starts the static
        pods from /etc/kubernetes/manifests."""
        state = self.load()
        node = next(n for n in state["nodes"] if n["name"] == name)
        try:
            os.killpg(state["pids"][name], signal.SIGKILL)
        except ProcessLookupError:
            pass
        if state.get("real_nodes"):  # containers, shims, the units: all in the node's cgroup
            from bmctl.lab import realnode, systemd
            systemd.kill_cgroup(realnode.node_cgroup(state["id"], name), timeout=0)
            systemd.remove_cgroup(realnode.node_cgroup(state["id"], name))  # a boot starts with none
        self._reset_network(node, self.net_of(state).prefix, self._routes(state))
        try:
            os.waitpid(state["pids"][name], 0)  # ours when this process powered the node on
        except ChildProcessError:
            pass
        state["pids"][name] = self._power_on(node)
        self.save(state)
        deadline = time.monotonic() + 30
        while not self._listening(node["netns"], 22):
            if time.monotonic() > deadline:
                raise BmctlError(f"lab node {name} did not come back after its reboot")
            time.sleep(0.1)

    def _routes(self, state: dict) -> list[list[str]]:
        """Each node's configured routes, [destination, gateway] pairs: with a router, the half of
        the segment behind it."""
        net = self.net_of(state)
        return [[net.routed_cidr, net.router_ip]] if net.routed else []

    @staticmethod
    def _reset_network(node: dict, prefix: int, routes: list[tuple[str, str]] = ()) -> None:
        """What a power cycle does to a machine's network: only its configured address (and its
        configured `routes`, (destination, gateway) pairs) is left (no VIP, no bridge or veth of the
        pod network, no routes of it, no packet filter rules)."""
        ns = node["netns"]
        for link in json.loads(sh("ip", "-n", ns, "-j", "link", "show").stdout or "[]"):
            if link["ifname"] not in ("lo", "eth0"):
                sh("ip", "-n", ns, "link", "del", link["ifname"], check=False)
        sh("ip", "-n", ns, "addr", "flush", "dev", "eth0")
        sh("ip", "-n", ns, "route", "flush", "table", "main")
        sh("ip", "-n", ns, "addr", "add", f"{node['address']}/{prefix}", "dev", "eth0")
        for dst, via in routes:
            sh("ip", "-n", ns, "route", "add", dst, "via", via)
        for tool in ("iptables-nft", "ip6tables-nft", "iptables-legacy", "ip6tables-legacy"):
            if shutil.which(tool, path="/usr/sbin:/sbin:" + os.environ.get("PATH", "")):
                for table in ("filter", "nat", "mangle", "raw"):
                    for flag in ("-F", "-X"):
                        sh("ip", "netns", "exec", ns, tool, "-t", table, flag, check=False)

    def node_exec(self, name: str, argv: list[str], check: bool = True) -> subprocess.CompletedProcess:
        """Run a command on a node as its own processes see it (its network, mount and UTS
        namespaces), e.g. crictl."""
        pid = self.load()["pids"][name]
        return sh("nsenter", "-t", str(pid), "-n", "-m", "-u", "--", *argv, check=check)

    @staticmethod
    def _listening(netns: str, port: int) -> bool:
        out = sh("ip", "netns", "exec", netns, "ss", "-Hltn", f"sport = :{port}", check=False).stdout
        return bool(out.strip())

    def _write_config(self, state: dict, config_path: Path | None) -> Path:
        name = state["cluster"]
        nodes = state["nodes"]
        net = self.net_of(state)
        cps = [{"address": n["address"]} for n in nodes if n["role"] == "control-plane"]
        lbs = [{"address": n["address"]} for n in nodes if n["role"] == "load-balancer"]
        workers = [{"address": n["address"]} for n in nodes if n["role"] == "worker"]
        if net.routed:  # the API VIP and Services advertised to the lab's router over BGP
            lb: dict = {"mode": "bundled", "type": "bgp", "ports": {"controlPlaneLBPort": 443},
                        "vips": {"controlPlaneVIP": net.vip},
                        "addressPools": [{"name": "lab-services", "addresses": [net.bgp_pool]}],
                        "localASN": net.cluster_asn, "bgpPeers": [{"ip": net.router_ip, "asn": net.router_asn}]}
        else:
            lb = {"mode": "bundled", "type": "layer2", "ports": {"controlPlaneLBPort": 443},
                  "vips": {"controlPlaneVIP": net.vip, "ingressVIP": net.ingress_vip},
                  "addressPools": [{"name": "lab-services", "addresses": [net.pool]}]}
        if lbs:
            lb["nodePoolSpec"] = {"nodes": lbs}
        header = {"sshPrivateKeyPath": str(self.state_dir / "id_ed25519"),
                  "sshKnownHostsPath": str(self.state_dir / "known_hosts")}
        spec_extra: dict = {}
        if state.get("real_nodes"):
            # The node software and images built here (bmctl installs the software from the bundle),
            # the images pulled from the lab's registry, which mirrors the lab's registry host.
            from bmctl.lab.realnode import MIRROR_HOST
            header["bundlePath"] = state["bundle"]
            header["registryMirrors"] = [{"endpoint": f"http://{net.registry_ip}:5000", "hosts": [MIRROR_HOST]}]
            # a /27 of the pod network per node: the lab's pods share one documentation /24
            spec_extra["nodeConfig"] = {"podDensity": {"maxPodsPerNode": 16}}
            if host_cgroup_v1():  # the nodes share this machine's cgroups
                spec_extra["nodeConfig"]["allowCgroupV1"] = True
        docs = [
            header,
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": f"cluster-{name}"}},
            {"apiVersion": "baremetal.cluster.gke.io/v1", "kind": "Cluster",
             "metadata": {"name": name, "namespace": f"cluster-{name}"},
             "spec": {"type": "hybrid" if workers else "standalone",
                      "controlPlane": {"nodePoolSpec": {"nodes": cps}},
                      "clusterNetwork": {"pods": {"cidrBlocks": [net.pods]},
                                         "services": {"cidrBlocks": [net.services]}},
                      "loadBalancer": lb, "nodeAccess": {"loginUser": "root"}, **spec_extra}},
        ]
        if workers:
            docs.append({"apiVersion": "baremetal.cluster.gke.io/v1", "kind": "NodePool",
                         "metadata": {"name": "workers", "namespace": f"cluster-{name}"},
                         "spec": {"clusterName": name, "nodes": workers}})
        path = config_path or self.state_dir.parent / f"{name}.yaml"
        header = (f"# Written by `bmctl lab up` for the lab in {self.state_dir}.\n"
                  "# Nodes are network namespaces on this machine; see README.md (The lab).\n")
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        path.write_text(header + yaml.safe_dump_all(docs, sort_keys=False))
        os.chmod(path, 0o600)
        return path

    # -- down ---------------------------------------------------------------------------------
    def down(self) -> None:
        _teardown(self.load(), self.state_dir)

    @staticmethod
    def prune() -> list[dict]:
        """Remove every lab whose processes are all gone (the `bmctl lab up` or test run that made
        it was killed, or this machine's processes were restarted while its kernel state stayed):
        its namespaces, routes, cgroups and folders, as its record in /run/bmctl-lab lists them. A
        lab with any process alive, or whose maker still runs, is left alone. Returns the records
        of the labs removed."""
        removed = []
        for path in sorted(RECORDS.glob("*.json")) if RECORDS.is_dir() else []:
            try:
                record = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            state = record["state"]
            if _process_alive(state.get("owner")) or any(
                    _alive(pid) for pid in _state_pids(state)):
                continue
            _teardown(state, Path(record["state_dir"]))
            removed.append(record)
        return removed

    # -- status -------------------------------------------------------------------------------
    def status(self) -> list[dict]:
        state = self.load()
        rows = []
        for node in state["nodes"]:
            pid = state["pids"].get(node["name"])
            alive = pid is not None and _alive(pid)
            units = {}
            if alive and state.get("real_nodes"):
                for unit in ("containerd", "kubelet"):
                    units[unit] = self.node_exec(node["name"], ["systemctl", "is-active", unit],
                                                 check=False).stdout.strip() or "unknown"
            rows.append({**node, "running": alive, "ssh": alive and self._listening(node["netns"], 22),
                         "units": units})
        return rows

    def router_status(self) -> dict | None:
        """The router's namespace, daemons (pid, running) and BGP sessions; None without a router."""
        from bmctl.lab import router as lab_router
        return lab_router.status(self.load())

    def netns_of(self, address: str) -> str:
        for node in self.load()["nodes"]:
            if node["address"] == address:
                return node["netns"]
        raise KeyError(address)


def _state_pids(state: dict) -> list[int]:
    return list(state.get("pids", {}).values()) + list(((state.get("router") or {}).get("pids") or {}).values())


def _process_id(pid: int) -> list[int] | None:
    """A process named so that a later process given the same pid is not taken for it: [pid, start time]."""
    try:
        # /proc/PID/stat: the command may hold spaces and parentheses; field 22 (start time) follows it
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return [pid, int(fields[19])]
    except (OSError, IndexError, ValueError):
        return None


def _process_alive(ident: list[int] | None) -> bool:
    return bool(ident) and _process_id(ident[0]) == list(ident)


def _write_record(state: dict, state_dir: Path) -> None:
    """The lab's teardown record beside the host-wide registry, so that a lab whose state folder is
    gone (a test's temporary folder, cleaned) can still be removed by `bmctl lab prune`."""
    RECORDS.mkdir(parents=True, mode=0o700, exist_ok=True)
    path = RECORDS / f"{state['id']}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"state_dir": str(state_dir), "state": state}))
    os.replace(tmp, path)


def _teardown(state: dict, state_dir: Path) -> None:
    """Undo what `up` recorded in `state`: processes (by pid), the router, the real nodes' cgroup,
    namespaces, this machine's veth and fence routes, registry entries and folders."""
    if state.get("router"):
        from bmctl.lab import router as lab_router
        lab_router.stop(state)
    for pid in state.get("pids", {}).values():
        _stop_group(pid, timeout=30)
    if state.get("real_nodes"):
        # whatever a real node left running (pods, containerd shims) is in the lab's cgroup
        from bmctl.lab import systemd
        systemd.kill_cgroup(f"/bmctl-lab-{state['id']}", timeout=5)
        systemd.remove_cgroup(f"/bmctl-lab-{state['id']}")
    for node in state.get("nodes", []):
        sh("ip", "netns", "del", node["netns"], check=False)
    for ns in (state.get("client_ns"), (state.get("router") or {}).get("ns"), state.get("registry_ns"),
               state.get("bridge_ns")):
        if ns:
            sh("ip", "netns", "del", ns, check=False)
    if state.get("host_veth"):
        sh("ip", "link", "del", state["host_veth"], check=False)
    for cidr in state.get("host_fences", []):
        sh("ip", "route", "del", "unreachable", cidr, check=False)
    if state.get("registered"):
        with _registry() as reg:
            reg["labs"] = [i for i in reg["labs"] if i != state["id"]]
            if not reg["labs"]:
                # Only once no lab is left: removing a folder that another lab's nodes have
                # a bind mount on would silently detach their private copy.
                for d in reversed(reg["created_dirs"]):
                    try:
                        os.rmdir(d)
                    except OSError:
                        pass
                reg["created_dirs"] = []
    config = state.get("config")
    if config and os.path.exists(config):
        os.unlink(config)
    shutil.rmtree(state_dir, ignore_errors=True)
    (RECORDS / f"{state['id']}.json").unlink(missing_ok=True)


def _private_path(private: dict[str, Path], path: str) -> Path:
    """Where a node's file lives on this machine: under the private folder that holds its path."""
    for folder, source in sorted(private.items(), key=lambda kv: -len(kv[0])):
        if path == folder or path.startswith(folder + "/"):
            return source / path[len(folder):].lstrip("/")
    raise KeyError(f"{path} is in no private folder of the node")


REGISTRY = Path("/run/bmctl-lab")
RECORDS = REGISTRY / "labs"


@contextlib.contextmanager
def _registry():
    """Host-wide record (under a lock) of running labs and of the host folders labs created as
    mount points, so that the last lab down removes them and no earlier one does."""
    REGISTRY.mkdir(mode=0o700, exist_ok=True)
    with open(REGISTRY / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        path = REGISTRY / "registry.json"
        reg = json.loads(path.read_text()) if path.exists() else {"labs": [], "created_dirs": []}
        yield reg
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(reg))
        os.replace(tmp, path)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def _stop_group(pid: int, timeout: float = 15.0) -> None:
    """SIGTERM the process group started for a node (its pods stop with it); SIGKILL if it lingers."""
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            done = 0 if _alive(pid) else pid
        if done or not _alive(pid):
            break
        time.sleep(0.1)
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
