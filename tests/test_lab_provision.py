"""Node provisioning on bare lab nodes (issue 14), with real parts: nodes that start without any node
software, bmctl installing containerd, runc, the CNI plugins, crictl, kubelet, kubeadm and kubectl
from the lab's offline bundle over SSH, the services started by the node's supervisor, images pulled
through registryMirrors; a re-run that changes nothing; SIGKILL at random moments; a wrong kubelet
refused by preflight; a corrupted bundle refused before anything is written; and `bmctl push images`
into a second registry (Distribution, TLS + htpasswd) that a cluster is then created through."""
from __future__ import annotations

import base64
import json
import random
import shutil
import tarfile
import time
from pathlib import Path

import pytest
import yaml

from bmctl.lab.lab import Lab
from bmctl.release.bundle import NODE_ARCHIVE, Bundle
from lab.harness import (Kube, http_get, kill_at_random_points, running_lab, start_web_service, wait_for,
                         write_variant)

MANAGED = ["/usr/local/bin", "/usr/local/sbin", "/opt/cni/bin", "/etc/containerd", "/etc/systemd/system"]

# What a node holds of the node software: each file under MANAGED (sha256 and mode), temp files,
# the cached archives, the record (sha256 and path: its sizes and mtimes change with every install),
# and the services' states.
_SNAPSHOT = r'''
PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
for d; do
  [ -d "$d" ] || continue
  find "$d" -type f -o -type l | sort | while read -r f; do
    echo "file $f $(stat -Lc %a "$f" 2>/dev/null) $(sha256sum < "$f" 2>/dev/null | cut -c1-16)"
  done
done
ls -A /var/cache/bmctl 2>/dev/null | sed 's/^/cache /'
[ -f /var/lib/bmctl/node-software.list ] && awk '{print "record", $1, $4}' /var/lib/bmctl/node-software.list
echo "containerd $(systemctl is-active containerd) $(systemctl is-enabled containerd)"
echo "kubelet $(systemctl is-enabled kubelet)"
'''


def snapshot(lab) -> dict[str, list[str]]:
    return {n["name"]: lab.lab.node_exec(n["name"], ["sh", "-c", _SNAPSHOT, "sh", *MANAGED]).stdout.splitlines()
            for n in lab.nodes}


def node_sh(lab, node: dict, script: str, check: bool = False):
    return lab.lab.node_exec(node["name"], ["sh", "-c", "PATH=/usr/local/sbin:/usr/local/bin:$PATH\n" + script],
                             check=check)


def bundle_of(lab) -> Bundle:
    return Bundle.open(yaml.safe_load_all(lab.config.read_text()).__next__()["bundlePath"])


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    with running_lab(tmp_path_factory.mktemp("provision"), control_planes=1, lb_nodes=0, workers=1) as harness:
        yield harness


def test_nodes_start_bare(lab):
    """No containerd, runc, kubelet, kubeadm, crictl or CNI plugin on a fresh node, no unit for them,
    though this machine has Debian's containerd, runc and CNI plugins installed."""
    for node in lab.nodes:
        found = node_sh(lab, node, "for b in containerd runc kubelet kubeadm kubectl crictl ctr; do "
                                   "command -v $b; done; true").stdout
        assert found == "", found
        plugins = node_sh(lab, node, "ls -A /opt/cni/bin /usr/lib/cni 2>/dev/null | grep -v ':$'; true").stdout
        assert plugins.strip() == "", plugins
        units = node_sh(lab, node, "systemctl is-enabled containerd kubelet; true").stdout
        assert units.split() == ["not-found", "not-found"], units
    assert shutil.which("containerd") and shutil.which("runc", path="/usr/sbin:/usr/bin")  # yet this machine has them


