"""The bmctl command as a user runs it: help, templates, checks, dry runs, and clean errors."""
from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from conftest import REPO, base_docs, dump

SUBCOMMANDS = [[], ["create"], ["check"], ["create", "config"], ["create", "cluster"], ["check", "config"],
               ["check", "preflight"], ["update"], ["update", "loadbalancer"], ["reset", "cluster"], ["lab", "up"], ["lab", "down"], ["lab", "status"]]


def bmctl(*args, cwd=None, input=None):
    return subprocess.run([sys.executable, "-m", "bmctl", *args], capture_output=True, text=True, cwd=cwd,
                          input=input, timeout=120)


@pytest.mark.parametrize("sub", SUBCOMMANDS, ids=lambda s: " ".join(s) or "bmctl")
def test_help_everywhere(sub):
    proc = bmctl(*sub, "--help")
    assert proc.returncode == 0 and "Usage:" in proc.stdout


def test_shell_completion_script(monkeypatch):
    # the shell is named on the command line: no guessing from the parent processes (which differ
    # between a terminal, CI and a background job)
    monkeypatch.setenv("_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION", "1")
    proc = bmctl("--show-completion", "bash")
    assert proc.returncode == 0
    assert "_BMCTL_COMPLETE" in proc.stdout


def fill(text: str) -> str:
    return (text.replace("<control-plane-node-1-ip>", "198.51.100.11")
                .replace("<control-plane-node-2-ip>", "198.51.100.12")
                .replace("<control-plane-node-3-ip>", "198.51.100.13")
                .replace("<control-plane-vip>", "198.51.100.10")
                .replace("<ingress-vip>", "198.51.100.100")
                .replace("<first-service-ip>-<last-service-ip>", "198.51.100.100-198.51.100.120"))


def uncomment_optional(text: str) -> str:
    """Uncomment the template's commented YAML (LB node pool, vrrp, NodePool): every '# ' line whose
    rest parses as a key or list item, after the first such block begins."""
    out = []
    for line in text.splitlines():
        m = re.match(r"^(\s*)# (\s*(?:[A-Za-z]+:(?: .*)?|- address: .*|---))$", line)
        if m:
            line = m.group(1) + m.group(2)
            line = re.sub(r"\s+# .*$", "", line)
        out.append(line)
    return ("\n".join(out) + "\n").replace("<lb-node-1-ip>", "198.51.100.21").replace(
        "<lb-node-2-ip>", "198.51.100.22").replace("<worker-node-1-ip>", "198.51.100.31")


