"""bmctl logging in as a user other than root (nodeAccess.loginUser) and working through sudo, as on
most fleets: the lab's nodes have `bmctl-ops` (passwordless sudo) and `bmctl-plain` (no sudo rule),
with their own /etc/passwd, shadow, sudoers.d and /home (bmctl/lab/lab.py). Real sudo, sshd,
containerd, kubelet, kubeadm (run under sudo) and every pod of the cluster, on the lab's real nodes.
"""
from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from bmctl.lab.lab import PLAIN_USER, SUDO_USER, host_cgroup_v1
from lab.harness import NET, Kube, http_get, metallb_objects, running_lab, start_web_service, wait_for

PARTS = ("kubelet", "kubeadm", "crictl", "crane")
FOLDERS = ("etc_kubernetes", "etc_keepalived", "etc_haproxy", "var_lib_bmctl")


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    from conftest import require_tool
    require_tool("sudo")
    require_tool("nft")  # kube-proxy runs in nftables mode here: its table is read with nft
    with running_lab(tmp_path_factory.mktemp("sudo"), 1, 1, 1, needs=PARTS) as harness:
        yield harness


def as_user(lab, user: str, name: str, mutate=None) -> Path:
    """The lab's config as `user`; this module's cluster runs kube-proxy in nftables mode."""
    docs = list(yaml.safe_load_all(lab.config.read_text()))
    docs[2]["spec"]["nodeAccess"]["loginUser"] = user
    docs[2]["spec"]["clusterNetwork"]["kubeProxyMode"] = "nftables"
    if mutate:
        mutate(docs)
    path = lab.workdir / f"{name}.yaml"
    path.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    return path


def node_tree(lab) -> dict:
    """Every file under the folders bmctl writes, on every node: content hash, mode and owner."""
    out = {}
    for node in lab.nodes:
        base = lab.lab.state_dir / node["name"] / "fs"
        for folder in FOLDERS:
            for f in sorted((base / folder).rglob("*")):
                st = f.lstat()
                out[(node["name"], str(f.relative_to(base)))] = (
                    f.read_bytes() if f.is_file() else None, oct(st.st_mode & 0o7777), st.st_uid)
    return out


def logins(lab) -> dict[str, set[str]]:
    """The users each node's sshd let in so far (from its log)."""
    return {n["address"]: set(re.findall(r"Accepted publickey for (\S+) from",
                                         (lab.lab.state_dir / n["name"] / "sshd.log").read_text()))
            for n in lab.nodes}


def test_a_user_without_passwordless_sudo_is_refused_on_every_node_and_nothing_changes(lab):
    before = node_tree(lab)
    plain = as_user(lab, PLAIN_USER, "plain")
    proc = lab.bmctl("check", "preflight", config=plain)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    out = " ".join(proc.stdout.split())  # the table wraps long cells
    for node in lab.nodes:
        assert re.search(rf"{re.escape(node['address'])} │ ssh \+ sudo │ fail", out), out
    assert out.count(f"{PLAIN_USER} cannot sudo without a password") == len(lab.nodes)
    assert "NOPASSWD" in out
    proc = lab.bmctl("create", "cluster", config=plain)
    assert proc.returncode == 1
    err = " ".join((proc.stdout + proc.stderr).split())
    assert "Traceback" not in err
    assert f"{PLAIN_USER} cannot sudo without a password" in err and "NOPASSWD" in err, err
    assert node_tree(lab) == before
    assert lab.vip_holders() == []


def test_preflight_names_every_cgroup_v1_node_for_kubernetes_1_35_and_changes_nothing(lab):
    """The lab's nodes have this machine's cgroup v1. Asked for Kubernetes v1.35 without the opt-in,
    preflight fails on every node (read on the node: /sys/fs/cgroup is a tmpfs), naming the node and
    both fixes, before anything is written; with the lab's opt-in it only warns."""
    before = node_tree(lab)

    def v135(docs):
        docs[2]["spec"]["kubernetesVersion"] = "v1.35.8"
        docs[2]["spec"]["nodeConfig"].pop("allowCgroupV1", None)
    config = as_user(lab, SUDO_USER, "v135", v135)
    proc = lab.bmctl("check", "preflight", "-o", "json", config=config)
    rows = {c["node"]: c for c in yaml.safe_load(proc.stdout)["checks"] if c["check"] == "cgroup v2"}
    assert set(rows) == {n["address"] for n in lab.nodes}, proc.stdout
    if not host_cgroup_v1():  # a cgroup v2 machine: nothing to refuse
        assert {r["status"] for r in rows.values()} == {"ok"}, rows
        return
    assert proc.returncode == 1, proc.stdout + proc.stderr
    for row in rows.values():
        assert row["status"] == "fail" and "v1.35.8 refuses it" in row["detail"], row
        assert "systemd.unified_cgroup_hierarchy=1" in row["detail"] and f"allowCgroupV1: true in {config}" in row["detail"]
    assert node_tree(lab) == before
    proc = lab.bmctl("check", "preflight", "-o", "json", config=as_user(lab, SUDO_USER, "ops"))
    assert {c["status"] for c in yaml.safe_load(proc.stdout)["checks"] if c["check"] == "cgroup v2"} == {"warn"}, proc.stdout


