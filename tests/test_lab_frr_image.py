"""The lab's FRR image and the speaker's FRR-mode tools (bmctl/lab/images.py), for real.

MetalLB v0.15.2 in FRR mode (upstream's config/manifests/metallb-frr.yaml) runs quay.io/frrouting/frr
beside its speaker; the lab runs its own `frr` image (Debian's FRR) there. Here both images are
unpacked and the speaker pod's FRR half is played out as the manifest has it, in private mount, network
and PID namespaces (loopback only; documentation addresses): the cp-frr-files init container copies
the frr-startup ConfigMap into /etc/frr as 100:101, the cp-reloader/cp-metrics init containers copy the
speaker image's /frr-reloader.sh and /frr-metrics with its /cp-tool, the frr container's own command
starts the daemons through tini and docker-start, MetalLB's reloader applies a config with a BFD profile
and a neighbor on SIGHUP (frr-reload.py --test, then --reload --overwrite) and refuses a broken one,
and frr-metrics answers its liveness probe. Every namespace, mount and process goes with the
namespaces' first process; the unpacked roots are removed afterwards, whatever happened.
Needs the binaries and images built (`python -m bmctl.lab.binaries`, `python -m bmctl.lab.images`:
.ci/run does both) and root.
"""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path

import pytest
import yaml

from conftest import require, require_root, require_tool, upstream_file

from lab.layouts import image_config, unpack

from bmctl.lab import binaries, images

pytestmark = pytest.mark.needs_root

METALLB_FRR = ("go.universe.tf/metallb", binaries.METALLB, "config/manifests/metallb-frr.yaml",
               "64cae8e2bb5a7e7cb3d8d27894c6ae6db3d677e7b8504f88b2f0dea67d0b89d5")
# frr-tools/reloader/frr-reloader.sh, as the speaker image ships it
RELOADER_SHA256 = "19b060ea34f698802dc1bf56c1a4ee2b3bbdee0d9aba797fc0f7404ad5434992"

# What MetalLB's speaker renders for one BGP peer with a BFD profile (internal/bgp/frr's templates:
# prefix-lists, route-maps, the router, the profile), with documentation addresses.
GOOD = """frr version 8.4
frr defaults traditional
hostname lab-node
log file /etc/frr/frr.log informational
log timestamp precision 3
ip nht resolve-via-default
ipv6 nht resolve-via-default
ip prefix-list 203.0.113.1-allowed-ipv4 seq 1 permit 198.51.100.10/32
ipv6 prefix-list 203.0.113.1-allowed-ipv6 seq 1 deny any
route-map 203.0.113.1-in deny 20
route-map 203.0.113.1-out permit 1
  match ip address prefix-list 203.0.113.1-allowed-ipv4
route-map 203.0.113.1-out permit 2
  match ipv6 address prefix-list 203.0.113.1-allowed-ipv6
router bgp 64513
  no bgp ebgp-requires-policy
  no bgp network import-check
  no bgp default ipv4-unicast
  bgp router-id 203.0.113.2
  neighbor 203.0.113.1 remote-as 64512
  neighbor 203.0.113.1 port 179
  neighbor 203.0.113.1 timers 30 90
  neighbor 203.0.113.1 bfd
  neighbor 203.0.113.1 bfd profile lab
  address-family ipv4 unicast
    neighbor 203.0.113.1 activate
    neighbor 203.0.113.1 route-map 203.0.113.1-in in
    neighbor 203.0.113.1 route-map 203.0.113.1-out out
    network 198.51.100.10/32
  exit-address-family
bfd
  profile lab
    receive-interval 200
    transmit-interval 250
    detect-multiplier 5
    echo-mode
    echo receive-interval 90
    echo transmit-interval 90
    minimum-ttl 250
"""
BAD = GOOD.replace("  neighbor 203.0.113.1 timers 30 90\n", "  neighbor 203.0.113.1 no-such-option 1\n")

# Run inside the namespaces: "$1" the frr root, "$2" the speaker root, "$3" the script for the frr root.
POD = r"""
set -e
R="$1"; S="$2"
mount -t proc proc "$R/proc"
mount --rbind /dev "$R/dev"
chroot "$R" ip link set lo up
for v in etc/frr run/frr etc/frr_reloader etc/frr_metrics; do  # the pod's emptyDirs
  mount -t tmpfs -o mode=0777 emptydir "$R/$v"
done
mount --bind "$R/etc/frr_reloader" "$S/etc/frr_reloader"
mount --bind "$R/etc/frr_metrics" "$S/etc/frr_metrics"
chroot --userspec=100:101 "$R" /bin/sh -c "$(cat "$R/tmp/cp-frr-files.sh")"
chroot "$S" /cp-tool /frr-reloader.sh /etc/frr_reloader/frr-reloader.sh
chroot "$S" /cp-tool /frr-metrics /etc/frr_metrics/frr-metrics
exec env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root chroot "$R" /bin/sh -c "$3"
"""

