"""A whole cluster on the lab's real nodes: containerd, runc, the kubelet and kubeadm on every node,
every image (etcd, the control plane, kube-proxy, CoreDNS, flannel, MetalLB, HAProxy, Keepalived, a
web server) built here and pulled from the lab's registry; bmctl creates it from nothing, and a
LoadBalancer Service in front of a Deployment answers from the client namespace.

The one lab stand-in is the nodes' unit supervisor (bmctl/lab/systemd.py), doing systemd's job.
"""
from __future__ import annotations

import hashlib
import json
import re
import time

import netaddr
import pytest
import yaml

from lab.harness import NET, Kube, announcer, http_get, metallb_objects, running_lab, start_web_service, wait_for

PARTS = ("kubelet", "kubeadm", "crictl", "crane")


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    with running_lab(tmp_path_factory.mktemp("k8s"), 3, 2, 1, needs=PARTS) as harness:
        yield harness


@pytest.fixture(scope="module")
def cluster(lab):
    # Besides the lab's auto-assign pool (A.100-150 of the lab segment, .100 kept for the ingress VIP): a pool
    # handed out only on request, and one whose last address ends in .255 with avoidBuggyIPs.
    docs = list(yaml.safe_load_all(lab.config.read_text()))
    docs[2]["spec"]["loadBalancer"]["addressPools"] += [
        {"name": "reserved", "addresses": [f"{NET.ip(200)}-{NET.ip(210)}"], "manualAssign": True},
        {"name": "edge", "addresses": [f"{NET.ip(254)}/31"], "avoidBuggyIPs": True}]
    lab.config.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    start = time.monotonic()
    proc = lab.bmctl("create", "cluster", timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lab.create_seconds = time.monotonic() - start
    return proc, Kube(lab)


def test_create_cluster_from_nothing(lab, cluster):
    proc, kube = cluster
    for phase in ("Preflight", "Control-plane load balancer", "Kubernetes (kubeadm)", "Pod network", "MetalLB",
                  "Verification"):
        assert phase in proc.stdout
    nodes = kube("list_node").items
    ips = {a.address for n in nodes for a in n.status.addresses if a.type == "InternalIP"}
    assert ips == {n["address"] for n in lab.nodes}
    lb_ips = {n["address"] for n in lab.lb_nodes()}
    labelled = {a.address for n in nodes for a in n.status.addresses
                if a.type == "InternalIP" and (n.metadata.labels or {}).get("baremetal.cluster.gke.io/lbnode") == "true"}
    assert labelled == lb_ips
    speakers = kube("list_namespaced_pod", "metallb-system", label_selector="component=speaker").items
    assert {p.status.host_ip for p in speakers} == lb_ips


def test_secrets_never_leave_their_0600_files(lab, cluster):
    """The memberlist key, bootstrap token, certificate key and the admin kubeconfig's credentials:
    in no log, no progress output, no dry-run file; workspace files 0600 in 0700 folders."""
    proc, _ = cluster
    ws = lab.workspace / "lab"
    stored = yaml.safe_load((ws / ".secrets.yaml").read_text())
    values = list(stored.values()) + [stored["bootstrap_token"].split(".")[1]]  # and the token's secret half
    kubeconfig = yaml.safe_load((ws / "lab-kubeconfig").read_text())
    values += [u["user"][k] for u in kubeconfig["users"] for k in ("client-key-data", "token") if k in u["user"]]
    assert len(values) >= 5
    dry = lab.bmctl("create", "cluster", "--dry-run")
    assert dry.returncode == 0
    texts = {"create stdout": proc.stdout + proc.stderr, "dry-run stdout": dry.stdout}
    for path in [*(ws / "log").rglob("*"), *(ws / "dry-run").rglob("*")]:
        if path.is_file():
            texts[str(path)] = path.read_text(errors="replace")
    assert len(texts) > 10
    for where, text in texts.items():
        for value in values:
            assert value not in text, f"a secret appears in {where}"
    for path in ws.rglob("*"):
        if "lab-state" in path.relative_to(ws).parts:
            continue  # the lab's own machines, not bmctl's workspace
        mode = path.stat().st_mode & 0o777
        assert mode == (0o700 if path.is_dir() else 0o600), (path, oct(mode))


def test_second_create_changes_nothing(lab, cluster):
    proc = lab.bmctl("create", "cluster", timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 file(s) changed" in proc.stdout and "already initialized" in proc.stdout
    assert proc.stdout.count("already joined") == len(lab.nodes) - 1


@pytest.fixture(scope="module")
def service(lab, cluster):
    ip, _backend = start_web_service(lab, cluster[1])
    return ip


# What auto-assignment may hand out: the lab pool A.100-150 less the ingress VIP (.100, kept
# for the ingress Service), and the edge pool A.254/31 less .255 (avoidBuggyIPs).
AUTO = netaddr.IPSet([netaddr.IPRange(NET.ip(101), NET.ip(150)), f"{NET.ip(254)}/32"])


def test_service_gets_an_ip_from_the_auto_pool(lab, service):
    ip = netaddr.IPAddress(service)
    assert ip in AUTO
    assert int(ip) % 256 not in (0, 255)


def _lb_service(kube, name: str, annotations: dict | None = None) -> str:
    kube("create_namespaced_service", "demo", {
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "annotations": annotations or {}},
        "spec": {"type": "LoadBalancer", "selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]}})

    def ip():
        svc = kube("read_namespaced_service", name, "demo")
        ing = (svc.status.load_balancer.ingress or []) if svc.status.load_balancer else []
        return ing[0].ip if ing else None
    return wait_for(ip, 60, f"an EXTERNAL-IP for {name}", 0.5)


def test_pools_hand_out_what_they_promise(lab, cluster, service):
    _, kube = cluster
    auto = [netaddr.IPAddress(_lb_service(kube, f"auto-{i}")) for i in range(4)]
    reserved = netaddr.IPRange(NET.ip(200), NET.ip(210))
    assert all(ip in AUTO for ip in auto), auto  # never the reserved pool, .255 or the ingress VIP
    assert not [ip for ip in auto if ip in reserved], "manualAssign pool used without being asked"
    asked = netaddr.IPAddress(_lb_service(kube, "asks-reserved", {"metallb.io/address-pool": "reserved"}))
    assert asked in reserved


def test_client_reaches_the_backend_through_the_service_ip(lab, service):
    wait_for(lambda: http_get(lab, service), 30, "HTTP through the Service IP", 0.2)
    assert "200" in http_get(lab, service).splitlines()[0]
    assert announcer(lab, service)["role"] == "load-balancer"


def test_preflight_accepts_our_own_announced_service_ip(lab, service):
    """A re-run on a live cluster: the Service IP MetalLB announces answers ARP from our own LB node."""
    proc = lab.bmctl("check", "preflight", "-o", "json")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _health(lab) -> tuple[int, dict]:
    proc = lab.bmctl("check", "cluster", "-o", "json", timeout=120)
    assert proc.stdout.strip(), proc.stderr
    return proc.returncode, json.loads(proc.stdout)


def test_check_cluster_passes_and_names_a_stopped_etcd(lab, cluster, service):
    """`bmctl check cluster` on the healthy cluster: every area checked and passed (exit 0); with
    one control-plane node's etcd stopped (its manifest moved away), it fails (exit 1) naming etcd
    and that node, and passes again once etcd is back."""
    code, report = _health(lab)
    failed = [c for c in report["checks"] if c["status"] == "fail"]
    assert code == 0 and report["ok"] and not failed, failed
    areas = {c["area"] for c in report["checks"]}
    assert areas >= {"nodes", "static pods", "etcd", "certificates", "VIP", "MetalLB", "pod network", "ingress"}, areas
    objects = " ".join(c["object"] + " " + c["detail"] for c in report["checks"])
    assert "Service demo/web" in objects and service in objects  # the LoadBalancer Service's IP, announced
    assert "leader" in objects and "Keepalived master" in objects
    print(f"check cluster: {len(report['checks'])} checks in {report['seconds']} s")

    node = lab.control_planes()[1]
    manifest = lab.node_file(node, "/etc/kubernetes/manifests/etcd.yaml")
    away = lab.node_file(node, "/etc/kubernetes/etcd.yaml.away")
    manifest.rename(away)
    try:
        wait_for(lambda: not lab.running(node, "etcd"), 90, "the kubelet to stop etcd")
        code, report = _health(lab)
        failed = [c for c in report["checks"] if c["status"] == "fail"]
        assert code == 1 and not report["ok"], report
        here = [c for c in failed if c["node"] == node["address"] and c["area"] in ("etcd", "static pods")]
        assert any("etcd" in c["object"] for c in here), failed
        assert all(c["fix"] for c in failed), failed  # every failure says what to do
    finally:
        away.rename(manifest)
    wait_for(lambda: _health(lab)[0] == 0, 180, "check cluster to pass with etcd back", 5)


PLANTED = "planted-value-5f0c2a9e71d4b836"


def test_snapshot_has_what_a_bug_report_needs_and_no_secret(lab, cluster, service, tmp_path):
    """`bmctl check cluster --snapshot`: one 0600 .tar.gz with the checks, the cluster's objects and
    events, every node's addresses, routes, rules, processes, containers and static pods' logs, and
    bmctl's run logs; no secret in it: a Secret planted here, MetalLB's memberlist key, the bootstrap
    token, the certificate key, the admin kubeconfig's key and every private key file's content are
    nowhere in the archive."""
    import base64
    import tarfile

    _, kube = cluster
    kube("create_namespaced_secret", "demo", {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "planted"},
                                              "stringData": {"password": PLANTED}})
    out = tmp_path / "snap.tar.gz"
    proc = lab.bmctl("check", "cluster", "--snapshot", "--snapshot-output", str(out), timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    print(proc.stdout.strip())
    assert out.stat().st_mode & 0o777 == 0o600
    with tarfile.open(out) as tar:
        texts = {m.name.split("/", 1)[1]: tar.extractfile(m).read().decode() for m in tar.getmembers() if m.isfile()}
    everything = "\n".join(texts.values())
    ws = lab.workspace / "lab"
    secrets = yaml.safe_load((ws / ".secrets.yaml").read_text())
    kubeconfig = yaml.safe_load((ws / "lab-kubeconfig").read_text())
    client_key = kubeconfig["users"][0]["user"]["client-key-data"]
    cp = lab.control_planes()[0]
    private = [lab.node_file(cp, f"/etc/kubernetes/pki/{k}").read_text() for k in ("ca.key", "sa.key", "etcd/ca.key")]
    private.append((lab.lab.state_dir / "id_ed25519").read_text())
    planted = [PLANTED, base64.b64encode(PLANTED.encode()).decode(), secrets["memberlist_key"],
               secrets["bootstrap_token"], secrets["bootstrap_token"].split(".")[1], secrets["certificate_key"],
               client_key, base64.b64decode(client_key).decode()]
    for value in planted:
        assert value not in everything, f"a secret value is in the snapshot: {value[:12]}..."
    for pem in private:
        body = [ln for ln in pem.splitlines() if ln and not ln.startswith("-----")]
        assert not [ln for ln in body if ln in everything], "a private key's content is in the snapshot"
    assert "PRIVATE KEY-----" not in everything.replace("PEM private key", "")
    # what a bug report needs
    assert "Secrets: none" in texts["SNAPSHOT.txt"]
    assert json.loads(texts["health.json"]) and "planted" in texts["cluster/v1/Secret.yaml"]
    assert "kube-apiserver" in texts["cluster/v1/Pod.yaml"] and texts["cluster/v1/Event.yaml"].strip()
    assert "IPAddressPool" in "".join(n for n in texts) and service in texts["cluster/v1/Service.yaml"]
    for node in lab.nodes:
        here = {n.rsplit("/", 1)[1] for n in texts if n.startswith(f"nodes/{node['address']}/")}
        assert {"addresses.txt", "routes.txt", "processes.txt", "containers.txt", "mounts.txt"} <= here, here
        assert node["address"] in texts[f"nodes/{node['address']}/addresses.txt"]
    assert "kube-apiserver" in texts[f"nodes/{cp['address']}/containers.txt"]
    assert "/var/log/pods/kube-system_etcd-" in texts[f"nodes/{cp['address']}/pod-logs.txt"]
    assert any(n.startswith("bmctl/create-cluster-") for n in texts), "bmctl's run logs"


def test_backup_holds_a_checked_etcd_snapshot_the_pki_and_the_secrets(lab, cluster, service, tmp_path):
    """`bmctl backup cluster`: one 0600 tar whose SHA256SUMS match, with an etcd snapshot that etcdutl
    reads back at the revision backup.yaml records and that holds a ConfigMap made just before; the
    PKI with etcd's and the service accounts' keys; kubeadm's configuration and bmctl's secrets. No
    secret on the console or in the run's log; an existing file is never overwritten."""
    import hashlib
    import subprocess
    import tarfile

    from bmctl.lab import binaries

    _, kube = cluster
    kube("create_namespaced_config_map", "demo", {"apiVersion": "v1", "kind": "ConfigMap",
                                                   "metadata": {"name": "before"}, "data": {"when": "before"}})
    out = tmp_path / "lab.backup.tar"
    proc = lab.bmctl("backup", "cluster", "--backup-file", str(out), timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    print(proc.stdout.strip())
    assert out.stat().st_mode & 0o777 == 0o600
    folder = tmp_path / "x"
    with tarfile.open(out) as tar:
        names = tar.getnames()
        tar.extractall(folder, filter="data")
    assert set(names) == {"backup.yaml", "etcd-snapshot.db", "pki.tar", "kubeadm.yaml", "secrets.yaml", "cluster.yaml",
                          "SHA256SUMS"}, names
    for line in (folder / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split("  ")
        assert hashlib.sha256((folder / name).read_bytes()).hexdigest() == digest, name
    meta = yaml.safe_load((folder / "backup.yaml").read_text())
    assert meta["cluster"] == "lab" and meta["kubernetesVersion"] == "v1.34.2"
    assert {n["address"] for n in meta["nodes"]} == {n["address"] for n in lab.nodes}
    status = subprocess.run([str(binaries.binary("etcdutl")), "snapshot", "status", str(folder / "etcd-snapshot.db"),
                             "-w", "json"], capture_output=True, text=True, timeout=60)
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["revision"] == meta["etcd"]["revision"] > 0
    assert b"/registry/configmaps/demo/before" in (folder / "etcd-snapshot.db").read_bytes()
    with tarfile.open(folder / "pki.tar") as pki:
        assert {"pki/ca.key", "pki/sa.key", "pki/etcd/ca.key", "pki/front-proxy-ca.key"} <= set(pki.getnames())
    secrets = yaml.safe_load((lab.workspace / "lab" / ".secrets.yaml").read_text())
    assert yaml.safe_load((folder / "secrets.yaml").read_text()) == secrets
    logs = "".join(f.read_text() for f in (lab.workspace / "lab" / "log").glob("backup-cluster-*/*") if f.is_file())
    for value in (secrets["bootstrap_token"], secrets["certificate_key"], secrets["memberlist_key"]):
        assert value not in proc.stdout + proc.stderr + logs
    again = lab.bmctl("backup", "cluster", "--backup-file", str(out), timeout=60)
    assert again.returncode == 1 and "never overwrites" in again.stderr, again.stderr


def test_service_ip_moves_when_its_lb_node_is_cut(lab, service):
    wait_for(lambda: http_get(lab, service), 30, "HTTP through the Service IP", 0.2)
    node = announcer(lab, service)
    lab.set_link(node, up=False)
    try:
        start = time.monotonic()
        wait_for(lambda: http_get(lab, service, timeout=0.5), 60, "the Service IP to answer from the other LB node", 0.1)
        print(f"service IP failover: {time.monotonic() - start:.2f} s")
        assert announcer(lab, service)["address"] != node["address"]
    finally:
        lab.set_link(node, up=True)


def test_api_vip_survives_a_control_plane_node_down(lab, cluster):
    _, kube = cluster
    node = lab.control_planes()[2]
    lab.set_link(node, up=False)
    try:
        time.sleep(3)
        for _ in range(10):
            assert len(kube("list_node").items) == len(lab.nodes)
    finally:
        lab.set_link(node, up=True)


def test_a_rebooted_lb_node_serves_the_vip_and_service_ips_again(lab, service):
    """The LB node holding the API VIP loses power (every process SIGKILLed, /run gone) and boots
    again with the cluster running: the other LB node serves meanwhile; then, with the other one
    cut off, the rebooted node takes the API VIP and answers for the Service IP (its Keepalived,
    HAProxy and speaker all came back by themselves)."""
    node = lab.node(lab.vip_holders(NET.ip(10), lab.lb_nodes())[0])
    other = next(n for n in lab.lb_nodes() if n["address"] != node["address"])
    lab.reboot(node)
    lab.wait_request(timeout=15, path="/readyz")
    assert lab.vip_holders(NET.ip(10), lab.lb_nodes()) == [other["address"]]
    wait_for(lambda: all(lab.running(node, p) for p in ("keepalived", "haproxy")), 60,
             "the static pods to start again")
    lab.set_link(other, up=False)
    try:
        wait_for(lambda: lab.vip_holders(NET.ip(10), [node]) == [node["address"]], 30,
                 "the rebooted node to take the API VIP")
        lab.wait_request(timeout=20, path="/readyz")
        wait_for(lambda: http_get(lab, service, timeout=0.5), 120, "the Service IP answered by the rebooted node",
                 0.2)
        assert announcer(lab, service)["address"] == node["address"]
    finally:
        lab.set_link(other, up=True)
    wait_for(lambda: len(lab.vip_holders(NET.ip(10))) == 1, 30, "one API VIP holder")


def test_reset_asks_first(lab, cluster):
    proc = lab.bmctl("reset", "cluster")  # no answer on stdin: cancelled
    assert proc.returncode == 1 and "cancelled" in proc.stderr and "--force" in proc.stderr
    assert lab.node_file(lab.control_planes()[0], "/etc/kubernetes/admin.conf").exists()


def test_reset_leaves_nothing(lab, cluster):
    lab.reference_state = managed_state(lab)  # for the next test
    assert any(k[2] == "done" for k in lab.reference_state if len(k) == 3)
    proc = lab.bmctl("reset", "cluster", "--force", timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("nothing left listening") == len(lab.nodes)
    for node in lab.nodes:
        manifests = lab.node_file(node, "/etc/kubernetes/manifests/x").parent
        assert not manifests.exists() or not [p for p in manifests.iterdir() if not p.name.startswith(".")]
        for path in ("/etc/kubernetes/admin.conf", "/etc/kubernetes/kubelet.conf", "/etc/kubernetes/bmctl/kubeadm.yaml"):
            assert not lab.node_file(node, path).exists(), path
        # no container left: static pods, speakers, kube-proxy, flannel
        wait_for(lambda: not lab.crictl(node, "ps", "-q").split(), 30, f"no container left on {node['name']}")
        for path in ("/etc/systemd/system/kubelet.service.d/20-bmctl-lb-bootstrap.conf",
                     "/etc/kubernetes/bmctl/kubelet-lb-bootstrap.yaml"):
            assert not lab.node_file(node, path).exists(), path
    assert lab.vip_holders(NET.ip(10)) == []
    assert not (lab.workspace / "lab" / "lab-kubeconfig").exists()
    for node in lab.nodes:
        assert not lab.node_file(node, "/var/lib/bmctl/kubeadm/done").exists()
    # etcd's data folder is empty, though kubeadm reset empties it while etcd still runs (a
    # `kubeadm init` after it would refuse the folder)
    for node in lab.control_planes():
        data = lab.node_file(node, "/var/lib/etcd/x").parent
        assert not data.exists() or not list(data.iterdir()), (node["name"], list(data.iterdir()))


# The phase each kill aims at (1 preflight, 2 provision, 3 control-plane LB, 4 kubeadm, 5 pod network,
# 6 MetalLB, 7 verify): kubeadm and MetalLB the most, as the first phases are killed 20 times in
# test_lab_controlplane.py.
KILL_PHASES = [3, 4, 4, 5, 6, 6, 7]


def phase_seconds(stdout: str) -> dict[int, float]:
    """How long each phase of a create took, from its progress output ("done TITLE in N s")."""
    done = [float(m) for m in re.findall(r"done .* in ([0-9.]+) s", stdout)]
    return {i + 1: t for i, t in enumerate(done)}


class Watched:
    """A background bmctl run whose progress lines are read as they come."""

    def __init__(self, lab) -> None:
        import threading
        self.run = lab.bmctl("create", "cluster", timeout=900, background=True)
        self.phase = 0
        self.seen = threading.Event()
        self.lines: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.run.stdout:
            self.lines.append(line)
            m = re.search(r"Phase (\d+)/", line)
            if m:
                self.phase = int(m.group(1))
                self.seen.set()


@pytest.mark.timeout(2400)
def test_create_killed_at_random_points_converges(lab, cluster):
    """After the reset above, `create cluster` SIGKILLed 7 times at random moments, each within a
    chosen phase (kubeadm init and joins and MetalLB twice each, the control-plane LB, the pod
    network and the ingress once; the first phases are killed 20 times in test_lab_controlplane.py),
    each time run again; the final run leaves what the first, uninterrupted create left: every file
    bmctl manages on every node (content and mode, no temp file, kubeadm recorded as done), and the
    MetalLB objects, Traefik, its Service and Gateway, lbnode labels, node list and recorded config in
    the API."""
    import os
    import random
    import signal
    reference = lab.reference_state
    durations = phase_seconds(cluster[0].stdout)
    assert len(durations) == 8, cluster[0].stdout
    rng = random.Random(7)
    kills: list[tuple[int, float]] = []
    finished = 0
    for target in KILL_PHASES:
        while True:
            watched = Watched(lab)
            while watched.phase < target and watched.run.poll() is None:
                watched.seen.wait(0.05)
                watched.seen.clear()
            delay = rng.uniform(0, 0.9 * durations[target])
            time.sleep(delay)
            if watched.run.poll() is None:
                landed = watched.phase
                os.killpg(watched.run.pid, signal.SIGKILL)
                watched.run.wait()
                kills.append((landed, round(delay, 1)))
                break
            watched.run.wait()
            assert watched.run.returncode == 0, "".join(watched.lines) + watched.run.stderr.read()
            # finished before its kill: start over, so that the kill finds its phase's work to do
            finished += 1
            assert finished <= len(KILL_PHASES), "create keeps finishing before its kill"
            assert lab.bmctl("reset", "cluster", "--force", timeout=600).returncode == 0
    landed = sorted(p for p, _ in kills)
    print(f"uninterrupted create {lab.create_seconds:.1f} s (phases: {durations}); killed in phases {landed} "
          f"(phase, seconds into it: {kills}); {finished} run(s) finished before their kill")
    assert landed.count(4) >= 1 and landed.count(6) >= 1  # kubeadm and MetalLB were really interrupted
    proc = lab.bmctl("create", "cluster", timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    states = [{}]
    try:
        wait_for(lambda: states.append(managed_state(lab)) or states[-1] == reference, 60,
                 "the state of the uninterrupted create")
    except AssertionError:
        diff = {k: (reference.get(k), states[-1].get(k)) for k in {*reference, *states[-1]}
                if reference.get(k) != states[-1].get(k)}
        raise AssertionError(f"differs from the uninterrupted create (reference, now): {diff}") from None
    assert len(lab.vip_holders(NET.ip(10))) == 1
    again = lab.bmctl("create", "cluster", timeout=600)
    assert again.returncode == 0 and "0 file(s) changed" in again.stdout


# Files bmctl writes on a node, by folder of the lab's node state (kubeadm's own etcd and apiserver
# manifests list etcd members in the order etcd returns them, so they are not compared).
MANAGED = {"etc_haproxy": None, "etc_keepalived": None, "etc_kubernetes/bmctl": None, "etc_sysctl.d": None,
           "etc_modules-load.d": None, "etc_kubernetes/manifests": ("haproxy.yaml", "keepalived.yaml"),
           "var_lib_bmctl/kubeadm": ("done", "started")}


def managed_state(lab) -> dict:
    from kubernetes import client, config as kconfig
    from lab.harness import in_netns
    state: dict = {}
    for node in lab.nodes:
        base = lab.lab.state_dir / node["name"] / "fs"
        for folder, names in MANAGED.items():
            for f in sorted((base / folder).glob("*")) if (base / folder).is_dir() else []:
                if f.is_file() and (names is None or f.name in names or f.name.startswith(".bmctl.")):
                    # a reset cluster has a new CA, so the joins' CA hash differs by design
                    text = re.sub(rb"sha256:[0-9a-f]{64}", b"sha256:<ca hash>", f.read_bytes())
                    state[(node["name"], folder, f.name)] = (hashlib.sha256(text).hexdigest(),
                                                             oct(f.stat().st_mode & 0o7777))
    state["metallb"] = metallb_objects(lab)
    api = kconfig.new_client_from_config(config_file=str(lab.workspace / "lab" / "lab-kubeconfig"))
    core, apps = client.CoreV1Api(api), client.AppsV1Api(api)
    with in_netns(lab.client_ns):
        for n in core.list_node().items:
            state[("node", n.metadata.name)] = (n.metadata.labels or {}).get("baremetal.cluster.gke.io/lbnode")
        for d in [*apps.list_namespaced_daemon_set("metallb-system").items,
                  *apps.list_namespaced_deployment("metallb-system").items,
                  *apps.list_namespaced_daemon_set("bmctl-ingress").items]:
            state[("workload", d.metadata.name)] = [(c.image, c.args) for c in d.spec.template.spec.containers]
        svc = core.read_namespaced_service("traefik", "bmctl-ingress")
        state["ingress"] = (svc.spec.external_traffic_policy, dict(svc.metadata.annotations or {}),
                            [i.ip for i in svc.status.load_balancer.ingress or []])
        gw = client.CustomObjectsApi(api).get_namespaced_custom_object(
            "gateway.networking.k8s.io", "v1", "bmctl-ingress", "gateways", "bmctl-ingress")
        state["gateway"] = (gw["spec"], {c["type"]: c["status"] for c in gw["status"]["conditions"]})
        secret = core.read_namespaced_secret("memberlist", "metallb-system")
        state["memberlist"] = hashlib.sha256(repr(sorted(secret.data.items())).encode()).hexdigest()
        state["applied"] = core.read_namespaced_config_map("bmctl-applied-config", "kube-system").data["config.yaml"]
    return state
