"""The lab's stand-in for `kubeadm` (lab-only; installed as /usr/local/bin/kubeadm on lab nodes).

Real kubeadm needs a kubelet and container images, which cannot run here. This stand-in honours
the subset bmctl uses, with the same files as kubeadm where it matters:
  kubeadm init --config F [--upload-certs]   CA and certs in /etc/kubernetes/pki, static pods for a
                                             real etcd and kube-apiserver (bound to the node IP, port
                                             from localAPIEndpoint.bindPort), admin.conf and
                                             kubelet.conf pointing at controlPlaneEndpoint, the
                                             kube-proxy ConfigMap; waits for the API through the VIP.
  kubeadm join --config F                    control plane: etcd member add + local etcd and apiserver;
                                             any node: kubelet.conf.
  kubeadm reset [-f]                         removes what init/join made (etcd member first).
Shortcuts a real cluster would not take (documented, lab-only): etcd speaks plain HTTP on the lab
segment; joining nodes copy the CA from the lab's shared folder instead of the kubeadm-certs
Secret; node credentials are in system:masters (no Node authorizer).
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import ssl
import sys
import time
import urllib.request
from pathlib import Path

import yaml

from bmctl.lab import pki

ETC = Path("/etc/kubernetes")
PKI = ETC / "pki"
MANIFESTS = ETC / "manifests"
ETCD_DATA = Path("/var/lib/etcd")
NODE_INFO = ETC / "bmctl-lab-node.json"


def shared() -> Path:
    return Path(os.environ["BMCTL_LAB_SHARED"])


def fail(msg: str) -> None:
    print(f"kubeadm (lab stand-in): {msg}", file=sys.stderr)
    sys.exit(1)


def read_config(path: str) -> dict[str, dict]:
    docs = {}
    for doc in yaml.safe_load_all(Path(path).read_text()):
        if doc:
            docs[doc["kind"]] = doc
    return docs


def node_ip(docs: dict) -> str:
    for kind in ("InitConfiguration", "JoinConfiguration"):
        reg = docs.get(kind, {}).get("nodeRegistration", {})
        for arg in reg.get("kubeletExtraArgs", []):
            if arg["name"] == "node-ip":
                return arg["value"]
    fail("nodeRegistration.kubeletExtraArgs node-ip is required in the lab")
    return ""


def kubeconfig(path: Path, server: str, cn: str, org: str | None) -> None:
    import base64
    cert, key = pki.issue(PKI, f".{cn.replace(':', '_')}", cn, org)
    ca = (PKI / "ca.crt").read_bytes()
    doc = {"apiVersion": "v1", "kind": "Config", "current-context": "ctx",
           "clusters": [{"name": "lab", "cluster": {"server": server,
                                                     "certificate-authority-data": base64.b64encode(ca).decode()}}],
           "users": [{"name": "u", "user": {"client-certificate-data": base64.b64encode(cert).decode(),
                                            "client-key-data": base64.b64encode(key).decode()}}],
           "contexts": [{"name": "ctx", "context": {"cluster": "lab", "user": "u"}}]}
    for stem in (f".{cn.replace(':', '_')}.crt", f".{cn.replace(':', '_')}.key"):
        (PKI / stem).unlink(missing_ok=True)
    path.write_text(yaml.safe_dump(doc))
    path.chmod(0o600)


def pod(name: str, command: list[str], mounts: list[tuple[str, str]]) -> dict:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "kube-system", "labels": {"component": name, "tier": "control-plane"}},
            "spec": {"hostNetwork": True, "priorityClassName": "system-node-critical",
                     "containers": [{"name": name, "image": f"registry.k8s.io/{name}", "command": command,
                                     "volumeMounts": [{"name": f"v{i}", "mountPath": m} for i, (_, m) in enumerate(mounts)]}],
                     "volumes": [{"name": f"v{i}", "hostPath": {"path": h, "type": "DirectoryOrCreate"}}
                                 for i, (h, _) in enumerate(mounts)]}}


def write_manifest(name: str, doc: dict) -> None:
    MANIFESTS.mkdir(parents=True, exist_ok=True)
    tmp = MANIFESTS / f".{name}.tmp"
    tmp.write_text(yaml.safe_dump(doc, sort_keys=False))
    tmp.replace(MANIFESTS / f"{name}.yaml")


def etcd_pod(name: str, ip: str, initial_cluster: str, state: str) -> dict:
    return pod("etcd", ["/usr/local/bin/etcd", f"--name={name}", f"--data-dir={ETCD_DATA}",
                        f"--listen-client-urls=http://{ip}:2379,http://127.0.0.1:2379",
                        f"--advertise-client-urls=http://{ip}:2379", f"--listen-peer-urls=http://{ip}:2380",
                        f"--initial-advertise-peer-urls=http://{ip}:2380", f"--initial-cluster={initial_cluster}",
                        f"--initial-cluster-state={state}", "--listen-metrics-urls=http://127.0.0.1:2381"],
               [(str(ETCD_DATA), str(ETCD_DATA))])


def apiserver_pod(ip: str, port: int, service_cidr: str) -> dict:
    return pod("kube-apiserver", [
        "/usr/local/bin/kube-apiserver", f"--advertise-address={ip}", f"--bind-address={ip}", f"--secure-port={port}",
        "--etcd-servers=http://127.0.0.1:2379", f"--service-cluster-ip-range={service_cidr}",
        f"--tls-cert-file={PKI}/apiserver.crt", f"--tls-private-key-file={PKI}/apiserver.key",
        f"--client-ca-file={PKI}/ca.crt", f"--service-account-key-file={PKI}/sa.pub",
        f"--service-account-signing-key-file={PKI}/sa.key", "--service-account-issuer=https://kubernetes.default.svc",
        "--authorization-mode=RBAC", "--enable-bootstrap-token-auth=true", "--allow-privileged=true",
        "--enable-admission-plugins=NodeRestriction", "--profiling=false", "--endpoint-reconciler-type=lease",
    ], [(str(PKI), str(PKI))])


def wait_ready(url: str, timeout: float = 240) -> None:
    ctx = ssl.create_default_context(cafile=str(PKI / "ca.crt"))
    ctx.check_hostname = False
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/readyz", context=ctx, timeout=3) as resp:
                if resp.status == 200:
                    return
        except Exception as exc:  # noqa: BLE001
            last = str(exc)
        time.sleep(1)
    fail(f"{url} not ready after {timeout:.0f} s: {last}")


class _Soft(Exception):
    pass


def fail_soft(msg: str):
    raise _Soft(msg)


def retry(fn, timeout: float = 120, interval: float = 1.0):
    deadline = time.monotonic() + timeout
    while True:
        try:
            return fn()
        except (OSError, ValueError, KeyError, _Soft) as exc:
            if time.monotonic() > deadline:
                fail(f"gave up after {timeout:.0f} s: {exc}")
            time.sleep(interval)


def etcd_call(ip: str, path: str, body: dict) -> dict:
    req = urllib.request.Request(f"http://{ip}:2379{path}", data=json.dumps(body).encode(), method="POST")
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


def init(config: str) -> None:
    docs = read_config(config)
    init_cfg, cluster = docs["InitConfiguration"], docs["ClusterConfiguration"]
    if (ETC / "admin.conf").exists():
        fail("/etc/kubernetes/admin.conf exists: this node is already initialized")
    ip = node_ip(docs)
    port = init_cfg["localAPIEndpoint"]["bindPort"]
    endpoint = cluster["controlPlaneEndpoint"]
    service_cidr = cluster["networking"]["serviceSubnet"]
    PKI.mkdir(parents=True, exist_ok=True)
    pki.make_ca(PKI)
    pki.make_sa_keys(PKI)
    first_service_ip = str(next(iter(__import__("ipaddress").ip_network(service_cidr).hosts())))
    pki.issue(PKI, "apiserver", "kube-apiserver", None, [
        ip, first_service_ip, endpoint.rsplit(":", 1)[0].strip("[]"), *cluster["apiServer"].get("certSANs", []),
        "kubernetes", "kubernetes.default", "kubernetes.default.svc", socket.gethostname()], client=False, server=True)
    out = shared() / "pki"
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(PKI, out)
    (shared() / "cluster.json").write_text(json.dumps({"first_ip": ip, "endpoint": endpoint,
                                                         "service_cidr": service_cidr}))
    ETCD_DATA.mkdir(parents=True, exist_ok=True)
    name = socket.gethostname()
    write_manifest("etcd", etcd_pod(name, ip, f"{name}=http://{ip}:2380", "new"))
    write_manifest("kube-apiserver", apiserver_pod(ip, port, service_cidr))
    wait_ready(f"https://{ip}:{port}")
    kubeconfig(ETC / "admin.conf", f"https://{endpoint}", "kubernetes-admin", "system:masters")
    kubeconfig(ETC / "kubelet.conf", f"https://{endpoint}", f"system:node:{name}", "system:masters")
    NODE_INFO.write_text(json.dumps({"name": name, "ip": ip}))
    wait_ready(f"https://{endpoint}")
    proxy = docs.get("KubeProxyConfiguration", {"apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
                                                 "kind": "KubeProxyConfiguration"})
    _apply_configmap(endpoint, "kube-proxy", {"config.conf": yaml.safe_dump(proxy)})
    print(f"Your Kubernetes control-plane has initialized successfully (lab stand-in) on {name}")


def _apply_configmap(endpoint: str, name: str, data: dict) -> None:
    from kubernetes import client, config as kconfig
    api = client.CoreV1Api(kconfig.new_client_from_config(config_file=str(ETC / "admin.conf")))
    body = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": "kube-system"},
            "data": data}
    try:
        api.create_namespaced_config_map("kube-system", body)
    except client.ApiException as exc:
        if exc.status != 409:
            raise
        api.replace_namespaced_config_map(name, "kube-system", body)


def join(config: str) -> None:
    docs = read_config(config)
    join_cfg = docs["JoinConfiguration"]
    if (ETC / "kubelet.conf").exists():
        fail("/etc/kubernetes/kubelet.conf exists: this node has already joined")
    ip = node_ip(docs)
    endpoint = join_cfg["discovery"]["bootstrapToken"]["apiServerEndpoint"]
    cluster = json.loads((shared() / "cluster.json").read_text())
    PKI.mkdir(parents=True, exist_ok=True)
    for f in (shared() / "pki").iterdir():
        shutil.copy(f, PKI / f.name)
    name = socket.gethostname()
    if "controlPlane" in join_cfg:
        port = join_cfg["controlPlane"]["localAPIEndpoint"]["bindPort"]
        pki.issue(PKI, "apiserver", "kube-apiserver", None, [
            ip, endpoint.rsplit(":", 1)[0].strip("[]"), "kubernetes", "kubernetes.default", "kubernetes.default.svc",
            name], client=False, server=True)
        peer = f"http://{ip}:2380"
        listed = retry(lambda: etcd_call(cluster["first_ip"], "/v3/cluster/member/list", {}))["members"]
        if not any(peer in m.get("peerURLs", []) for m in listed):
            # etcd refuses a new member while the last one added is not healthy yet: retry
            listed = retry(lambda: etcd_call(cluster["first_ip"], "/v3/cluster/member/add",
                                             {"peerURLs": [peer]}))["members"]
        members = []
        for m in listed:
            mname = m.get("name") or name
            members += [f"{mname}={u}" for u in m.get("peerURLs", [])]
        ETCD_DATA.mkdir(parents=True, exist_ok=True)
        write_manifest("etcd", etcd_pod(name, ip, ",".join(members), "existing"))
        retry(lambda: json.loads(urllib.request.urlopen(f"http://{ip}:2379/health", timeout=3).read())["health"]
              == "true" or fail_soft("etcd not healthy yet"), timeout=180)
        write_manifest("kube-apiserver", apiserver_pod(ip, port, cluster["service_cidr"]))
        wait_ready(f"https://{ip}:{port}")
        kubeconfig(ETC / "admin.conf", f"https://{endpoint}", "kubernetes-admin", "system:masters")
    kubeconfig(ETC / "kubelet.conf", f"https://{endpoint}", f"system:node:{name}", "system:masters")
    for key in ("ca.key", "sa.key", "sa.pub") if "controlPlane" not in join_cfg else ():
        (PKI / key).unlink(missing_ok=True)
    NODE_INFO.write_text(json.dumps({"name": name, "ip": ip}))
    print(f"This node has joined the cluster (lab stand-in): {name}")


def _manifest_ip() -> str | None:
    """The node IP of a local etcd member, from its manifest (a join cut short has no NODE_INFO yet)."""
    try:
        command = yaml.safe_load((MANIFESTS / "etcd.yaml").read_text())["spec"]["containers"][0]["command"]
    except (OSError, KeyError, IndexError, TypeError, yaml.YAMLError):
        return None
    for arg in command:
        if arg.startswith("--initial-advertise-peer-urls=http://"):
            return arg.split("//", 1)[1].rsplit(":", 1)[0]
    return None


def reset() -> None:
    info = json.loads(NODE_INFO.read_text()) if NODE_INFO.exists() else {}
    if not info.get("ip"):
        info["ip"] = _manifest_ip()
    if (MANIFESTS / "etcd.yaml").exists() and info.get("ip"):
        try:
            cluster = json.loads((shared() / "cluster.json").read_text())
            members = etcd_call(cluster["first_ip"], "/v3/cluster/member/list", {})["members"]
            for m in members:
                if f"http://{info['ip']}:2380" in m.get("peerURLs", []) and info["ip"] != cluster["first_ip"]:
                    etcd_call(cluster["first_ip"], "/v3/cluster/member/remove", {"ID": m["ID"]})
        except Exception:  # noqa: BLE001 - best effort, like kubeadm reset
            pass
    for name in ("etcd", "kube-apiserver"):
        (MANIFESTS / f"{name}.yaml").unlink(missing_ok=True)
    for path in (ETC / "admin.conf", ETC / "kubelet.conf", NODE_INFO):
        path.unlink(missing_ok=True)
    shutil.rmtree(PKI, ignore_errors=True)
    shutil.rmtree(ETCD_DATA, ignore_errors=True)
    print("reset done (lab stand-in)")


def main(argv: list[str]) -> None:
    if not argv:
        fail("usage: kubeadm init|join|reset --config FILE")
    cmd, rest = argv[0], argv[1:]
    cfg = rest[rest.index("--config") + 1] if "--config" in rest else None
    if cmd == "version":
        print("kubeadm lab stand-in")
    elif cmd == "init" and cfg:
        init(cfg)
    elif cmd == "join" and cfg:
        join(cfg)
    elif cmd == "reset":
        reset()
    else:
        fail(f"unsupported arguments: {' '.join(argv)}")


if __name__ == "__main__":
    main(sys.argv[1:])
