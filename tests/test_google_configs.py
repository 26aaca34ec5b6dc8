"""Configs written by others for Google's bmctl (tests/google_configs/, each with its source and licence)
load as they are, or are refused only for a clearly named unsupported Google feature or a real fault;
with the refused parts taken out, each one validates, dry-runs and renders."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import netaddr
import pytest
import yaml

from bmctl.config import ConfigError, load_config
from conftest import EXAMPLES, REPO
import test_render

CORPUS = sorted((REPO / "tests/google_configs").glob("*.yaml"))
DOC_RANGES = [netaddr.IPNetwork(n) for n in ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24", "2001:db8::/32")]


def header(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        m = re.match(r"^# (Source|Licence|Placeholders filled|Addresses|expect): (.+)$", line)
        if m:
            out[m.group(1)] = m.group(2)
    return out


def expected_refusals(path: Path) -> set[str]:
    expect = header(path)["expect"]
    return set() if expect == "loads" else {p.strip() for p in expect.removeprefix("refused ").split(",")}


def without(text: str, paths: set[str]) -> str:
    """The config with the refused keys of its Cluster document taken out (what a user does by hand)."""
    docs = list(yaml.safe_load_all(text))
    cluster = next(d for d in docs if isinstance(d, dict) and d.get("kind") == "Cluster")
    for path in paths:
        *parents, key = path.split(".")
        target = cluster
        for part in parents:
            target = target[part]
        del target[key]
    return yaml.safe_dump_all(docs, sort_keys=False)


def bmctl(*args, cwd):
    return subprocess.run([sys.executable, "-m", "bmctl", *args], capture_output=True, text=True, cwd=cwd, timeout=120)


def test_corpus_is_large_and_sourced():
    assert len(CORPUS) >= 12
    sources = set()
    for path in CORPUS:
        h = header(path)
        assert {"Source", "Licence", "Placeholders filled", "expect"} <= set(h), path.name
        sources.add(h["Source"].split(" at ")[0])
    assert len(sources) >= 8, "configs from several files, not one file in many copies"


@pytest.mark.parametrize("path", CORPUS, ids=lambda p: p.stem)
def test_google_config_loads_or_names_the_unsupported_feature(path, tmp_path):
    refused = expected_refusals(path)
    if not refused:
        config = load_config(path)
    else:
        with pytest.raises(ConfigError) as info:
            load_config(path)
        errors = info.value.errors
        assert {p.path for p in errors} == refused, "\n".join(p.render() for p in errors)
        for p in errors:
            text = p.render()
            assert "Google bmctl's" in text and "is not supported by bmctl" in text and "Fix: remove" in text
            assert re.search(rf"\({re.escape(str(path))}:\d+:\d+\)", text), text
        problems = info.value.problems
        assert not any("unknown field" in p.message for p in problems)
        # a user removes what was refused, and nothing else
        stripped = tmp_path / path.name
        stripped.write_text(without(path.read_text(), refused))
        config = load_config(stripped)
        path = stripped
    warned = [w.path for w in config.warnings]
    assert len(warned) == len(set(warned)), "each Google field is warned about once"
    for key in ("spec.gkeConnect", "spec.anthosBareMetalVersion"):
        if key.split(".")[-1] in path.read_text():
            assert key in warned
    for node in config.all_nodes:
        assert any(netaddr.IPAddress(node.address) in net for net in DOC_RANGES), node.address
    assert any(netaddr.IPAddress(config.lb.vips.controlPlaneVIP) in net for net in DOC_RANGES)

    proc = bmctl("create", "cluster", "-c", str(path), "--dry-run", "--workspace", str(tmp_path / "ws"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert "Traceback" not in proc.stderr
    out = tmp_path / "ws" / config.name / "dry-run"
    for node in config.all_nodes:
        kubeadm = list(yaml.safe_load_all((out / node.address / "etc/kubernetes/bmctl/kubeadm.yaml").read_text()))
        assert kubeadm[0]["nodeRegistration"]["kubeletExtraArgs"][0] == {"name": "node-ip", "value": node.ip}
    kubeadm_text = "".join(p.read_text() for p in out.rglob("kubeadm.yaml"))
    if config.bundled:
        assert "HAProxy" in kubeadm_text and list(out.rglob("keepalived.conf"))
    else:  # manual: no load-balancer wording, no load-balancer files
        assert not list(out.rglob("keepalived.conf")) and not list(out.rglob("haproxy.cfg"))
        assert "VRRP" not in proc.stdout and "HAProxy" not in kubeadm_text
    pods = config.spec.nodeConfig.podDensity.maxPodsPerNode
    if pods is not None:
        init = next(yaml.safe_load_all((out / config.control_plane_nodes[0].address /
                                        "etc/kubernetes/bmctl/kubeadm.yaml").read_text()))
        assert {"name": "max-pods", "value": str(pods)} in init["nodeRegistration"]["kubeletExtraArgs"]
    if config.runs_metallb:  # every Kubernetes object and MetalLB resource matches its schema
        test_render.test_manifests_match_kubernetes_schemas((out, None))


def test_admin_config_gets_no_metallb(tmp_path):
    path = REPO / "tests/google_configs/bash-admin.yaml"
    stripped = tmp_path / "admin.yaml"
    stripped.write_text(without(path.read_text(), expected_refusals(path)))
    config = load_config(stripped)
    assert config.spec.type == "admin" and config.bundled
    proc = bmctl("create", "cluster", "-c", str(stripped), "--dry-run", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "MetalLB" not in proc.stdout and "Control-plane load balancer" in proc.stdout
    out = tmp_path / "bmctl-workspace" / config.name / "dry-run"
    assert not list(out.glob("cluster/*metallb*"))
    assert list(out.rglob("keepalived.conf")), "the API VIP is still served by Keepalived + HAProxy"


def test_examples_and_template_load_without_warnings(tmp_path):
    for path in EXAMPLES:
        assert not [w for w in load_config(path).warnings if w.path != "sshPrivateKeyPath"], path.name
    assert bmctl("create", "config", "-c", "fresh", cwd=tmp_path).returncode == 0
    text = (tmp_path / "bmctl-workspace/fresh/fresh.yaml").read_text()
    assert "cni: flannel" in text