# The frr root's part (busybox sh). Each step prints "### NAME", its output, then "### rc=N".
SCENARIO = r"""
step() { name=$1; shift; echo "### $name"; "$@" 2>&1; rc=$?; echo; echo "### rc=$rc"; }
wait_for() { n=0; until eval "$1" >/dev/null 2>&1; do n=$((n+1)); [ $n -ge 300 ] && return 1; sleep 0.1; done; }
reload() {  # what the speaker does: write the config, SIGHUP the reloader, read its status file
  rm -f /etc/frr_reloader/.status
  cp "$1" /etc/frr_reloader/frr.conf
  kill -HUP "$(cat /etc/frr_reloader/reloader.pid)"
  wait_for '[ -s /etc/frr_reloader/.status ]'
  cat /etc/frr_reloader/.status
}
# the frr container
TINI_SUBREAPER=true /bin/sh -c "$(cat /tmp/frr-container.sh)" > /tmp/frr-container.log 2>&1 &
step started wait_for 'vtysh -c "show running-config" | grep -q "log file /etc/frr/frr.log"'
step daemons vtysh -c 'show daemons'
step ps ps -o user,args
step initial vtysh -c 'show running-config'
# the reloader and frr-metrics containers
/etc/frr_reloader/frr-reloader.sh > /tmp/reloader.log 2>&1 &
VTYSH_HISTFILE=/dev/null /etc/frr_metrics/frr-metrics --metrics-port=7473 > /tmp/metrics.log 2>&1 &
wait_for '[ -s /etc/frr_reloader/reloader.pid ]'
step reload-good reload /tmp/good.conf
step running vtysh -c 'show running-config'
step bfd vtysh -c 'show bfd peers'
step saved cat /etc/frr/frr.conf
step reload-bad reload /tmp/bad.conf
step running-after-bad vtysh -c 'show running-config'
wait_for 'curl -sf http://127.0.0.1:7473/livez'
step livez curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:7473/livez
step metrics curl -s http://127.0.0.1:7473/metrics
step reloader-log cat /tmp/reloader.log
step frr-log cat /tmp/frr-container.log
"""


@pytest.fixture(scope="module")
def built():
    require_root()
    require_tool("unshare")
    require_tool("chroot")
    missing = [n for n, _, st, _ in binaries.listing() if st != "ok"]
    require(not missing, f"lab binaries built (python -m bmctl.lab.binaries): missing or stale {missing}")
    return images.build_all(say=lambda _: None)  # from the cache: .ci/run built them


@pytest.fixture(scope="module")
def roots(built):
    base = Path(tempfile.mkdtemp(prefix="bmctl-frr-image-"))
    try:
        yield {"frr": unpack(built["frr"], base / "frr"), "speaker": unpack(built["metallb-speaker"], base / "speaker")}
    finally:
        shutil.rmtree(base, ignore_errors=True)


