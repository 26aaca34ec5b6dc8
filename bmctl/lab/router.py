"""The lab's BGP router (`bmctl lab up --router`): FRR from Debian's frr package in a namespace of
its own, between the lab's bridge and the client.

The router namespace `bl<id>-router` has `eth0` on the bridge (A.126/25) and `client0` to the
client namespace (A.193/28; the client is A.194 with a default route via it); it forwards, with
L4 hashing for multipath routes (`net.ipv4.fib_multipath_hash_policy=1`) so that a client's
connections from different ports spread over the next hops. zebra, bfdd and bgpd run in it as
children of `bmctl lab up` (no `-d`), each with its pid file, vty socket and zserv socket in the
lab's state folder (`STATE/frr`) and none under this machine's /var/run/frr: `-i`, `--vty_socket`,
`-z`, `-P 0` (no TCP vty), `-u root -g frrvty` (FRR refuses to start unless the user is in its vty
group, which Debian's package creates; root keeps the files in the state folder reachable). Each
daemon also sees the state folder's `tmp` as /var/tmp (a mount namespace of its own), where FRR
keeps its crash-log folder (/var/tmp/frr/DAEMON.PID), so nothing of it lands on this machine.
They are stopped by pid (SIGTERM, then SIGKILL).

bgpd: `router bgp 64512`, router-id A.126, a peer group LB (remote-as 64513, timers 1 3, BFD with
the profile `lab`: 100 ms intervals, multiplier 3) that any address of the node subnet may join
(`bgp listen range`): bmctl decides which nodes peer. `maximum-paths 16` and multipath-relax: one
next hop per advertising node, installed by zebra as one multipath route. It sends every LB node a
default route (`default-originate`), as a routed fabric's top-of-rack switch does: the node's way
back to the clients then comes and goes with its session.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

from bmctl.errors import BmctlError
from bmctl.lab.net import LabNet
from bmctl.lab.registry import alive, stop_pid

FRR = Path("/usr/lib/frr")
DAEMONS = ("zebra", "bfdd", "bgpd")  # start order; stopped in reverse
VTY_GROUP = "frrvty"  # Debian's frr package: FRR's daemons refuse a user outside it
BFD_PROFILE = "lab"
SOCKET_MAX = 100  # sun_path is 108 bytes: the longest socket path the router uses must fit


def missing() -> list[str]:
    """What the router needs from this machine that it lacks (empty: all there)."""
    import grp
    lack = [str(FRR / d) for d in DAEMONS if not os.access(FRR / d, os.X_OK)]
    if shutil.which("vtysh") is None:
        lack.append("vtysh")
    try:
        grp.getgrnam(VTY_GROUP)
    except KeyError:
        lack.append(f"the group {VTY_GROUP}")
    return lack


# -- configuration ------------------------------------------------------------------------------
def configs(net: LabNet, hostname: str) -> dict[str, str]:
    """Each daemon's configuration file (one per daemon: every daemon reads its own with -f)."""
    head = f"frr defaults traditional\nhostname {hostname}\n!\n"
    return {
        "zebra": head,
        "bfdd": head + "\n".join([
            "bfd",
            f" profile {BFD_PROFILE}",
            "  receive-interval 100",
            "  transmit-interval 100",
            "  detect-multiplier 3",
            " exit",
            "exit", "!", ""]),
        "bgpd": head + "\n".join([
            f"router bgp {net.router_asn}",
            f" bgp router-id {net.router_ip}",
            " bgp log-neighbor-changes",
            " no bgp ebgp-requires-policy",
            " bgp bestpath as-path multipath-relax",
            " neighbor LB peer-group",
            f" neighbor LB remote-as {net.cluster_asn}",
            " neighbor LB timers 1 3",
            " neighbor LB bfd",
            f" neighbor LB bfd profile {BFD_PROFILE}",
            f" bgp listen range {net.bridge_cidr} peer-group LB",
            " !",
            " address-family ipv4 unicast",
            "  maximum-paths 16",
            "  neighbor LB default-originate",
            " exit-address-family",
            "exit", "!", ""]),
    }