def test_provisioning_installs_the_bundle_and_starts_the_services(lab):
    bundle = bundle_of(lab)
    proc = lab.bmctl("create", "cluster", "--until", "provision", timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    sent = f"({bundle.archive_size / 1e6:.0f} MB sent)"
    assert proc.stdout.count(sent) == len(lab.nodes), proc.stdout
    for node in lab.nodes:
        out = node_sh(lab, node, "kubelet --version; kubeadm version -o short; crictl --version; "
                                 "containerd --version; runc --version | head -n1; "
                                 "systemctl is-active containerd; systemctl is-enabled kubelet").stdout
        assert f"Kubernetes {bundle.kubernetes}\n{bundle.kubernetes}\n" in out, out
        assert "active\nenabled" in out, out
        for path, f in bundle.software.items():  # every file exactly as the bundle has it
            got = node_sh(lab, node, f"sha256sum {path}").stdout.split()[:1]
            assert got == [f.sha256], path
        config = lab.node_file(node, "/etc/containerd/config.toml").read_text()
        assert bundle.release.image("pause") in config and "SystemdCgroup = false" in config
        assert "restrict_oom_score_adj = true" in config  # this machine gives no CAP_SYS_RESOURCE
        hosts = lab.node_file(node, "/etc/containerd/certs.d/registry.bmctl-lab.internal/hosts.toml").read_text()
        assert f'[host."http://{Lab.net_of(lab.state).registry_ip}:5000"]' in hosts, hosts
        images = node_sh(lab, node, "crictl -r unix:///run/containerd/containerd.sock images -q").stdout
        assert images.strip(), "the sandbox image was not pulled"


def test_rerun_changes_nothing(lab):
    """A second run sends nothing, writes nothing and restarts no service: every file's checksum,
    mode and mtime and containerd's PID are unchanged."""
    def state():
        out = {}
        for node in lab.nodes:
            out[node["name"]] = node_sh(lab, node, "find " + " ".join(MANAGED) + " -type f -exec stat -c '%n %a %Y' {} + "
                                        "| sort; cat /var/lib/bmctl/node-software.list").stdout + \
                f"containerd pid {containerd_pid(lab, node)}"
        return out
    before = state()
    proc = lab.bmctl("create", "cluster", "--until", "provision", "--force", timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("nothing sent; config unchanged; no service restarted") == len(lab.nodes), proc.stdout
    assert state() == before


def test_wrong_kubelet_is_refused_by_preflight_with_the_fix(lab):
    """A node whose /usr/local/bin/kubelet reports another version (the lab's kubelet linked with
    another version stamp) stops preflight, naming the version, the path and the fix."""
    from bmctl.lab import binaries
    node = lab.nodes[1]
    target = lab.node_file(node, "/usr/local/bin/kubelet")
    original = target.read_bytes()
    other = binaries.binary("kubelet-other")
    if not other.exists():
        binaries.ensure(["kubelet-other"])
    shutil.copyfile(other, target)
    try:
        proc = lab.bmctl("create", "cluster", "--until", "provision", timeout=300)
        assert proc.returncode != 0
        text = " ".join((proc.stdout + proc.stderr).split())
        assert f"kubelet {binaries.OTHER_KUBELET} is installed at /usr/local/bin/kubelet" in text, text
        assert "this cluster runs Kubernetes v1.34.2" in text and "delete /usr/local/bin/kubelet" in text, text
        assert "Traceback" not in text
    finally:
        target.write_bytes(original)
        target.chmod(0o755)


def containerd_pid(lab, node: dict) -> int:
    """This node's containerd: the main process in its unit's cgroup (pgrep would see every node's
    containerd, and other labs' too: nodes share this machine's PID namespace)."""
    from bmctl.lab import realnode, systemd
    unit = f"{realnode.node_cgroup(lab.state['id'], node['name'])}/system.slice/containerd.service"
    pids = [p for p in systemd.cgroup_pids(unit) if Path(f"/proc/{p}/comm").read_text().strip() == "containerd"]
    assert len(pids) == 1, (node["name"], pids)
    return pids[0]


def containerd_environ(lab, node: dict) -> dict[str, str]:
    raw = Path(f"/proc/{containerd_pid(lab, node)}/environ").read_bytes().decode(errors="replace")
    return dict(item.split("=", 1) for item in raw.split("\0") if "=" in item)


def test_proxy_reaches_containerd_and_leaves_the_cluster_and_mirror_direct(lab):
    """spec.proxy set to a proxy that does not exist: containerd is restarted with HTTPS_PROXY and a
    NO_PROXY holding the node addresses, the VIP and the registry mirror, so the sandbox image still
    comes straight from the mirror; removing spec.proxy removes the drop-ins and the variables."""
    net = Lab.net_of(lab.state)
    variant = write_variant(lab, lambda docs: docs[2]["spec"].update(
        proxy={"url": f"http://{net.client_ip}:3128", "noProxy": [".corp.example.com"]}), "proxy.yaml")
    for node in lab.nodes:  # the pull must happen again (through the mirror, not the proxy)
        node_sh(lab, node, "crictl -r unix:///run/containerd/containerd.sock rmi --prune >/dev/null 2>&1; true")
    proc = lab.bmctl("create", "cluster", "--until", "provision", "--force", config=variant, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("restarted: containerd") == len(lab.nodes), proc.stdout
    for node in lab.nodes:
        env = containerd_environ(lab, node)
        assert env["HTTPS_PROXY"] == f"http://{net.client_ip}:3128"
        skip = env["NO_PROXY"].split(",")
        assert {".corp.example.com", net.registry_ip, net.vip, *(n["address"] for n in lab.nodes)} <= set(skip)
    proc = lab.bmctl("create", "cluster", "--until", "provision", "--force", timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for node in lab.nodes:
        assert "HTTPS_PROXY" not in containerd_environ(lab, node)
        assert not lab.node_file(node, "/etc/systemd/system/containerd.service.d/http-proxy.conf").exists()


def test_reset_keeps_the_node_software_unless_purge(lab):
    proc = lab.bmctl("reset", "cluster", "--force", timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for node in lab.nodes:
        assert node_sh(lab, node, "kubelet --version; systemctl is-active containerd").stdout.split()[-1] == "active"
    proc = lab.bmctl("reset", "cluster", "--force", "--purge", timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for node in lab.nodes:
        left = node_sh(lab, node, "command -v kubelet kubeadm containerd runc crictl; ls -A /opt/cni/bin "
                                  "/var/cache/bmctl /etc/containerd; systemctl is-active containerd").stdout
        assert sorted(left.split()) == sorted(["/opt/cni/bin:", "/var/cache/bmctl:", "/etc/containerd:", "inactive"]), left


def test_killed_at_random_moments_of_provisioning_converges(lab):
    """bmctl SIGKILLed at 10 random moments of the provisioning phase (upload, install, config,
    services), each followed by a re-run (killed again, or finishing); the last uninterrupted run
    leaves exactly what an uninterrupted run does: every file, its mode, the record, the cache,
    the services, no temp file."""
    purge = lambda: lab.bmctl("reset", "cluster", "--force", "--purge", timeout=300)  # noqa: E731
    assert purge().returncode == 0
    start = time.monotonic()
    proc = lab.bmctl("create", "cluster", "--force", "--until", "provision", timeout=600)
    took = time.monotonic() - start
    assert proc.returncode == 0, proc.stdout + proc.stderr
    reference = snapshot(lab)
    assert any(line.startswith("record ") for line in reference[lab.nodes[0]["name"]])
    assert purge().returncode == 0
    kills = kill_at_random_points(
        lambda: lab.bmctl("create", "cluster", "--force", "--until", "provision", background=True),
        random.Random(20261202), took, count=10, undo=purge)
    print(f"uninterrupted provisioning {took:.1f} s; killed at {sorted(kills)}")
    assert len(kills) == 10, kills
    proc = lab.bmctl("create", "cluster", "--force", "--until", "provision", timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    after = snapshot(lab)
    assert after == reference
    assert not any(".bmctl." in line for lines in after.values() for line in lines)


def test_corrupted_bundle_is_refused_before_anything_is_written(lab, tmp_path):
    good = bundle_of(lab)
    bad = tmp_path / "corrupted.tar"
    shutil.copyfile(good.path, bad)
    with tarfile.open(bad) as tar:
        member = tar.getmember(NODE_ARCHIVE)
    with open(bad, "r+b") as f:  # one byte in the middle of the node archive
        f.seek(member.offset_data + member.size // 2)
        byte = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([byte[0] ^ 0xFF]))
    assert lab.bmctl("reset", "cluster", "--force", "--purge", timeout=300).returncode == 0
    before = snapshot(lab)
    variant = write_variant(lab, lambda docs: docs[0].update(bundlePath=str(bad)), "corrupted.yaml")
    proc = lab.bmctl("create", "cluster", "--until", "provision", config=variant, timeout=300)
    assert proc.returncode == 1
    text = " ".join((proc.stdout + proc.stderr).split())
    assert f"{NODE_ARCHIVE} has sha256" in text and "the bundle is corrupted (nothing was sent to any node)" in text
    assert "Traceback" not in text
    assert snapshot(lab) == before
    for node in lab.nodes:
        assert not lab.node_file(node, "/etc/sysctl.d/90-bmctl.conf").exists()


def test_push_images_then_a_cluster_through_a_tls_registry_with_credentials(lab, tmp_path):
    """`bmctl push images` loads the bundle into a second registry (Distribution, TLS, htpasswd) in
    the client namespace; with the lab's own registry stopped, a cluster is created with
    registryMirrors pointing there (CA and Docker credential file): every image comes through it,
    the password is in no log or output, and the file holding it on the nodes is 0600."""
    from bmctl.lab import registry as lab_registry
    from bmctl.lab import tlsregistry
    password = "s3cret-" + base64.b32encode(random.randbytes(10)).decode().lower()
    client_ip = Lab.net_of(lab.state).client_ip
    reg = tlsregistry.start(tmp_path / "tls", ip=client_ip, port=5443, netns=lab.client_ns,
                            users={"puller": password})
    try:
        creds = tmp_path / "docker-config.json"
        creds.write_text(json.dumps({"auths": {f"{client_ip}:5443": {
            "auth": base64.b64encode(f"puller:{password}".encode()).decode()}}}))
        bundle = bundle_of(lab)
        push = lab.bmctl("push", "images", "--source", str(bundle.path), "--private-registry", f"{client_ip}:5443",
                         "--cacert", str(reg.cacert), "--credential-file", str(creds), timeout=900, cluster=False)
        assert push.returncode == 0, push.stdout + push.stderr
        assert password not in push.stdout + push.stderr

        def mirror(docs):
            docs[0]["registryMirrors"] = [{"endpoint": f"https://{client_ip}:5443", "caCertPath": str(reg.cacert),
                                           "pullCredentialConfigPath": str(creds),
                                           "hosts": ["registry.bmctl-lab.internal"]}]
        variant = write_variant(lab, mirror, "tls-mirror.yaml")
        assert lab.bmctl("reset", "cluster", "--force", "--purge", timeout=300).returncode == 0
        for node in lab.nodes:  # no image left from the lab's registry (containerd is stopped and gone)
            node_sh(lab, node, "rm -rf /var/lib/containerd/*", check=True)
        lab_registry.stop(lab.state["pids"]["registry"])
        proc = lab.bmctl("create", "cluster", "--force", config=variant, timeout=900)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "Phase 7/7: Verification" in proc.stdout  # --force: no preflight (the ingress phase is in)
        ip, _ = start_web_service(lab, Kube(lab))  # its image, too, comes through the TLS registry
        assert wait_for(lambda: http_get(lab, ip), 90, "the LoadBalancer Service to answer", 0.5)
        logs = "".join(p.read_text(errors="replace") for p in (lab.workspace / "lab" / "log").rglob("*") if p.is_file())
        assert password not in proc.stdout + proc.stderr + logs
        node_ips = {n["address"] for n in lab.nodes}
        served = reg.log.read_text()
        assert all(ip in served for ip in node_ips), "every node pulled from the TLS registry"
        for node in lab.nodes:
            config = lab.node_file(node, "/etc/containerd/config.toml")
            assert config.stat().st_mode & 0o777 == 0o600 and password in config.read_text()
    finally:
        tlsregistry.stop(reg.pid)
