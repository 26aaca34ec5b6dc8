"""The control-plane VIP on a lab of real hosts: real sshd, keepalived and haproxy in network
namespaces, bmctl run from the client namespace as from an admin workstation.

Backends on :6444 are the small HTTPS stand-ins of tests/lab/kube-apiserver (real kube-apiservers
arrive with the Kubernetes issue).
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import time

import netaddr
import pytest
import yaml

from bmctl.lab.net import CANDIDATES

from lab.harness import NET, kill_at_random_points, running_lab, stop, wait_for, write_variant

VIP = NET.ip(10)


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    with running_lab(tmp_path_factory.mktemp("lab"), control_planes=3) as harness:
        harness.start_backends()
        yield harness


@pytest.fixture(scope="module")
def created(lab):
    proc = lab.bmctl("create", "cluster", "--until", "control-plane-lb")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def holders_settle(lab, nodes=None, timeout=10.0):
    return wait_for(lambda: (lambda h: h if len(h) == 1 else None)(lab.vip_holders(VIP, nodes)), timeout,
                    "exactly one VIP holder")


def test_preflight_catches_a_foreign_vrrp_router(lab, tmp_path):
    """Before the cluster exists, another VRRP router on the segment already uses our id."""
    from bmctl.config.model import derive_vrid
    vrid = derive_vrid("lab")
    conf = tmp_path / "foreign.conf"
    conf.write_text(f"""global_defs {{
    router_id foreign
    vrrp_version 3
}}
vrrp_instance foreign {{
    state BACKUP
    interface eth0
    virtual_router_id {vrid}
    priority 254
    advert_int 0.5
    virtual_ipaddress {{
        {NET.ip(70)}/32
    }}
}}
""")
    proc = lab.start_in(lab.client_ns, ["keepalived", "--dont-fork", "--vrrp", "-f", str(conf),
                                        "-p", str(tmp_path / "k.pid"), "-r", str(tmp_path / "v.pid")])
    try:
        time.sleep(2.5)  # becomes MASTER and sends adverts with our id
        res = lab.bmctl("check", "preflight", "--until", "control-plane-lb", "-o", "json")
        assert res.returncode == 1, res.stdout
        assert NET.ip(2) in failed_checks(res)["VRRP router id free"]
    finally:
        lab.extra.remove(proc)
        stop(proc)


def test_create_brings_up_the_vip(lab, created):
    out = created.stdout
    for phase in ("Preflight checks", "Node provisioning", "Control-plane load balancer"):
        assert phase in out
    assert f"holds the VIP {NET.ip(10)}" in out
    # from the client namespace, through the VIP, HAProxy reaches a backend on :6444
    bodies = {lab.request(path="/who") for _ in range(9)}
    assert bodies <= {"n1", "n2", "n3"} and bodies, bodies
    assert lab.request(path="/readyz") == "ok"
    assert len(lab.vip_holders(VIP)) == 1
    # logs: one file per host plus the whole run
    logs = sorted((lab.workspace / "lab" / "log").glob("create-cluster-*"))[-1]
    assert (logs / "run.log").exists() and (logs / f"{NET.ip(11)}.log").exists()


def test_files_on_nodes_match_the_dry_run(lab, created):
    proc = lab.bmctl("create", "cluster", "--dry-run")
    assert proc.returncode == 0, proc.stderr
    dry = lab.workspace / "lab" / "dry-run"
    for node in lab.control_planes():
        for path in ("/etc/haproxy/haproxy.cfg", "/etc/keepalived/keepalived.conf",
                     "/etc/kubernetes/manifests/haproxy.yaml", "/etc/kubernetes/manifests/keepalived.yaml"):
            assert lab.node_file(node, path).read_text() == (dry / node["address"] / path.lstrip("/")).read_text()
        assert oct(lab.node_file(node, "/etc/kubernetes/manifests/haproxy.yaml").stat().st_mode & 0o777) == "0o600"
        assert lab.node_file(node, "/etc/keepalived/check_haproxy.sh").stat().st_mode & 0o111


def test_second_run_changes_nothing(lab, created):
    pids = {n["name"]: (lab.pod_pid(n, "keepalived"), lab.pod_pid(n, "haproxy")) for n in lab.control_planes()}
    proc = lab.bmctl("create", "cluster", "--until", "control-plane-lb")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 file(s) changed" in proc.stdout
    assert proc.stdout.count("load-balancer files: 5 unchanged") == 3
    time.sleep(1.5)  # a restart would show up as a new pid
    assert {n["name"]: (lab.pod_pid(n, "keepalived"), lab.pod_pid(n, "haproxy")) for n in lab.control_planes()} == pids


def test_preflight_passes_on_the_running_cluster(lab, created):
    proc = lab.bmctl("check", "preflight", "--until", "control-plane-lb", "-o", "json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = yaml.safe_load(proc.stdout)
    assert report["ok"] is True
    assert {c["check"] for c in report["checks"]} >= {"ssh + sudo", "ports free", "one L2 subnet",
                                                       "addresses free", "VRRP router id free"}


def master(lab) -> dict:
    (address,) = holders_settle(lab)
    return lab.node(address)


def test_failover_on_link_cut(lab, created):
    old = master(lab)
    lab.set_link(old, up=False)
    try:
        took = lab.wait_request(timeout=15)
        others = [n for n in lab.control_planes() if n is not old]
        (new,) = holders_settle(lab, others)
        assert new != old["address"]
        assert took < 10
    finally:
        lab.set_link(old, up=True)
    # back on the segment, the isolated old master hears the new one and steps down: one holder
    holders_settle(lab, timeout=15)
    lab.wait_request(timeout=10)


def test_failover_when_keepalived_is_killed(lab, created):
    old = master(lab)
    os.kill(lab.pod_pid(old, "keepalived"), signal.SIGKILL)
    lab.wait_request(timeout=15)
    # the kubelet restarts keepalived (after its back-off); the VIP ends on exactly one node
    wait_for(lambda: lab.running(old, "keepalived"), 30, "keepalived restarted")
    holders_settle(lab, timeout=20)
    lab.wait_request(timeout=10)


def test_vip_leaves_a_node_whose_haproxy_hangs(lab, created):
    """The anchors' failure: keepalived kept the VIP on a node whose HAProxy was dead. A hung
    HAProxy (SIGSTOP) fails the track script, the node goes to FAULT and the VIP moves."""
    old = master(lab)
    pid = lab.pod_pid(old, "haproxy")
    os.killpg(os.getpgid(pid), signal.SIGSTOP)
    try:
        (new,) = wait_for(lambda: (lambda h: h if len(h) == 1 and h[0] != old["address"] else None)(
            lab.vip_holders(VIP)), 15, "the VIP to leave the node with the hung HAProxy")
        lab.wait_request(timeout=10)
    finally:
        os.killpg(os.getpgid(pid), signal.SIGCONT)
    holders_settle(lab)


def test_failover_when_haproxy_is_killed(lab, created):
    old = master(lab)
    os.kill(lab.pod_pid(old, "haproxy"), signal.SIGKILL)
    lab.wait_request(timeout=15)
    holders_settle(lab, timeout=15)


def test_a_stopped_backend_is_taken_out(lab, created):
    lab.stop_backend(NET.ip(12))
    try:
        time.sleep(3)  # HAProxy's check: inter 1s, fall 2
        bodies = [lab.request(path="/who") for _ in range(20)]
        assert None not in bodies and "n2" not in bodies, bodies
    finally:
        lab.start_backend(lab.node(NET.ip(12)))


def failed_checks(proc) -> dict:
    report = yaml.safe_load(proc.stdout)
    return {c["check"]: c["detail"] for c in report["checks"] if c["status"] == "fail"}


def test_preflight_catches_a_vip_outside_the_subnet(lab, created):
    # a documentation address that is neither on the lab segment nor in its pod range
    outside = str(netaddr.IPNetwork(next(c for c in CANDIDATES if c not in (NET.segment, NET.pods))).network + 200)

    def mutate(docs):
        docs[2]["spec"]["loadBalancer"]["vips"]["controlPlaneVIP"] = outside
    path = write_variant(lab, mutate, "outside.yaml")
    assert lab.bmctl("check", "config", config=path).returncode == 0  # the file alone cannot tell
    proc = lab.bmctl("check", "preflight", "--until", "control-plane-lb", "-o", "json", config=path)
    assert proc.returncode == 1
    assert outside in failed_checks(proc)["one L2 subnet"]


def test_preflight_catches_a_vip_in_use(lab, created):
    subprocess.run(["ip", "-n", lab.client_ns, "addr", "add", f"{NET.ip(60)}/24", "dev", "eth0"], check=True)
    try:
        def mutate(docs):
            docs[2]["spec"]["loadBalancer"]["vips"]["controlPlaneVIP"] = NET.ip(60)
        proc = lab.bmctl("check", "preflight", "--until", "control-plane-lb", "-o", "json", config=write_variant(lab, mutate, "inuse.yaml"))
        assert proc.returncode == 1
        assert NET.ip(60) in failed_checks(proc)["addresses free"]
    finally:
        subprocess.run(["ip", "-n", lab.client_ns, "addr", "del", f"{NET.ip(60)}/24", "dev", "eth0"], check=True)


def test_preflight_catches_a_taken_port(lab, created):
    node = lab.control_planes()[1]
    proc = lab.start_in(node["netns"], ["python3", "-m", "http.server", "7946", "--bind", node["address"]])
    try:
        wait_for(lambda: lab.lab._listening(node["netns"], 7946), 10, "listener on 7946")
        res = lab.bmctl("check", "preflight", "--until", "control-plane-lb", "-o", "json")
        assert res.returncode == 1
        failed = {c["node"]: c["detail"] for c in yaml.safe_load(res.stdout)["checks"] if c["status"] == "fail"}
        assert "tcp/7946" in failed[node["address"]]
    finally:
        lab.extra.remove(proc)
        stop(proc)


def test_unknown_host_keys_are_refused_unless_accepted(lab, created, tmp_path):
    known = tmp_path / "known_hosts"
    known.write_text("")

    def mutate(docs):
        docs[0]["sshKnownHostsPath"] = str(known)
    path = write_variant(lab, mutate, "unknown-keys.yaml")
    proc = lab.bmctl("check", "preflight", "--until", "control-plane-lb", config=path)
    assert proc.returncode == 1
    assert re.search(r"unknown host key ssh-ed25519 SHA256:\S+", proc.stderr), proc.stderr
    assert "--accept-new-host-keys" in proc.stderr and "Traceback" not in proc.stderr
    proc = lab.bmctl("check", "preflight", "--until", "control-plane-lb", "--accept-new-host-keys", config=path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert len(known.read_text().splitlines()) == 3


def test_changed_host_key_is_always_refused(lab, created, tmp_path):
    real = (lab.lab.state_dir / "known_hosts").read_text().splitlines()
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "forged")], check=True)
    fake_key = (tmp_path / "forged.pub").read_text().split()[1]
    first = real[0].split()
    known = tmp_path / "known_hosts"
    known.write_text("\n".join([f"{first[0]} ssh-ed25519 {fake_key}", *real[1:]]) + "\n")

    def mutate(docs):
        docs[0]["sshKnownHostsPath"] = str(known)
    path = write_variant(lab, mutate, "changed-key.yaml")
    proc = lab.bmctl("check", "preflight", "--until", "control-plane-lb", "--accept-new-host-keys", config=path)
    assert proc.returncode == 1
    assert "CHANGED" in proc.stderr and first[0] in proc.stderr


def test_killed_run_converges(lab, created):
    """bmctl killed in the middle of writing configs; the next run converges with nothing half-written."""
    def mutate(docs):
        docs[2]["spec"]["loadBalancer"]["ports"]["controlPlaneLBPort"] = 8443
    path = write_variant(lab, mutate, "port-8443.yaml")
    # Copy the workspace name: the variant is the same cluster "lab"
    run = lab.bmctl("create", "cluster", "--force", "--until", "control-plane-lb", config=path, background=True)
    wait_for(lambda: any("8443" in lab.node_file(n, "/etc/haproxy/haproxy.cfg").read_text()
                         for n in lab.control_planes()), 60, "the first rewritten haproxy.cfg", interval=0.01)
    os.killpg(run.pid, signal.SIGKILL)
    run.wait()
    proc = lab.bmctl("create", "cluster", "--until", "control-plane-lb", config=path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "took over the lock of create cluster" in proc.stdout  # its holder is dead: no waiting
    for node in lab.control_planes():
        folder = lab.node_file(node, "/etc/kubernetes/manifests/haproxy.yaml").parent
        assert not [p for p in folder.iterdir() if p.name.startswith(".bmctl.")]
        assert "bind *:8443" in lab.node_file(node, "/etc/haproxy/haproxy.cfg").read_text()
    assert lab.wait_request(port=8443, timeout=20) < 20
    # and back to the original config; the replaced version is kept as a backup
    proc = lab.bmctl("create", "cluster", "--until", "control-plane-lb")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lab.wait_request(timeout=20)
    for node in lab.control_planes():
        assert "bind *:8443" not in lab.node_file(node, "/etc/haproxy/haproxy.cfg").read_text()
        backup = lab.node_file(node, "/var/backups/bmctl/etc/haproxy/haproxy.cfg")
        assert "bind *:8443" in backup.read_text()


def lock_file(lab):
    return lab.lab.state_dir / lab.control_planes()[0]["name"] / "fs" / "var_lib_bmctl" / "lock"


def test_a_second_run_is_refused_naming_the_holder(lab, created):
    first = lab.bmctl("create", "cluster", "--until", "control-plane-lb", background=True)
    try:
        wait_for(lambda: lock_file(lab).exists() and f"pid {first.pid}" in lock_file(lab).read_text(), 30,
                 "the first run's lock", interval=0.05)
        second = lab.bmctl("create", "cluster", "--until", "control-plane-lb")
        assert second.returncode == 1
        assert "another bmctl run holds the lock" in second.stderr and f"pid {first.pid}" in second.stderr
        assert "create cluster" in second.stderr and "Traceback" not in second.stderr
    finally:
        out, err = first.communicate(timeout=300)
    assert first.returncode == 0, out + err
    assert not lock_file(lab).exists()  # released at the end


def test_a_stale_lock_is_taken_over(lab, created):
    path = lock_file(lab)
    stale = int(time.time()) - 600
    path.write_text(f"token=feedface\nowner=ops@elsewhere pid 4242\ncommand=update loadbalancer\n"
                    f"started=2026-01-01T00:00:00Z\nheartbeat={stale}\n")
    proc = lab.bmctl("create", "cluster", "--until", "control-plane-lb")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "took over the lock of update loadbalancer by ops@elsewhere pid 4242" in proc.stdout
    assert not path.exists()


def drop(lab, node: dict, on: bool) -> None:
    """Drop every frame between the node and the bridge (its port down in the bridge namespace):
    its sshd sees nothing, open TCP connections stall."""
    lab.set_link(node, up=not on)


FAST_SSH = {"BMCTL_SSH_STALL_SECONDS": "3", "BMCTL_SSH_RETRY_SECONDS": "20"}


def test_a_short_ssh_outage_is_ridden_out(lab, created, monkeypatch):
    for k, v in FAST_SSH.items():
        monkeypatch.setenv(k, v)
    node = lab.control_planes()[1]
    drop(lab, node, True)
    try:
        run = lab.bmctl("create", "cluster", "--force", "--until", "control-plane-lb", background=True)
        time.sleep(6)
    finally:
        drop(lab, node, False)
    out, err = run.communicate(timeout=120)
    assert run.returncode == 0, out + err
    logs = sorted((lab.workspace / "lab" / "log").glob("create-cluster-*"))[-1]
    assert "retrying" in (logs / f"{node['address']}.log").read_text()


def test_a_long_ssh_outage_fails_naming_the_host_and_a_rerun_converges(lab, created, monkeypatch):
    for k, v in FAST_SSH.items():
        monkeypatch.setenv(k, v)
    def mutate(docs):
        docs[2]["spec"]["loadBalancer"]["vrrp"] = {"advertInterval": 0.3}
    path = write_variant(lab, mutate, "advert-0.3.yaml")
    node = lab.control_planes()[1]
    drop(lab, node, True)
    try:
        start = time.monotonic()
        proc = lab.bmctl("create", "cluster", "--force", "--until", "control-plane-lb", config=path, timeout=180)
        took = time.monotonic() - start
    finally:
        drop(lab, node, False)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert f"{node['address']}:" in proc.stderr and "connection lost" in proc.stderr and "retried for 20 s" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert took < 20 + 3 * 3 + 30, took  # the retry bound, a last connect, start-up
    proc = lab.bmctl("create", "cluster", "--until", "control-plane-lb", config=path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    dry = lab.bmctl("create", "cluster", "--dry-run", config=path)
    assert dry.returncode == 0
    for n in lab.control_planes():
        text = lab.node_file(n, "/etc/keepalived/keepalived.conf").read_text()
        assert "advert_int 0.3" in text
        for f in ("/etc/haproxy/haproxy.cfg", "/etc/keepalived/keepalived.conf"):
            assert lab.node_file(n, f).read_text() == (lab.workspace / "lab" / "dry-run" / n["address"] /
                                                        f.lstrip("/")).read_text()
    assert lab.bmctl("create", "cluster", "--until", "control-plane-lb").returncode == 0


def test_shell_metacharacters_never_run_anything(lab, created, tmp_path):
    """Every string a user writes, set to something that would create a marker file if it ever
    reached a shell (here, on a node or on this machine): rejected by validation, or used as plain
    data (key paths are opened by paramiko), never run."""
    marker = tmp_path / "pwned"
    payloads = [f"x;touch {marker}", f"$(touch {marker})", f"x'\ntouch {marker} '"]
    fields = {
        "sshPrivateKeyPath": lambda d, v: d[0].update(sshPrivateKeyPath=v),
        "sshKnownHostsPath": lambda d, v: d[0].update(sshKnownHostsPath=v),
        "loginUser": lambda d, v: d[2]["spec"]["nodeAccess"].update(loginUser=v),
        "node address": lambda d, v: d[2]["spec"]["controlPlane"]["nodePoolSpec"]["nodes"][1].update(address=v),
        "pool name": lambda d, v: d[2]["spec"]["loadBalancer"]["addressPools"][0].update(name=v),
        "vrrp interface": lambda d, v: d[2]["spec"]["loadBalancer"].update(vrrp={"interface": v}),
        "cluster name": lambda d, v: d[2]["metadata"].update(name=v),
    }
    for field, mutate in fields.items():
        for i, payload in enumerate(payloads):
            path = write_variant(lab, lambda docs: mutate(docs, payload), f"inject-{i}.yaml")
            for args in (["check", "preflight", "--until", "control-plane-lb"],
                         ["create", "cluster", "--until", "control-plane-lb"]):
                proc = lab.bmctl(*args, config=path, timeout=120)
                assert proc.returncode == 1, (field, payload, proc.stdout, proc.stderr)
                assert "Traceback" not in proc.stderr
                assert not marker.exists(), (field, payload, args)
    # nothing on the nodes changed either: a normal run finds every file as it was
    proc = lab.bmctl("create", "cluster", "--until", "control-plane-lb")
    assert proc.returncode == 0 and "0 file(s) changed" in proc.stdout, proc.stdout + proc.stderr


def test_a_rebooted_node_comes_back_with_its_vip_machinery(lab, created):
    """The VIP master loses power (every process of the node SIGKILLed, its /run gone) and boots
    again: the VIP moves away at once, and the node's keepalived and haproxy come back from the
    static pod manifests, ready to take the VIP again."""
    old = master(lab)
    pids = (lab.pod_pid(old, "keepalived"), lab.pod_pid(old, "haproxy"))
    lab.reboot(old)
    lab.wait_request(timeout=15)
    wait_for(lambda: all(lab.running(old, p) for p in ("keepalived", "haproxy")), 60,
             "the static pods to start again")
    assert (lab.pod_pid(old, "keepalived"), lab.pod_pid(old, "haproxy")) != pids
    holders_settle(lab, timeout=20)
    others = [n for n in lab.control_planes() if n is not old]
    for n in others:
        lab.set_link(n, up=False)
    try:
        wait_for(lambda: lab.vip_holders(VIP, [old]) == [old["address"]], 20, "the rebooted node to take the VIP")
        lab.wait_request(timeout=15)
    finally:
        for n in others:
            lab.set_link(n, up=True)
    holders_settle(lab, timeout=20)


def managed_files(lab) -> dict:
    out = {}
    for n in lab.control_planes():
        for f in ("/etc/haproxy/haproxy.cfg", "/etc/keepalived/keepalived.conf", "/etc/keepalived/check_haproxy.sh",
                  "/etc/kubernetes/manifests/haproxy.yaml", "/etc/kubernetes/manifests/keepalived.yaml",
                  "/etc/sysctl.d/90-bmctl.conf", "/etc/modules-load.d/bmctl.conf"):
            p = lab.node_file(n, f)
            out[(n["name"], f)] = (p.read_text(), oct(p.stat().st_mode & 0o777)) if p.exists() else None
        folder = lab.node_file(n, "/etc/haproxy/haproxy.cfg").parent
        out[(n["name"], "temp files")] = sorted(p.name for p in folder.iterdir() if p.name.startswith(".bmctl."))
    return out


def test_killed_at_random_points_every_rerun_converges(lab, created):
    """bmctl SIGKILLed at 20 random moments of `create cluster` (to the control-plane LB), each time
    re-run (and killed again); the last, uninterrupted run leaves exactly what an uninterrupted run
    leaves: every managed file, its mode, no temp file, one VIP holder answering. (A run that
    finishes before its kill is undone, so the next has work.)"""
    import random
    rng = random.Random(20261123)
    def mutate(docs):
        docs[2]["spec"]["loadBalancer"]["vrrp"] = {"advertInterval": 0.25}
    target = write_variant(lab, mutate, "advert-0.25.yaml")
    # the uninterrupted reference (and how long it takes), then back to the original config
    start = time.monotonic()
    assert lab.bmctl("create", "cluster", "--force", "--until", "control-plane-lb", config=target).returncode == 0
    took = time.monotonic() - start
    reference = managed_files(lab)
    assert lab.bmctl("create", "cluster", "--force", "--until", "control-plane-lb").returncode == 0
    assert managed_files(lab) != reference
    kills = kill_at_random_points(
        lambda: lab.bmctl("create", "cluster", "--force", "--until", "control-plane-lb", config=target,
                          background=True),
        rng, took,
        undo=lambda: lab.bmctl("create", "cluster", "--force", "--until", "control-plane-lb"))
    print(f"uninterrupted run {took:.1f} s; killed at {len(kills)} points: {sorted(kills)}")
    assert len(kills) == 20, kills
    proc = lab.bmctl("create", "cluster", "--force", "--until", "control-plane-lb", config=target)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert managed_files(lab) == reference
    holders_settle(lab, timeout=20)
    lab.wait_request(timeout=15)
    assert lab.bmctl("create", "cluster", "--force", "--until", "control-plane-lb").returncode == 0
