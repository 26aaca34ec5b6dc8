"""What `update loadbalancer` allows and refuses, decided from the applied and desired configs alone
(bmctl/config/changes.py), and the refusal as the user sees it (`--dry-run` against the workspace copy
of the applied config: no machine involved)."""
from __future__ import annotations

import subprocess
import sys

import pytest

from bmctl.config import load_config, parse_config
from bmctl.config.changes import compare
from bmctl.config.loader import locate
from conftest import base_docs, dump

LB = ("spec", "loadBalancer")


def with_lb_pool(docs: list, nodes: list[str]) -> list:
    docs[2]["spec"]["loadBalancer"]["nodePoolSpec"] = {"nodes": [{"address": a} for a in nodes]}
    return docs


def configs(tmp_path, change, base=base_docs):
    old = base()
    new = base()
    change(new)
    (tmp_path / "applied.yaml").write_text(dump(old))
    (tmp_path / "desired.yaml").write_text(dump(new))
    return load_config(tmp_path / "applied.yaml"), load_config(tmp_path / "desired.yaml")


def lb(docs):
    return docs[2]["spec"]["loadBalancer"]


IMMUTABLE = {
    "mode": (lambda d: lb(d).update(mode="manual", addressPools=[]) or lb(d)["vips"].pop("ingressVIP"),
             "spec.loadBalancer.mode"),
    "port": (lambda d: lb(d)["ports"].update(controlPlaneLBPort=8443), "spec.loadBalancer.ports.controlPlaneLBPort"),
    "vip": (lambda d: lb(d)["vips"].update(controlPlaneVIP="192.0.2.9"), "spec.loadBalancer.vips.controlPlaneVIP"),
    "ingress": (lambda d: lb(d)["vips"].update(ingressVIP="192.0.2.101"), "spec.loadBalancer.vips.ingressVIP"),
    "addresses": (lambda d: lb(d)["addressPools"][0].update(addresses=["192.0.2.100-192.0.2.140"]),
                  "spec.loadBalancer.addressPools[0].addresses"),
    "vrid": (lambda d: lb(d).update(vrrp={"virtualRouterID": 7}), "spec.loadBalancer.vrrp.virtualRouterID"),
    "unicast": (lambda d: lb(d).update(vrrp={"unicast": True}), "spec.loadBalancer.vrrp.unicast"),
    "pods": (lambda d: d[2]["spec"]["clusterNetwork"]["pods"].update(cidrBlocks=["10.250.0.0/16"]),
             "spec.clusterNetwork.pods.cidrBlocks"),
    "nodePoolSpec added": (lambda d: with_lb_pool(d, ["192.0.2.31"]), "spec.loadBalancer.nodePoolSpec"),
}


@pytest.mark.parametrize("name", IMMUTABLE)
def test_immutable_change_is_refused_with_its_field(tmp_path, name):
    change, field = IMMUTABLE[name]
    applied, desired = configs(tmp_path, change)
    result = compare(applied, desired)
    problems = locate(desired, result.refused)
    assert any(p.path == field for p in problems), [p.path for p in problems]
    p = next(p for p in problems if p.path == field)
    assert p.line is not None and p.file.endswith("desired.yaml") and p.fix


def test_pool_removal_is_refused_naming_the_pool(tmp_path):
    applied, desired = configs(tmp_path, lambda d: lb(d)["addressPools"].pop())
    (finding,) = compare(applied, desired).refused
    assert "'pool2' was removed" in finding.message and "192.0.2.160/28" in finding.fix


def test_k8s_ip_of_an_lb_node_is_immutable(tmp_path):
    base = lambda: with_lb_pool(base_docs(), ["192.0.2.31", "192.0.2.32"])  # noqa: E731

    def change(d):
        lb(d)["nodePoolSpec"]["nodes"][1]["k8sIP"] = "192.0.2.42"
    applied, desired = configs(tmp_path, change, base)
    (finding,) = compare(applied, desired).refused
    assert finding.path == (*LB, "nodePoolSpec", "nodes", 1, "k8sIP")


def test_allowed_changes_are_grouped(tmp_path):
    base = lambda: with_lb_pool(base_docs(), ["192.0.2.31", "192.0.2.32"])  # noqa: E731

    def change(d):
        lb(d)["addressPools"].append({"name": "pool3", "addresses": ["192.0.2.200/29"], "avoidBuggyIPs": True})
        lb(d)["addressPools"][1]["manualAssign"] = False
        lb(d)["addressPools"][0]["avoidBuggyIPs"] = True
        lb(d)["nodePoolSpec"]["nodes"] = [{"address": "192.0.2.32"}, {"address": "192.0.2.33"}]
        d[2]["spec"]["controlPlane"]["nodePoolSpec"]["nodes"].pop()
        lb(d)["vrrp"] = {"advertInterval": 0.5}
    applied, desired = configs(tmp_path, change, base)
    result = compare(applied, desired)
    assert result.refused == []
    groups = {k: [c.text for c in v] for k, v in result.grouped().items()}
    assert groups == {
        "pools-add": ["pool pool3: 192.0.2.200/29 (avoidBuggyIPs)"],
        "pools-change": ["pool pool1: avoidBuggyIPs false -> true", "pool pool2: manualAssign true -> false"],
        "lb-remove": ["192.0.2.31"],
        "lb-add": ["192.0.2.33"],
        "backends": ["remove backend 192.0.2.13:6444"],
        "vrrp": ["advert interval 0.2 s -> 0.5 s"],
    }
    assert [n.address for n in result.lb_kept] == ["192.0.2.32"]


