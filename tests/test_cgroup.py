"""cgroup v1 nodes: Kubernetes v1.35 and later refuse them (the kubelet's failCgroupV1 defaults to
true, kubeadm's SystemVerification fails), so preflight names each such node before anything is
installed, with the fix; `spec.nodeConfig.allowCgroupV1` opts in (deprecated upstream), warned about
on every run, and tells the kubelet and kubeadm. The lab's nodes, on this cgroup v1 machine, run
with it (every lab test that creates a cluster starts a real kubelet from that configuration)."""
from __future__ import annotations

import yaml

from bmctl.config import parse_config
from bmctl.phases.preflight import cgroup_check
from bmctl.render import kubeadm_config
from bmctl.render.kubelet import lb_bootstrap_files
from bmctl.secrets import ClusterSecrets
from conftest import base_docs, dump


def config(version: str | None = None, allow: bool | None = None, path: str = "racks.yaml"):
    docs = base_docs()
    spec = docs[2]["spec"]
    if version is not None:
        spec["kubernetesVersion"] = version
    if allow is not None:
        spec.setdefault("nodeConfig", {})["allowCgroupV1"] = allow
    return parse_config(dump(docs), path)


def test_a_cgroup_v1_node_is_refused_from_1_35_naming_the_node_the_file_and_both_fixes():
    check = cgroup_check(config("v1.35.8"), "192.0.2.11", "tmpfs")
    assert check.status == "fail" and check.node == "192.0.2.11"
    assert "cgroup v1" in check.detail and "v1.35.8 refuses it" in check.detail
    assert "systemd.unified_cgroup_hierarchy=1" in check.detail  # boot with cgroup v2
    assert "spec.nodeConfig.allowCgroupV1: true in racks.yaml" in check.detail  # or opt in
    assert cgroup_check(config("v1.37.2"), "192.0.2.11", "tmpfs").status == "fail"


def test_cgroup_v2_passes_and_an_older_kubernetes_or_the_opt_in_only_warn():
    assert cgroup_check(config("v1.35.8"), "192.0.2.11", "cgroup2fs").status == "ok"
    older = cgroup_check(config("v1.34.2"), "192.0.2.11", "tmpfs")
    assert older.status == "warn" and "v1.35 and later refuse it" in older.detail
    allowed = cgroup_check(config("v1.35.8", allow=True), "192.0.2.11", "tmpfs")
    assert allowed.status == "warn" and "allowCgroupV1" in allowed.detail
    assert cgroup_check(config("v1.35.8"), "192.0.2.11", "unknown").status == "warn"


def test_the_opt_in_is_warned_about_naming_the_field_and_line():
    (warning,) = [w for w in config(allow=True).warnings if "allowCgroupV1" in w.path]
    assert warning.severity == "warning" and warning.line > 1
    assert "deprecated" in warning.message and "systemd.unified_cgroup_hierarchy=1" in warning.fix
    assert not [w for w in config(allow=False).warnings if "allowCgroupV1" in w.path]


def _docs(cfg, node, secrets) -> list[dict]:
    return [d for d in yaml.safe_load_all(kubeadm_config(cfg, node, secrets).content) if d]


def test_the_opt_in_tells_the_kubelet_and_kubeadm_on_every_node_and_nothing_without_it():
    secrets = ClusterSecrets.generate()
    on, off = config(allow=True), config()
    for cfg, wanted in ((on, True), (off, False)):
        for node in cfg.all_nodes:
            docs = _docs(cfg, node, secrets)
            registration = docs[0]["nodeRegistration"]
            assert (registration.get("ignorePreflightErrors") == ["SystemVerification"]) is wanted, node
        # the kubelet's configuration is the cluster's (init uploads it, every join downloads it)
        kubelet = next(d for d in _docs(cfg, cfg.control_plane_nodes[0], secrets)
                       if d.get("kind") == "KubeletConfiguration")
        assert (kubelet.get("failCgroupV1") is False) is wanted
        bootstrap = yaml.safe_load(lb_bootstrap_files(cfg)[0].content)
        assert (bootstrap.get("failCgroupV1") is False) is wanted
