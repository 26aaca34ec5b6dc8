"""The node software's configuration (bmctl/render/node_software.py), checked with the real parts
where they run here: Debian's containerd loads every rendered config.toml (`containerd config dump`)
and must show our values at their place; the containerd unit against containerd's own; registry
mirrors, credentials and the proxy as a user writes them in the config."""
from __future__ import annotations

import base64
import json
import subprocess
import tomllib

import pytest

from bmctl.config import parse_config
from bmctl.config.registries import access, no_proxy
from bmctl.render import node_software as ns
from bmctl.render.facts import NodeFacts
from conftest import base_docs, dump, require_tool, upstream_file

CONTAINERD_UPSTREAM = ("github.com/containerd/containerd/v2", "v2.2.9", "containerd.service",
                       "1941362cbaa89dd591b99c32b050d82c583d3cd2e5fa63085d7017457ec5fca8")
CA = "-----BEGIN CERTIFICATE-----\nMIIBfake\n-----END CERTIFICATE-----\n"
LAB_NODE = NodeFacts("eth0", init="other", cap_sys_resource=False)
SYSTEMD_NODE = NodeFacts("eth0", init="systemd", cap_sys_resource=True)


def config_with(tmp_path, mutate=None):
    docs = base_docs()
    if mutate:
        mutate(docs, tmp_path)
    path = tmp_path / "cluster.yaml"
    path.write_text(dump(docs))
    return parse_config(path.read_text(), str(path))