def test_template_passes_once_filled_in(tmp_path):
    proc = bmctl("create", "config", "-c", "demo", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    path = tmp_path / "bmctl-workspace/demo/demo.yaml"
    text = path.read_text()
    assert text.count("---") >= 2 and "kind: Cluster" in text and "kind: Namespace" in text
    # unfilled: errors that name the placeholders' fields
    proc = bmctl("check", "config", "-c", "demo", cwd=tmp_path)
    assert proc.returncode == 1
    assert "spec.loadBalancer.vips.controlPlaneVIP" in proc.stderr and "Traceback" not in proc.stderr
    path.write_text(fill(text))
    proc = bmctl("check", "config", "-c", "demo", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "OK" in proc.stdout
    # the optional sections the template shows as comments are valid once uncommented
    uncommented = uncomment_optional(fill(text))
    path.write_text(uncommented)
    proc = bmctl("check", "config", "-c", "demo", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr + uncommented
    assert "2 load-balancer, 1 worker" in proc.stdout


def test_create_config_does_not_overwrite(tmp_path):
    assert bmctl("create", "config", "-c", "demo", cwd=tmp_path).returncode == 0
    proc = bmctl("create", "config", "-c", "demo", cwd=tmp_path)
    assert proc.returncode == 1 and "--force" in proc.stderr
    assert bmctl("create", "config", "-c", "demo", "--force", cwd=tmp_path).returncode == 0
    proc = bmctl("create", "config", "-c", "Bad_Name", cwd=tmp_path)
    assert proc.returncode == 1 and "not a valid cluster name" in proc.stderr


def test_check_config_json(tmp_path):
    docs = base_docs()
    docs[2]["spec"]["loadBalancer"]["addressPools"][0]["addresses"] = ["192.0.2.150-192.0.2.100"]
    (tmp_path / "c.yaml").write_text(dump(docs))
    proc = bmctl("check", "config", "-c", str(tmp_path / "c.yaml"), "-o", "json")
    assert proc.returncode == 1
    report = json.loads(proc.stdout)
    assert report["ok"] is False
    (p,) = [p for p in report["problems"] if p["severity"] == "error"]
    assert p["path"] == "spec.loadBalancer.addressPools[0].addresses[0]" and p["line"] > 0 and "reversed" in p["message"]


@pytest.mark.parametrize("content", [
    b"", b"\xff\xfe\x00garbage", b"- just\n- a list\n", b"key: [unclosed\n", b"kind: Cluster\n",
    b"a: &a [*a]\n", b"---\n---\n", b"\x00\x01\x02",
], ids=["empty", "binary", "list", "unclosed", "bare-cluster", "recursive-alias", "empty-docs", "nul"])
def test_broken_files_give_clean_errors(tmp_path, content):
    path = tmp_path / "broken.yaml"
    path.write_bytes(content)
    for args in (["check", "config", "-c", str(path)], ["create", "cluster", "-c", str(path), "--dry-run"]):
        proc = bmctl(*args, cwd=tmp_path)
        assert proc.returncode == 1, proc.stderr
        assert "Traceback" not in proc.stderr and "error" in proc.stderr
        assert not (tmp_path / "bmctl-workspace").exists() or not list((tmp_path / "bmctl-workspace").rglob("*.cfg"))


def test_reset_dry_run_lists_what_it_removes(tmp_path):
    (tmp_path / "c.yaml").write_text(dump(base_docs()))
    proc = bmctl("reset", "cluster", "-c", str(tmp_path / "c.yaml"), "--dry-run", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "kubeadm reset -f" in proc.stdout and "/etc/kubernetes/manifests/keepalived.yaml" in proc.stdout
    assert "no machine was touched" in proc.stdout


def test_backup_dry_run_says_what_it_saves_and_refusals_name_the_file(tmp_path):
    (tmp_path / "c.yaml").write_text(dump(base_docs()))
    proc = bmctl("backup", "cluster", "-c", str(tmp_path / "c.yaml"), "--dry-run", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "etcdutl snapshot status" in proc.stdout and "SHA256SUMS" in proc.stdout
    assert "no machine was touched" in proc.stdout
    (tmp_path / "old.tar").write_text("x")
    proc = bmctl("backup", "cluster", "-c", str(tmp_path / "c.yaml"), "--backup-file", str(tmp_path / "old.tar"),
                 cwd=tmp_path)
    assert proc.returncode == 1 and "never overwrites" in proc.stderr and "Traceback" not in proc.stderr
    proc = bmctl("backup", "cluster", "-c", str(tmp_path / "c.yaml"), cwd=tmp_path)  # never created here
    assert proc.returncode == 1 and "create cluster" in proc.stderr and "Traceback" not in proc.stderr
    proc = bmctl("check", "cluster", "-c", str(tmp_path / "c.yaml"), cwd=tmp_path)
    assert proc.returncode == 1 and "no kubeconfig" in proc.stderr and "Traceback" not in proc.stderr


def test_lab_needs_root_or_says_so(tmp_path):
    import os
    if os.geteuid() == 0:
        from bmctl.lab.lab import Lab
        Lab.check_prerequisites()  # as root on a prepared machine: no complaint
        return
    proc = bmctl("lab", "up", cwd=tmp_path)
    assert proc.returncode == 1 and "needs root" in proc.stderr


def test_missing_file(tmp_path):
    proc = bmctl("check", "config", "-c", "nosuch", cwd=tmp_path)
    assert proc.returncode == 1 and "not found" in proc.stderr and "bmctl create config" in proc.stderr


def test_dry_run_layout_and_plan(tmp_path):
    (tmp_path / "c.yaml").write_text(dump(base_docs()))
    proc = bmctl("create", "cluster", "-c", str(tmp_path / "c.yaml"), "--dry-run", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "bmctl-workspace/t1/dry-run"
    for node in ("192.0.2.11", "192.0.2.12", "192.0.2.13"):
        for path in ("etc/keepalived/keepalived.conf", "etc/haproxy/haproxy.cfg",
                     "etc/kubernetes/manifests/keepalived.yaml", "etc/kubernetes/manifests/haproxy.yaml",
                     "etc/kubernetes/bmctl/kubeadm.yaml"):
            assert (out / node / path).is_file(), f"{node}/{path}"
    assert (out / "192.0.2.21/etc/kubernetes/bmctl/kubeadm.yaml").is_file()
    assert not (out / "192.0.2.21/etc/keepalived").exists(), "workers get no load balancer"
    names = sorted(p.name for p in (out / "cluster").iterdir())
    assert names == ["00-metallb-namespace.yaml", "01-metallb-crds.yaml", "02-metallb-rbac.yaml",
                     "03-metallb-memberlist.yaml", "04-metallb-controller.yaml", "05-metallb-speaker.yaml",
                     "06-metallb-pools.yaml", "10-gateway-api-crds.yaml", "11-ingress-controller.yaml",
                     "12-ingress-gateway.yaml", "kube-flannel.yaml", "kube-proxy-config.yaml"]
    # the ingress's self-signed key is a secret: redacted in the dry run, and the file is 0600
    gateway = out / "cluster" / "12-ingress-gateway.yaml"
    assert "PRIVATE KEY" not in gateway.read_text() and gateway.stat().st_mode & 0o777 == 0o600
    for phase in ("Preflight", "Node provisioning", "Control-plane load balancer", "kubeadm", "Pod network",
                  "MetalLB", "Bundled ingress", "Verification"):
        assert phase in proc.stdout
    plan = json.loads((out / "plan.json").read_text())
    assert [p["phase"] for p in plan] == ["preflight", "provision", "control-plane-lb", "kubeadm",
                                          "pod-network", "data-plane-lb", "ingress", "verify"]
    # a second dry run of a smaller config leaves no stale files behind
    docs = base_docs()
    del docs[3]
    (tmp_path / "c.yaml").write_text(dump(docs))
    assert bmctl("create", "cluster", "-c", str(tmp_path / "c.yaml"), "--dry-run", cwd=tmp_path).returncode == 0
    assert not (out / "192.0.2.21").exists()


def test_manual_mode_dry_run_has_no_load_balancer(tmp_path):
    docs = base_docs()
    lb = docs[2]["spec"]["loadBalancer"]
    lb["mode"] = "manual"
    del lb["addressPools"], lb["vips"]["ingressVIP"]
    (tmp_path / "c.yaml").write_text(dump(docs))
    proc = bmctl("create", "cluster", "-c", str(tmp_path / "c.yaml"), "--dry-run", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "bmctl-workspace/t1/dry-run"
    assert not list(out.rglob("keepalived.conf"))
    assert [p.name for p in (out / "cluster").iterdir()] == ["kube-flannel.yaml"], "no MetalLB, only the pod network"
    assert (out / "192.0.2.11/etc/kubernetes/bmctl/kubeadm.yaml").is_file()


def test_console_never_rewrites_user_text(tmp_path):
    """Errors on lines 100 and 1234: rich would print `file.yaml💯3` for `:100:` and eat `[bold]`."""
    docs = base_docs()
    lb = docs[2]["spec"]["loadBalancer"]
    lb["addressPools"][0]["addresses"] = ["192.0.2.150-192.0.2.100"]
    lb["addressPools"][1]["name"] = "[bold]pool:100:[/bold]"
    docs[2]["spec"]["nodeAccess"]["loginUser"] = "Bad:smile:User"
    lines = dump(docs).splitlines()

    def move(marker: str, to_line: int) -> None:
        at = next(i for i, line in enumerate(lines) if marker in line)
        lines[at:at] = ["# padding"] * (to_line - 1 - at)

    move("192.0.2.150-192.0.2.100", 100)
    move("loginUser", 1234)
    path = tmp_path / "c.yaml"
    path.write_text("\n".join(lines) + "\n")
    for args in (["check", "config", "-c", str(path)], ["create", "cluster", "-c", str(path), "--dry-run"]):
        proc = bmctl(*args, cwd=tmp_path)
        assert proc.returncode == 1
        err = proc.stderr
        assert f"{path}:100:" in err and f"{path}:1234:" in err, err
        assert "💯" not in err and "😄" not in err
        assert "'[bold]pool:100:[/bold]'" in err and "'Bad:smile:User'" in err


def test_a_keepalived_image_too_old_for_bmctl_s_config_is_named(tmp_path):
    """bmctl's own release still names osixia/keepalived:2.0.20 (no maintained upstream image has
    Keepalived 2.1+): create cluster says so, with the fix; a release file with a newer one is quiet."""
    import yaml as _yaml
    from bmctl import release
    example = REPO / "cluster-examples" / "ha-control-plane.yaml"
    proc = subprocess.run([sys.executable, "-m", "bmctl", "create", "cluster", "-c", str(example), "--dry-run",
                           "--workspace", str(tmp_path / "ws")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "keepalived image of bmctl's release v1.34.2 (docker.io/osixia/keepalived:2.0.20)" in proc.stderr
    assert "check_unicast_src" in proc.stderr and "releaseFile" in proc.stderr
    good = dict(release.default().images, keepalived="registry.example/keepalived:2.2.7")
    (tmp_path / "release.yaml").write_text(_yaml.safe_dump({"kubernetes": "v1.34.2", "images": good}))
    docs = list(_yaml.safe_load_all(example.read_text()))
    docs[0]["releaseFile"] = "release.yaml"
    (tmp_path / "c.yaml").write_text(_yaml.safe_dump_all(docs))
    proc = subprocess.run([sys.executable, "-m", "bmctl", "create", "cluster", "-c", str(tmp_path / "c.yaml"),
                           "--dry-run", "--workspace", str(tmp_path / "ws2")], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "keepalived image" not in proc.stderr
    keepalived = next((tmp_path / "ws2").glob("*/dry-run/*/etc/kubernetes/manifests/keepalived.yaml"))
    assert "registry.example/keepalived:2.2.7" in keepalived.read_text()
