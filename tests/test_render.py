"""Rendered files of every example are valid for the real tools and carry the settings SPEC.md asks for.

keepalived -t and haproxy -c are the Debian binaries; Kubernetes manifests are checked against the
Kubernetes OpenAPI schemas (kubernetes-validate) and MetalLB objects against our CRDs' schemas.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

from conftest import EXAMPLES, require_root, require_tool

K8S_VERSION = "1.34.0"


def dry_run(config: Path, workspace: Path) -> Path:
    proc = subprocess.run([sys.executable, "-m", "bmctl", "create", "cluster", "-c", str(config), "--dry-run",
                           "--workspace", str(workspace)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert "Traceback" not in proc.stderr
    name = yaml.safe_load_all(config.read_text())
    cluster = next(d for d in name if d and d.get("kind") == "Cluster")["metadata"]["name"]
    return workspace / cluster / "dry-run"


@pytest.fixture(scope="module", params=EXAMPLES, ids=[p.stem for p in EXAMPLES])
def rendered(request, tmp_path_factory):
    ws = tmp_path_factory.mktemp("ws")
    out = dry_run(request.param, ws)
    plan = json.loads((out / "plan.json").read_text())
    return out, plan


def node_dirs(out: Path) -> list[Path]:
    return sorted(p for p in out.iterdir() if p.is_dir() and p.name != "cluster")


@pytest.fixture(scope="module")
def netns_with_eth0():
    """A throwaway network namespace with an interface named eth0 (keepalived -t checks it exists)."""
    require_root()
    require_tool("ip")
    name = f"bmctl-t-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "-n", name, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0p"], check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def keepalived_dirs(rendered, tmp_path: Path):
    """Each LB node's rendered /etc/keepalived, materialized as the node would have it (modes from
    the plan), for a test to bind-mount at /etc/keepalived: (node folder, copy)."""
    out, plan = rendered
    modes = {f["dry_run_copy"]: int(f["mode"], 8) for ph in plan for st in ph["steps"] for f in st["files"]}
    for node in node_dirs(out):
        conf_dir = node / "etc" / "keepalived"
        if not conf_dir.exists():
            continue
        target = tmp_path / node.name
        shutil.copytree(conf_dir, target)
        os.chmod(target, 0o755)
        for f in target.iterdir():
            os.chmod(f, modes[str((conf_dir / f.name).relative_to(out))])
        yield node, target


def test_keepalived_accepts_every_config(rendered, netns_with_eth0, tmp_path):
    keepalived = require_tool("keepalived")
    checked = 0
    for node, target in keepalived_dirs(rendered, tmp_path):
        # bind-mounted at /etc/keepalived in a private mount namespace: the track script must exist
        proc = subprocess.run(
            ["ip", "netns", "exec", netns_with_eth0, "unshare", "-m", "sh", "-c",
             'mount --bind "$1" /etc/keepalived && exec "$2" -t -f /etc/keepalived/keepalived.conf',
             "sh", str(target), keepalived], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, f"{node.name}: {proc.stdout}{proc.stderr}"
        checked += 1
    out, _ = rendered
    assert checked >= 1 or all((n / "etc/bmctl/frr/frr.conf").exists()  # BGP mode: FRR holds the VIP
                               for n in node_dirs(out) if (n / "etc/haproxy").exists())


def test_haproxy_accepts_every_config(rendered):
    haproxy = require_tool("haproxy")
    out, _ = rendered
    cfgs = [n / "etc/haproxy/haproxy.cfg" for n in node_dirs(out) if (n / "etc/haproxy/haproxy.cfg").exists()]
    assert cfgs
    for cfg in cfgs:
        proc = subprocess.run([haproxy, "-c", "-f", str(cfg)], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, f"{cfg}: {proc.stdout}{proc.stderr}"


def _strict_schema(schema):
    """A CRD schema as JSON Schema, refusing unknown fields where the CRD would prune them."""
    schema = dict(schema)
    if "properties" in schema:
        schema["properties"] = {k: _strict_schema(v) for k, v in schema["properties"].items()}
        if not schema.get("x-kubernetes-preserve-unknown-fields"):
            schema.setdefault("additionalProperties", False)
    if "items" in schema:
        schema["items"] = _strict_schema(schema["items"])
    if isinstance(schema.get("additionalProperties"), dict):
        schema["additionalProperties"] = _strict_schema(schema["additionalProperties"])
    return schema


def all_manifests(out: Path):
    for path in sorted((out / "cluster").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                yield path, doc
    for node in node_dirs(out):
        for path in sorted((node / "etc/kubernetes/manifests").glob("*.yaml")):
            yield path, yaml.safe_load(path.read_text())


def test_manifests_match_kubernetes_schemas(rendered):
    out, _ = rendered
    crds = {}
    checked = 0
    for path, doc in all_manifests(out):
        if doc["kind"] == "CustomResourceDefinition":
            for version in doc["spec"]["versions"]:
                key = (f'{doc["spec"]["group"]}/{version["name"]}', doc["spec"]["names"]["kind"])
                crds[key] = _strict_schema(version["schema"]["openAPIV3Schema"])
    for path, doc in all_manifests(out):
        if doc["kind"] == "KubeProxyConfiguration":
            continue
        key = (doc["apiVersion"], doc["kind"])
        if key in crds:
            jsonschema.validate(doc, crds[key])
        else:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        checked += 1
    assert checked > 20


def test_schema_check_catches_a_bad_field(rendered):
    """The schema check is real: a misspelled field in a pool or a pod is refused."""
    out, _ = rendered
    docs = list(all_manifests(out))
    crd = next(d for _, d in docs if d["kind"] == "CustomResourceDefinition" and d["spec"]["names"]["kind"] == "IPAddressPool")
    pool = next(d for _, d in docs if d["kind"] == "IPAddressPool")
    pool["spec"]["autoAsign"] = True
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(pool, _strict_schema(crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]))
    pod = next((d for _, d in docs if d["kind"] == "Pod"), None)
    if pod is not None:
        pod["spec"]["containers"][0]["volumeMount"] = []
        with pytest.raises(Exception, match="volumeMount"):
            kubernetes_validate.validate(pod, K8S_VERSION, strict=True)


def test_dry_run_has_no_secret_values(rendered):
    out, _ = rendered
    secret = yaml.safe_load((out / "cluster/03-metallb-memberlist.yaml").read_text())
    assert secret["stringData"]["secretkey"] == "<redacted>"
    for kubeadm in out.glob("*/etc/kubernetes/bmctl/kubeadm.yaml"):
        text = kubeadm.read_text()
        assert re.search(r"[a-z0-9]{6}\.[a-z0-9]{16}", text) is None, "no bootstrap token in a dry run"
        assert re.search(r"[0-9a-f]{64}", text) is None, "no certificate key in a dry run"


def test_dry_run_files_are_private(rendered):
    out, _ = rendered
    for path in out.rglob("*"):
        mode = path.stat().st_mode & 0o777
        assert mode == (0o700 if path.is_dir() else 0o600), f"{path}: {oct(mode)}"