# -- FRR daemons (also used by tests to run a speaker on a node) -------------------------------
def _pathname_fits(folder: Path) -> None:
    longest = folder / "zserv.api"
    if len(str(longest)) > SOCKET_MAX:
        raise BmctlError(f"the lab's FRR sockets would have paths too long for a Unix socket ({longest}).",
                         "use a workspace with a shorter path.")


def start_frr(netns: str, folder: Path, confs: dict[str, str], daemons: tuple[str, ...] = DAEMONS,
              timeout: float = 15) -> dict[str, int]:
    """Start FRR daemons in network namespace `netns`, everything of theirs in `folder` (configs,
    pid files, vty and zserv sockets, logs, their /var/tmp); wait until each answers on its vty
    socket. Returns daemon -> pid; they outlive this process: stop them with stop_frr()."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True, mode=0o750)
    _pathname_fits(folder)
    (folder / "tmp").mkdir(exist_ok=True, mode=0o700)
    pids: dict[str, int] = {}
    try:
        for daemon in daemons:
            conf = folder / f"{daemon}.conf"
            conf.write_text(confs.get(daemon, ""))
            argv = [str(FRR / daemon), "-f", str(conf), "-i", str(folder / f"{daemon}.pid"),
                    "-z", str(folder / "zserv.api"), "--vty_socket", str(folder), "-P", "0",
                    "-u", "root", "-g", VTY_GROUP, "--log", f"file:{folder / daemon}.log", "--log-level", "info"]
            if daemon == "bfdd":
                argv += ["--bfdctl", str(folder / "bfdd.sock")]
            # nsenter and unshare exec (no fork), so the pid is the daemon's; its own mount
            # namespace puts the state folder's tmp over /var/tmp (FRR's crash-log folder).
            wrapped = ["nsenter", f"--net=/run/netns/{netns}", "--", "unshare", "--mount", "--propagation", "private",
                       "--", "sh", "-c", 'mount --bind "$0" /var/tmp && exec "$@"', str(folder / "tmp"), *argv]
            with open(folder / f"{daemon}.out", "ab") as out:
                proc = subprocess.Popen(wrapped, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                        start_new_session=True, cwd=str(folder))
            pids[daemon] = proc.pid
            _wait_ready(daemon, proc, folder, timeout)
    except BaseException:
        stop_frr(pids, folder)
        raise
    return pids


def _wait_ready(daemon: str, proc: subprocess.Popen, folder: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise BmctlError(f"FRR's {daemon} exited at start ({proc.returncode}): "
                             f"{_tail(folder / f'{daemon}.out')} {_tail(folder / f'{daemon}.log')}")
        if (folder / f"{daemon}.vty").exists() and \
                _vtysh(folder, ["show version"], daemon=daemon, check=False).returncode == 0:
            return
        if time.monotonic() > deadline:
            raise BmctlError(f"FRR's {daemon} did not answer on {folder / daemon}.vty within {timeout:.0f} s: "
                             f"{_tail(folder / f'{daemon}.log')}")
        time.sleep(0.05)


def _tail(path: Path, size: int = 1500) -> str:
    try:
        return path.read_text(errors="replace")[-size:].strip()
    except FileNotFoundError:
        return ""


def stop_frr(pids: dict[str, int], folder: Path, timeout: float = 5) -> None:
    """Stop the daemons of start_frr by pid, in reverse start order: SIGTERM (bgpd then tells its
    peers: a Cease notification), SIGKILL if one lingers; reap the ones that are our children."""
    folder = Path(folder)
    for daemon in reversed(list(pids)):
        pid = pids[daemon]
        stop_pid(pid, lambda cmdline: any(a.startswith(str(FRR).encode()) for a in cmdline.split(b"\0"))
                 and str(folder).encode() in cmdline.split(b"\0"), timeout)


# -- the lab's router ---------------------------------------------------------------------------
def folder_of(state: dict) -> Path:
    return Path(state["router"]["dir"])


def create(state: dict, net: LabNet) -> None:
    """The router namespace, its forwarding sysctls and its FRR (the links are made by the lab:
    eth0 on the bridge, client0 to the client). Fills state["router"]["pids"]."""
    ns = state["router"]["ns"]
    proc = subprocess.run(["ip", "netns", "exec", ns, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1",
                           "net.ipv4.fib_multipath_hash_policy=1"], capture_output=True, text=True)
    if proc.returncode != 0:
        raise BmctlError(f"the router's sysctls: {proc.stderr.strip()}")
    folder = folder_of(state)
    state["router"]["pids"] = start_frr(ns, folder, configs(net, ns))


def stop(state: dict) -> None:
    router = state.get("router") or {}
    if router.get("pids"):
        stop_frr(router["pids"], Path(router["dir"]))


def _vtysh(folder: Path, cmds: list[str], daemon: str | None = None, check: bool = True,
           ) -> subprocess.CompletedProcess:
    argv = ["vtysh", "--vty_socket", str(folder)]
    if daemon:
        argv += ["-d", daemon]
    for cmd in cmds:
        argv += ["-c", cmd]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=30,
                          env={**os.environ, "VTYSH_PAGER": "cat"})
    if check and proc.returncode != 0:
        raise BmctlError(f"`{' '.join(argv)}` failed: {(proc.stderr or proc.stdout).strip()}")
    return proc


def vtysh(state: dict, *cmds: str) -> str:
    """Run vtysh commands against the lab's router (its vty sockets in the state folder); stdout."""
    return _vtysh(folder_of(state), list(cmds)).stdout