def in_namespaces(*argv: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """argv in new mount, network and PID namespaces: when its first process ends (or unshare is
    killed: --kill-child), the kernel ends every process in them and drops their mounts."""
    proc = subprocess.Popen(["unshare", "--mount", "--net", "--pid", "--fork", "--kill-child",
                             "--propagation", "private", *argv],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        pytest.fail(f"timed out after {timeout}s:\n{out[-6000:]}")
    return subprocess.CompletedProcess(argv, proc.returncode, out, "")


def chroot(root: Path, script: str) -> subprocess.CompletedProcess:
    """A /bin/sh script inside the image's root (with /proc and /dev), in throwaway namespaces."""
    for d in ("proc", "dev"):
        (root / d).mkdir(exist_ok=True)
    return in_namespaces("sh", "-c", 'mount -t proc proc "$1/proc" && mount --rbind /dev "$1/dev" && '
                         'exec chroot "$1" /bin/sh -c "$2"', "sh", str(root), script)


def steps(output: str) -> dict[str, tuple[int, str]]:
    """SCENARIO's output: step name -> (exit code, output)."""
    found = re.findall(r"^### (\S+)\n(.*?)^### rc=(\d+)$", output, re.S | re.M)
    return {name: (int(rc), text) for name, text, rc in found}


def metallb_frr_pod() -> dict:
    """The speaker DaemonSet's pod spec and the frr-startup ConfigMap of upstream's FRR-mode manifest."""
    docs = [d for d in yaml.safe_load_all(upstream_file(*METALLB_FRR).read_text()) if d]
    pod = next(d for d in docs if d["kind"] == "DaemonSet" and d["metadata"]["name"] == "speaker")["spec"]["template"]
    startup = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "frr-startup")
    return {"spec": pod["spec"], "startup": startup["data"]}


# -- the images' contents ---------------------------------------------------------------------------

def test_frr_image_is_laid_out_as_upstreams(built, roots):
    cfg = image_config(built["frr"])
    assert cfg["Entrypoint"] == ["/sbin/tini", "--"] and cfg["Cmd"] == ["/usr/lib/frr/docker-start"]
    assert built["frr"].tag.startswith("8.")
    root = roots["frr"]
    passwd = {line.split(":")[0]: line.split(":") for line in (root / "etc/passwd").read_text().splitlines()}
    group = {line.split(":")[0]: line.split(":") for line in (root / "etc/group").read_text().splitlines()}
    assert passwd["frr"][2:4] == ["100", "101"]
    assert group["frr"][2] == "101" and group["frrvty"][2] == "102" and "frr" in group["frrvty"][3].split(",")
    for folder in ("etc/frr", "run/frr", "var/log/frr", "var/tmp/frr", "var/lib/frr"):
        st = (root / folder).stat()
        assert (st.st_uid, st.st_gid) == (100, 101) and stat.S_ISDIR(st.st_mode), folder
    assert os.readlink(root / "var/run") == "/run"
    for path in ("usr/lib/frr/zebra", "usr/lib/frr/bgpd", "usr/lib/frr/bfdd", "usr/lib/frr/staticd",
                 "usr/lib/frr/watchfrr", "usr/lib/frr/frrinit.sh", "usr/lib/frr/frrcommon.sh",
                 "usr/lib/frr/watchfrr.sh", "usr/lib/frr/docker-start", "usr/lib/frr/frr-reload.py", "usr/bin/vtysh",
                 "usr/bin/python3", "sbin/tini", "bin/bash", "bin/busybox", "usr/bin/flock", "usr/bin/curl"):
        assert os.access(root / path, os.X_OK), path
    assert os.readlink(root / "bin/sh") == "/bin/busybox"  # ash: MetalLB's frr container's script uses [[
    assert (root / "etc/frr/support_bundle_commands.conf").is_file()
    assert (root / "usr/lib/x86_64-linux-gnu/frr/modules").is_dir()
    assert not (root / "usr/lib/python3.11/test").exists()


def test_frr_image_tools_run(roots):
    """What MetalLB's frr containers and FRR's scripts call runs from the image's root: the daemons,
    python3 with what frr-reload.py imports, tini, bash, busybox's sh with `[[`, sleep infinity, flock."""
    script = ("set -e; for d in zebra bgpd bfdd staticd watchfrr; do /usr/lib/frr/$d --version | head -1; done; "
              "vtysh -h | grep -q 'Integrated shell'; "
              "python3 -c 'import argparse, logging, os, random, re, string, subprocess, sys, collections, "
              "ipaddress, pprint; print(sys.version.split()[0])'; "
              "python3 /usr/lib/frr/frr-reload.py --help >/dev/null; /sbin/tini --version; "
              "bash -c 'echo bash ${BASH_VERSION%%.*}'; "
              "a=0; [[ -f /nonexistent || $a -eq 0 ]] && echo double-brackets; "
              "sleep infinity & p=$!; sleep 0.2; kill -0 $p && kill $p && echo sleep-infinity; "
              "touch /tmp/lock; flock /tmp/lock true && echo flock; "
              "for t in tail cp kill sed date printf rm touch ip cat mkdir chown install id; do "
              "command -v $t >/dev/null; done; "
              "id frr")
    proc = chroot(roots["frr"], script)
    assert proc.returncode == 0, proc.stdout
    for d in ("zebra", "bgpd", "bfdd", "staticd", "watchfrr"):
        assert f"{d} version 8." in proc.stdout
    for line in ("3.11.", "tini version", "bash 5", "double-brackets", "sleep-infinity", "flock",
                 "uid=100(frr) gid=101(frr) groups=101(frr),102(frrvty)"):
        assert line in proc.stdout, proc.stdout


def test_speaker_image_ships_the_frr_mode_tools(built, roots):
    """As upstream's speaker/Dockerfile: /speaker, /cp-tool, /frr-metrics and /frr-reloader.sh (0755:
    cp-tool keeps the mode when the init containers copy them)."""
    root = roots["speaker"]
    assert image_config(built["metallb-speaker"])["Entrypoint"] == ["/speaker"]
    for path in ("speaker", "cp-tool", "frr-metrics", "frr-reloader.sh"):
        st = (root / path).stat()
        assert stat.S_ISREG(st.st_mode) and st.st_mode & 0o777 == 0o755, path
    assert hashlib.sha256((root / "frr-reloader.sh").read_bytes()).hexdigest() == RELOADER_SHA256
    assert (root / "frr-reloader.sh").read_text().startswith("#!/bin/bash\n")


# -- the speaker pod's FRR half ------------------------------------------------------------------------

def test_metallb_frr_pod_runs_in_the_images(roots):
    pod = metallb_frr_pod()
    spec = pod["spec"]
    frr = next(c for c in spec["containers"] if c["name"] == "frr")
    cp_files = next(c for c in spec["initContainers"] if c["name"] == "cp-frr-files")
    assert frr["command"][:2] == ["/bin/sh", "-c"] and "/usr/lib/frr/docker-start" in frr["command"][2]
    assert cp_files["command"][:2] == ["/bin/sh", "-c"]
    assert cp_files["securityContext"] == {"runAsUser": 100, "runAsGroup": 101}
    reloader = next(c for c in spec["containers"] if c["name"] == "reloader")
    assert reloader["command"] == ["/etc/frr_reloader/frr-reloader.sh"]
    metrics = next(c for c in spec["containers"] if c["name"] == "frr-metrics")
    assert metrics["command"] == ["/etc/frr_metrics/frr-metrics"] and metrics["args"] == ["--metrics-port=7473"]

    frr_root, speaker = roots["frr"], roots["speaker"]
    for d in ("proc", "dev", "etc/frr_reloader", "etc/frr_metrics", "tmp/frr"):
        (frr_root / d).mkdir(parents=True, exist_ok=True)
    for d in ("etc/frr_reloader", "etc/frr_metrics"):
        (speaker / d).mkdir(parents=True, exist_ok=True)
    for name, text in pod["startup"].items():  # the frr-startup ConfigMap, mounted at /tmp/frr
        (frr_root / "tmp/frr" / name).write_text(text)
    (frr_root / "tmp/cp-frr-files.sh").write_text(cp_files["command"][2])
    (frr_root / "tmp/frr-container.sh").write_text(frr["command"][2])
    (frr_root / "tmp/good.conf").write_text(GOOD)
    (frr_root / "tmp/bad.conf").write_text(BAD)

    proc = in_namespaces("sh", "-c", POD, "pod", str(frr_root), str(speaker), SCENARIO)
    out = steps(proc.stdout)
    assert proc.returncode == 0 and "frr-log" in out, proc.stdout[-6000:]
    log = f"\n--- reloader\n{out['reloader-log'][1][-3000:]}\n--- frr container\n{out['frr-log'][1][-3000:]}"
    assert out["started"][0] == 0, log

    # docker-start's watchfrr started what MetalLB's daemons file enables, as user frr
    assert set(out["daemons"][1].split()) == {"zebra", "bgpd", "watchfrr", "staticd", "bfdd"}, log
    users = {m[1]: m[0] for m in re.findall(r"^\s*(\S+)\s+/usr/lib/frr/(\w+) -d", out["ps"][1], re.M)}
    assert users == {"zebra": "frr", "bgpd": "frr", "staticd": "frr", "bfdd": "frr"}, out["ps"][1]
    assert "service integrated-vtysh-config" in out["initial"][1]

    # the reloader applied the config (frr-reload.py --test, then --reload --overwrite)
    assert out["reload-good"][1].strip().endswith("success"), log
    running = out["running"][1]
    for line in ("router bgp 64513", " neighbor 203.0.113.1 remote-as 64512", " neighbor 203.0.113.1 bfd profile lab",
                 "  neighbor 203.0.113.1 route-map 203.0.113.1-out out", "  network 198.51.100.10/32",
                 "ip prefix-list 203.0.113.1-allowed-ipv4 seq 1 permit 198.51.100.10/32",
                 " match ip address prefix-list 203.0.113.1-allowed-ipv4", " profile lab", "  detect-multiplier 5",
                 "  receive-interval 200", "  transmit-interval 250", "  minimum-ttl 250"):
        assert line in running.splitlines(), f"{line!r} not in:\n{running}{log}"
    assert "peer 203.0.113.1" in out["bfd"][1] and "Detect-multiplier: 5" in out["bfd"][1], out["bfd"][1]
    assert "router bgp 64513" in out["saved"][1]  # --overwrite wrote /etc/frr/frr.conf (as frr, in the emptyDir)

    # a config vtysh does not accept: the reloader reports failure and leaves the running config alone
    assert out["reload-bad"][1].strip().endswith("failure"), log
    assert "Syntax error spotted" in out["reloader-log"][1]
    assert " neighbor 203.0.113.1 timers 30 90" in out["running-after-bad"][1].splitlines()

    # frr-metrics (copied by cp-tool) runs in the frr image: its liveness probe finds every daemon
    assert out["livez"][1].strip() == "200", out["livez"][1] + log
    assert 'metallb_bfd_session_up{peer="203.0.113.1",vrf="default"}' in out["metrics"][1]