def containerd_dump(tmp_path, text: str) -> dict:
    """What Debian's containerd makes of a config file (it fails on one it cannot parse)."""
    containerd = require_tool("containerd")
    f = tmp_path / "config.toml"
    f.write_text(text)
    proc = subprocess.run([containerd, "--config", str(f), "config", "dump"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return tomllib.loads(proc.stdout)


def cri(dumped: dict) -> dict:
    return dumped["plugins"]["io.containerd.grpc.v1.cri"]


def mirrors(docs, tmp_path):
    (tmp_path / "ca.crt").write_text(CA)
    (tmp_path / "config.json").write_text(json.dumps({"auths": {"10.0.0.5:5000": {
        "auth": base64.b64encode(b"puller:s3cr\"et").decode()}}}))
    docs[0]["registryMirrors"] = [
        {"endpoint": "https://10.0.0.5:5000/v2/team", "caCertPath": "ca.crt", "pullCredentialConfigPath": "config.json",
         "hosts": ["registry.k8s.io", "quay.io"]},
        {"endpoint": "http://10.0.0.6:5000"}]


@pytest.mark.parametrize("facts,driver", [(LAB_NODE, "cgroupfs"), (SYSTEMD_NODE, "systemd")])
def test_containerd_loads_the_config_with_our_values(tmp_path, facts, driver):
    config = config_with(tmp_path)
    files = ns.containerd_files(config, "registry.example/pause:3.10.1", facts, ns.cgroup_driver([facts]),
                                access(config))
    main = next(f for f in files if f.path == ns.CONTAINERD_CONFIG)
    assert main.mode == 0o644 and not main.secret  # no credential in it
    got = cri(containerd_dump(tmp_path, main.content))
    assert got["sandbox_image"] == "registry.example/pause:3.10.1"
    assert got["containerd"]["runtimes"]["runc"]["options"]["SystemdCgroup"] is (driver == "systemd")
    assert got["restrict_oom_score_adj"] is (not facts.cap_sys_resource)
    assert got["registry"]["config_path"] == ns.CERTS_DIR
    assert got["cni"]["bin_dir"] == "/opt/cni/bin"


def test_one_node_without_systemd_makes_the_cluster_cgroupfs():
    assert ns.cgroup_driver([SYSTEMD_NODE, SYSTEMD_NODE]) == "systemd"
    assert ns.cgroup_driver([SYSTEMD_NODE, LAB_NODE]) == "cgroupfs"


def test_mirrors_become_hosts_toml_with_ca_and_namespace_and_the_credential_a_0600_config(tmp_path):
    config = config_with(tmp_path, mirrors)
    files = {f.path: f for f in ns.containerd_files(config, "p:1", SYSTEMD_NODE, "systemd", access(config))}
    k8s = tomllib.loads(files[f"{ns.CERTS_DIR}/registry.k8s.io/hosts.toml"].content)
    assert k8s["server"] == "https://registry.k8s.io"
    host = k8s["host"]["https://10.0.0.5:5000/v2/team"]
    assert host["capabilities"] == ["pull", "resolve"] and host["override_path"] is True
    assert files[host["ca"]].content == CA and host["ca"].startswith(f"{ns.CERTS_DIR}/registry.k8s.io/")
    assert f"{ns.CERTS_DIR}/quay.io/hosts.toml" in files
    docker = tomllib.loads(files[f"{ns.CERTS_DIR}/docker.io/hosts.toml"].content)  # hosts omitted: docker.io
    assert docker["server"] == "https://registry-1.docker.io" and "http://10.0.0.6:5000" in docker["host"]
    main = files[ns.CONTAINERD_CONFIG]
    assert main.mode == 0o600 and main.secret
    auth = cri(containerd_dump(tmp_path, main.content))["registry"]["configs"]["10.0.0.5:5000"]["auth"]
    assert (auth["username"], auth["password"]) == ("puller", 's3cr"et')


def test_private_registry_gets_its_ca_and_credential(tmp_path):
    def private(docs, tmp):
        (tmp / "ca.crt").write_text(CA)
        (tmp / "config.json").write_text(json.dumps({"auths": {"reg.example.com:5000": {
            "username": "u", "password": "p"}}}))
        docs[2]["spec"]["nodeConfig"] = {"privateRegistries": [
            {"host": "reg.example.com:5000", "caCertPath": "ca.crt", "pullCredentialConfigPath": "config.json"}]}
    config = config_with(tmp_path, private)
    files = {f.path: f for f in ns.containerd_files(config, "p:1", SYSTEMD_NODE, "systemd", access(config))}
    hosts = tomllib.loads(files[f"{ns.CERTS_DIR}/reg.example.com:5000/hosts.toml"].content)
    assert hosts["server"] == "https://reg.example.com:5000"
    assert files[hosts["host"]["https://reg.example.com:5000"]["ca"]].content == CA
    auth = cri(containerd_dump(tmp_path, files[ns.CONTAINERD_CONFIG].content))["registry"]["configs"]
    assert auth["reg.example.com:5000"]["auth"]["username"] == "u"


def test_proxy_drop_ins_keep_the_cluster_and_the_mirrors_direct(tmp_path):
    def proxy(docs, tmp):
        mirrors(docs, tmp)
        docs[2]["spec"]["proxy"] = {"url": "http://proxy.example.com:3128", "noProxy": [".corp.example.com"]}
    config = config_with(tmp_path, proxy)
    skip = no_proxy(config)
    for expected in [".corp.example.com", "localhost", "127.0.0.1", *config.spec.clusterNetwork.pods.cidrBlocks,
                     *config.spec.clusterNetwork.services.cidrBlocks, config.lb.vips.controlPlaneVIP,
                     *[n.address for n in config.all_nodes], "10.0.0.5", "10.0.0.6", ".svc"]:
        assert expected in skip, expected
    files = ns.proxy_files(config)
    assert [f.path for f in files] == list(ns.PROXY_DROPINS.values())
    text = files[0].content
    assert 'Environment="HTTPS_PROXY=http://proxy.example.com:3128"' in text
    assert f'Environment="NO_PROXY={",".join(skip)}"' in text
    assert all(f.mode == 0o644 for f in files)


def test_a_proxy_password_makes_the_drop_ins_0600(tmp_path):
    config = config_with(tmp_path, lambda docs, tmp: docs[2]["spec"].update(
        proxy={"url": "http://user:pa%ss@proxy.example.com:3128"}))
    files = ns.proxy_files(config)
    assert all(f.mode == 0o600 and f.secret for f in files)
    assert "pa%%ss" in files[0].content  # systemd would expand a lone %


def test_containerd_unit_has_upstreams_settings():
    upstream = upstream_file(*CONTAINERD_UPSTREAM).read_text()

    def settings(text: str) -> list[str]:
        return [line for line in text.splitlines() if line and not line.startswith("#") and "=" in line]
    ours = ns.unit_files("2.2.9")[0]
    assert ours.path == "/etc/systemd/system/containerd.service"
    assert settings(ours.content) == settings(upstream)


def test_kubelet_units_run_the_installed_kubelet():
    units = {f.path: f.content for f in ns.unit_files("2.2.9")}
    assert "ExecStart=/usr/local/bin/kubelet\n" in units[ns.KUBELET_UNIT]
    dropin = units[ns.KUBEADM_DROPIN]
    assert "EnvironmentFile=-/var/lib/kubelet/kubeadm-flags.env" in dropin
    assert dropin.rstrip().endswith("ExecStart=/usr/local/bin/kubelet $KUBELET_KUBECONFIG_ARGS $KUBELET_CONFIG_ARGS "
                                    "$KUBELET_KUBEADM_ARGS $KUBELET_EXTRA_ARGS")


def test_dry_run_shows_the_package_install_without_a_bundle(tmp_path):
    """Without bundlePath the nodes install from their package manager: the dry run (which reads no
    node, so knows no OS) writes both families' scripts, pinned to the release's version."""
    import os
    import sys
    config = tmp_path / "cluster.yaml"
    config.write_text(dump(base_docs()))
    proc = subprocess.run([sys.executable, "-m", "bmctl", "create", "cluster", "-c", str(config), "--dry-run",
                           "--workspace", str(tmp_path / "ws")], capture_output=True, text=True,
                          env={**os.environ, "COLUMNS": "200"})
    assert proc.returncode == 0, proc.stderr
    assert "from the node's package manager (pkgs.k8s.io, pinned and held)" in proc.stdout
    node = base_docs()[2]["spec"]["controlPlane"]["nodePoolSpec"]["nodes"][0]["address"]
    out = next((tmp_path / "ws").glob(f"*/dry-run/{node}"))
    debian = (out / "var/lib/bmctl/install-packages-debian.sh").read_text()
    assert "1.34.2-1.1" in debian and "apt-mark hold" in debian
    assert "pkgs.k8s.io/core:/stable:/v1.34/deb/" in (out / "etc/apt/sources.list.d/kubernetes.list").read_text()
    assert "pinned kubelet 1.34.2" in (out / "var/lib/bmctl/install-packages-rhel.sh").read_text()
    assert not (out / "etc/systemd/system/containerd.service").exists()  # the packages bring the units