def bgp_summary(state: dict) -> dict[str, dict]:
    """The router's BGP sessions: peer address -> {"state", "prefixes" (received), "asn", "uptime_ms"}."""
    return summary_of(vtysh(state, "show bgp ipv4 unicast summary json"))


def summary_of(text: str) -> dict[str, dict]:
    data = json.loads(text or "{}")
    peers = (data.get("ipv4Unicast") or data).get("peers") or {}
    return {ip: {"state": p.get("state"), "prefixes": p.get("pfxRcd", 0), "asn": p.get("remoteAs"),
                 "uptime_ms": p.get("peerUptimeMsec")} for ip, p in peers.items()}


def routes(state: dict, prefix: str) -> list[str]:
    """The next hops (gateway addresses, sorted) of the router's kernel route to exactly `prefix`;
    [] when it has none."""
    return kernel_next_hops(state["router"]["ns"], prefix)


def kernel_next_hops(netns: str, prefix: str) -> list[str]:
    def ip_json(*args: str) -> list:
        proc = subprocess.run(["ip", "-n", netns, "-j", *args], capture_output=True, text=True)
        return json.loads(proc.stdout or "[]") if proc.returncode == 0 else []
    hops: list[str] = []
    for route in ip_json("route", "show", "exact", prefix):
        if route.get("gateway"):
            hops.append(route["gateway"])
        elif route.get("nexthops"):
            hops += [h["gateway"] for h in route["nexthops"] if h.get("gateway")]
        elif route.get("nhid"):  # a nexthop object only (nexthop_compat_mode 0): resolve it
            for nh in ip_json("nexthop", "show", "id", str(route["nhid"])):
                if nh.get("gateway"):
                    hops.append(nh["gateway"])
                for member in nh.get("group", []):
                    for sub in ip_json("nexthop", "show", "id", str(member["id"])):
                        if sub.get("gateway"):
                            hops.append(sub["gateway"])
    return sorted(set(hops))


def status(state: dict) -> dict | None:
    """The router's namespace, its daemons (pid, running) and BGP sessions; None without a router."""
    router = state.get("router")
    if not router:
        return None
    daemons = {d: {"pid": pid, "running": alive(pid)} for d, pid in (router.get("pids") or {}).items()}
    sessions: dict = {}
    error = None
    if daemons.get("bgpd", {}).get("running"):
        try:
            sessions = bgp_summary(state)
        except (BmctlError, ValueError, subprocess.TimeoutExpired) as exc:
            error = str(exc)
    return {"ns": router["ns"], "daemons": daemons, "sessions": sessions, "error": error}