def test_the_lab_accounts_carry_no_password_hash(lab):
    """The nodes' shadow file is a copy of this machine's with the lab users added: no account keeps
    a password hash in it (logins are by key), and it has the original's owner and mode."""
    copy = lab.lab.state_dir / "etc" / "shadow"
    fields = [line.split(":") for line in copy.read_text().splitlines()]
    assert {f[0] for f in fields} >= {SUDO_USER, PLAIN_USER, "root"}
    assert {f[1] for f in fields} <= {"*", "!*"}
    st, orig = copy.stat(), Path("/etc/shadow").stat()
    assert (st.st_uid, st.st_gid, st.st_mode) == (orig.st_uid, orig.st_gid, orig.st_mode)


def test_create_cluster_as_a_sudo_user(lab):
    ops = as_user(lab, SUDO_USER, "ops")
    proc = lab.bmctl("create", "cluster", config=ops, timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # bmctl logged in as the sudo user only: root never did
    for address, users in logins(lab).items():
        assert SUDO_USER in users and "root" not in users, (address, users)
    # what it wrote is root's, with the modes a root run gives
    lb = lab.lb_nodes()[0]
    cp = next(n for n in lab.nodes if n["role"] == "control-plane")
    for node, path, mode in ((lb, "/etc/haproxy/haproxy.cfg", 0o644), (lb, "/etc/keepalived/keepalived.conf", 0o644),
                             (cp, "/etc/kubernetes/admin.conf", 0o600),
                             (cp, "/var/lib/bmctl/kubeadm/kubeadm.log", 0o600)):
        st = lab.node_file(node, path).stat()
        assert (st.st_uid, st.st_mode & 0o7777) == (0, mode), (path, st.st_uid, oct(st.st_mode))
    assert lab.vip_holders() == [lb["address"]]
    assert lab.request(path="/readyz") is not None
    kube = Kube(lab)
    ip, _backend = start_web_service(lab, kube)
    wait_for(lambda: http_get(lab, ip), 30, f"the Service IP {ip} to answer")
    # ... through kube-proxy's nftables rules: its table on every node, no iptables Service chain
    for node in lab.nodes:
        tables = subprocess.run(["ip", "netns", "exec", node["netns"], "nft", "list", "tables"],
                                capture_output=True, text=True).stdout
        assert "table ip kube-proxy" in tables, (node["name"], tables)
        rules = subprocess.run(["ip", "netns", "exec", node["netns"], "iptables-save"],
                               capture_output=True, text=True).stdout
        assert "KUBE-SERVICES" not in rules, node["name"]
    # a re-run as that user finds nothing to do
    proc = lab.bmctl("create", "cluster", config=ops, timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "; 0 file(s) changed" in proc.stdout


def test_update_and_reset_as_a_sudo_user(lab):
    def add_pool(docs):
        docs[2]["spec"]["loadBalancer"]["addressPools"].append({"name": "extra", "addresses": [f"{NET.ip(220)}/30"]})
    proc = lab.bmctl("update", "loadbalancer", "--yes", config=as_user(lab, SUDO_USER, "ops-extra", add_pool),
                     timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert ("IPAddressPool", "extra") in metallb_objects(lab)
    proc = lab.bmctl("reset", "cluster", "--force", config=as_user(lab, SUDO_USER, "ops-extra", add_pool),
                     timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for node in lab.nodes:
        for path in ("/etc/kubernetes/admin.conf", "/etc/kubernetes/kubelet.conf", "/etc/haproxy/haproxy.cfg",
                     "/etc/keepalived/keepalived.conf", "/var/lib/bmctl/kubeadm/done"):
            assert not lab.node_file(node, path).exists(), (node["name"], path)
    assert lab.vip_holders() == []
    assert all("root" not in users for users in logins(lab).values())
    assert not os.path.exists(lab.workspace / "lab" / "lab-kubeconfig")