def test_no_change_is_empty(tmp_path):
    applied, desired = configs(tmp_path, lambda d: None)
    result = compare(applied, desired)
    assert result.changes == [] and result.refused == []


def test_refusal_from_the_command_line(tmp_path):
    """--dry-run compares with the workspace copy of the applied config; a refusal exits 1 and names
    each field with file:line and a fix, and nothing is written."""
    ws = tmp_path / "bmctl-workspace" / "t1"
    (ws / "applied").mkdir(parents=True)
    (ws / "applied" / "t1.yaml").write_text(dump(base_docs()))
    docs = base_docs()
    lb(docs)["vips"]["controlPlaneVIP"] = "192.0.2.9"
    lb(docs)["addressPools"].pop()
    (ws / "t1.yaml").write_text(dump(docs))
    proc = subprocess.run([sys.executable, "-m", "bmctl", "update", "loadbalancer", "-c", "t1", "--dry-run"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "spec.loadBalancer.vips.controlPlaneVIP" in proc.stderr and "t1.yaml:" in proc.stderr
    assert "'pool2' was removed" in proc.stderr and "nothing was changed" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (ws / "dry-run").exists()


def test_create_refuses_to_change_a_running_cluster(tmp_path):
    """Re-running `create cluster` with a VIP changed since the cluster was made: refused with the
    field's file:line and the way to go, before any node is contacted (run in an empty network
    namespace: a regression cannot reach anything)."""
    from conftest import require_root
    require_root()
    ws = tmp_path / "bmctl-workspace" / "t1"
    (ws / "applied").mkdir(parents=True)
    (ws / "applied" / "t1.yaml").write_text(dump(base_docs()))
    docs = base_docs()
    lb(docs)["vips"]["controlPlaneVIP"] = "192.0.2.9"
    (ws / "t1.yaml").write_text(dump(docs))
    proc = subprocess.run(["unshare", "--net", sys.executable, "-m", "bmctl", "create", "cluster", "-c", "t1"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    err = " ".join(proc.stderr.split())
    assert "spec.loadBalancer.vips.controlPlaneVIP" in err and "t1.yaml:" in err, err
    assert "1 change(s) above cannot be made to a running cluster; nothing was changed" in err, err
    assert "bmctl update loadbalancer" in err and "Traceback" not in err
    assert not (ws / "log").exists()  # no run started


def test_dry_run_prints_the_grouped_changes_and_the_plan(tmp_path):
    ws = tmp_path / "bmctl-workspace" / "t1"
    (ws / "applied").mkdir(parents=True)
    (ws / "applied" / "t1.yaml").write_text(dump(base_docs()))
    docs = base_docs()
    lb(docs)["addressPools"].append({"name": "pool3", "addresses": ["192.0.2.200/29"]})
    (ws / "t1.yaml").write_text(dump(docs))
    proc = subprocess.run([sys.executable, "-m", "bmctl", "update", "loadbalancer", "-c", "t1", "--dry-run"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Address pools to add" in proc.stdout and "pool pool3: 192.0.2.200/29" in proc.stdout
    assert "one node at a time" in proc.stdout
    assert "pool3" in (ws / "dry-run" / "cluster" / "06-metallb-pools.yaml").read_text()


def test_no_applied_config_is_a_clear_error(tmp_path):
    ws = tmp_path / "bmctl-workspace" / "t1"
    ws.mkdir(parents=True)
    (ws / "t1.yaml").write_text(dump(base_docs()))
    proc = subprocess.run([sys.executable, "-m", "bmctl", "update", "loadbalancer", "-c", "t1", "--dry-run"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and "no applied config" in proc.stderr and "create cluster" in proc.stderr


def test_bgp_peers_change_live_and_the_asn_does_not():
    def bgp(docs, peers, asn=64513):
        docs[2]["spec"]["loadBalancer"].update(type="bgp", localASN=asn, bgpPeers=peers)
        return docs
    a = bgp(base_docs(), [{"ip": "192.0.2.1", "asn": 64512}, {"ip": "192.0.2.2", "asn": 64512}])
    d = bgp(base_docs(), [{"ip": "192.0.2.1", "asn": 64520}, {"ip": "192.0.2.3", "asn": 64512}])
    ch = compare(parse_config(dump(a), "a.yaml"), parse_config(dump(d), "d.yaml"))
    assert not ch.refused
    texts = sorted(c.text for c in ch.changes if c.group == "bgp-peers")
    assert texts == ["add peer 192.0.2.3 (AS 64512)", "peer 192.0.2.1: AS 64512 -> 64520", "remove peer 192.0.2.2 (AS 64512)"]
    d2 = bgp(base_docs(), [{"ip": "192.0.2.1", "asn": 64512}], asn=64999)
    refused = compare(parse_config(dump(a), "a.yaml"), parse_config(dump(d2), "d.yaml")).refused
    assert any(f.path[-1] == "localASN" for f in refused)
