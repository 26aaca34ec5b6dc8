"""What a running cluster is, read from it: the one place `check cluster` (and later the resume logic
of upgrade and update) reads node versions, static pods, etcd's members and health, certificates,
the VIP's holder and MetalLB's announcements. Nothing here changes anything.

Two sources: the Kubernetes API through the VIP (bmctl.kube) and the nodes over SSH (bmctl.host).
Each reader returns plain data, or raises; the caller decides what is healthy.
"""
from __future__ import annotations

import datetime
import json
import re
import shlex
from dataclasses import dataclass, field

from bmctl.host import Host
from bmctl.kube import Kube

ETCD_DEFAULT_QUOTA = 2 * 1024 ** 3  # etcd's default --quota-backend-bytes (2 GiB)
ETCD_MANIFEST = "/etc/kubernetes/manifests/etcd.yaml"
# etcdctl inside the etcd static pod's container (upstream's etcd image and the lab's both carry it at
# /usr/local/bin), with the client certificate kubeadm makes for health checks.
ETCDCTL = ["etcdctl", "--endpoints=https://127.0.0.1:2379", "--cacert=/etc/kubernetes/pki/etcd/ca.crt",
           "--cert=/etc/kubernetes/pki/etcd/healthcheck-client.crt",
           "--key=/etc/kubernetes/pki/etcd/healthcheck-client.key", "--command-timeout=5s"]
CRICTL = ["crictl", "--runtime-endpoint", "unix:///run/containerd/containerd.sock", "--timeout", "5s"]


@dataclass
class NodeState:
    name: str
    ip: str
    ready: bool
    why_not_ready: str
    kubelet: str
    runtime: str        # containerd://2.2.9
    pod_cidr: str | None
    network_unavailable: bool


def nodes(kube: Kube) -> dict[str, NodeState]:
    """Every registered node by its InternalIP."""
    found = {}
    for node in kube.core().list_node().items:
        ip = next((a.address for a in node.status.addresses or [] if a.type == "InternalIP"), None)
        if ip is None:
            continue
        conds = {c.type: c for c in node.status.conditions or []}
        ready = conds.get("Ready")
        info = node.status.node_info
        found[ip] = NodeState(
            name=node.metadata.name, ip=ip, ready=bool(ready and ready.status == "True"),
            why_not_ready=(f"{ready.reason or ''}: {ready.message or ''}".strip(": ") if ready else "no Ready condition"),
            kubelet=info.kubelet_version if info else "", runtime=info.container_runtime_version if info else "",
            pod_cidr=node.spec.pod_cidr, network_unavailable=bool(
                conds.get("NetworkUnavailable") and conds["NetworkUnavailable"].status == "True"))
    return found


@dataclass
class PodState:
    name: str
    node: str
    phase: str
    ready: bool
    restarts: int


def _pod_state(pod) -> PodState:
    statuses = pod.status.container_statuses or []
    return PodState(name=pod.metadata.name, node=pod.spec.node_name or "", phase=pod.status.phase or "Unknown",
                    ready=any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions or []),
                    restarts=sum(c.restart_count or 0 for c in statuses))


def static_pods(kube: Kube) -> dict[tuple[str, str], PodState]:
    """kube-system's mirror pods (the kubelet's static pods) by (component, node name); the component
    is the pod's name without `-NODE`."""
    found = {}
    for pod in kube.core().list_namespaced_pod("kube-system").items:
        if "kubernetes.io/config.mirror" not in (pod.metadata.annotations or {}):
            continue
        node = pod.spec.node_name or ""
        component = pod.metadata.name[: -len(node) - 1] if node and pod.metadata.name.endswith("-" + node) \
            else pod.metadata.name
        found[(component, node)] = _pod_state(pod)
    return found


def pods(kube: Kube, namespace: str, selector: str) -> list[PodState]:
    return [_pod_state(p) for p in kube.core().list_namespaced_pod(namespace, label_selector=selector).items]


def get(kube: Kube, api_version: str, kind: str, name: str | None = None, namespace: str | None = None):
    """A live object (dict) or a list of them (name None); None when its kind or it does not exist."""
    import bmctl.kube as kubeapi
    from kubernetes.dynamic.exceptions import ResourceNotFoundError
    try:
        resource = kube.dynamic.resources.get(api_version=api_version, kind=kind)
        if name is None:
            return [i.to_dict() for i in resource.get(namespace=namespace).items]
        return resource.get(name=name, namespace=namespace).to_dict()
    except ResourceNotFoundError:
        return None
    except kubeapi.ApiException as exc:
        if exc.status == 404:
            return None
        raise


# -- over SSH --------------------------------------------------------------------------------------

@dataclass
class EtcdState:
    """What one control-plane node's etcd says of the whole etcd cluster."""
    node: str                                   # the address asked
    error: str = ""                             # why it could not be asked
    members: list[dict] = field(default_factory=list)    # {name, id, peerURLs, clientURLs, isLearner}
    endpoints: list[dict] = field(default_factory=list)  # {endpoint, id, leader, dbSize, error}
    health: list[dict] = field(default_factory=list)     # {endpoint, health, error}
    alarms: list[str] = field(default_factory=list)
    quota: int = ETCD_DEFAULT_QUOTA


def _etcd_script() -> str:
    """One round trip: the etcd container's id, then etcdctl's member list, endpoint status and health
    (whole cluster) and alarms, each on its own marked section; the manifest's quota flag."""
    exec_ = " ".join(shlex.quote(a) for a in CRICTL) + ' exec "$id" ' + " ".join(shlex.quote(a) for a in ETCDCTL)
    return f"""set -u
id=$({' '.join(shlex.quote(a) for a in CRICTL)} ps -q --name '^etcd$' --state running 2>/dev/null | head -n1)
[ -n "$id" ] || {{ echo "NO-CONTAINER"; exit 0; }}
echo "== members"; {exec_} member list -w json 2>&1
echo "== status"; {exec_} endpoint status --cluster -w json 2>&1
echo "== health"; {exec_} endpoint health --cluster -w json 2>&1
echo "== alarms"; {exec_} alarm list 2>&1
echo "== quota"; grep -o -- '--quota-backend-bytes=[0-9]*' {ETCD_MANIFEST} 2>/dev/null || true
"""


def sections(text: str) -> dict[str, str]:
    """A script's output cut at its `== NAME` lines: {NAME: the lines after it}."""
    found: dict[str, list[str]] = {}
    current = None
    for line in text.splitlines():
        if line.startswith("== "):
            current = line[3:].strip()
            found[current] = []
        elif current is not None:
            found[current].append(line)
    return {k: "\n".join(v).strip() for k, v in found.items()}


def _json(text: str, kind: type = dict):
    """The one-line JSON document of type `kind` in a command's output: etcdctl's log lines (JSON
    objects with a "level") and plain error lines around it are skipped."""
    for line in text.splitlines():
        line = line.strip()
        if not line.startswith(("{", "[")):
            continue
        try:
            doc = json.loads(line)
        except ValueError:
            continue
        if isinstance(doc, kind) and not (isinstance(doc, dict) and "level" in doc and "msg" in doc):
            return doc
    return None


def _error(text: str) -> str:
    """The last line of a command's output that says what went wrong."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for line in reversed(lines):
        try:
            doc = json.loads(line)
            if isinstance(doc, dict) and doc.get("error"):
                return str(doc["error"])[-300:]
        except ValueError:
            return line[-300:]
    return lines[-1][-300:] if lines else "no output"


def etcd(host: Host) -> EtcdState:
    state = EtcdState(node=host.address)
    res = host.run(["sh", "-c", _etcd_script()], step="ask etcd (etcdctl in its container)", check=False, timeout=40)
    if "NO-CONTAINER" in res.stdout:
        state.error = "no running etcd container on this node"
        return state
    parts = sections(res.stdout)
    members = _json(parts.get("members", ""))
    if not isinstance(members, dict):
        state.error = f"etcdctl member list failed: {_error(parts.get('members', '') or res.stderr)}"
        return state
    state.members = [{"name": m.get("name", ""), "id": f"{m.get('ID', 0):x}", "peerURLs": m.get("peerURLs", []),
                      "clientURLs": m.get("clientURLs", []), "isLearner": bool(m.get("isLearner"))}
                     for m in members.get("members", [])]
    status = _json(parts.get("status", ""), list)
    for entry in status if isinstance(status, list) else []:
        st = entry.get("Status", {})
        state.endpoints.append({"endpoint": entry.get("Endpoint", ""), "id": f"{st.get('header', {}).get('member_id', 0):x}",
                                "leader": f"{st.get('leader', 0):x}", "dbSize": int(st.get("dbSize", 0)),
                                "errors": st.get("errors", [])})
    if not isinstance(status, list) or re.search(r"\bError\b|failed", parts.get("status", "")):
        # with a member down, etcdctl prints what it got for the others and an error for that one
        state.endpoints.append({"endpoint": "", "id": "", "leader": "", "dbSize": 0,
                                "errors": [_error(parts.get("status", ""))]})
    health = _json(parts.get("health", ""), list)
    for entry in health if isinstance(health, list) else []:
        state.health.append({"endpoint": entry.get("endpoint", ""), "health": bool(entry.get("health")),
                             "error": entry.get("error", "")})
    if not isinstance(health, list):
        state.health.append({"endpoint": "", "health": False, "error": _error(parts.get("health", ""))})
    state.alarms = [line.strip() for line in parts.get("alarms", "").splitlines() if "alarm:" in line]
    quota = re.search(r"=(\d+)", parts.get("quota", ""))
    if quota and int(quota.group(1)) > 0:
        state.quota = int(quota.group(1))
    return state


@dataclass
class CertState:
    name: str
    expires: datetime.datetime | None
    days: float | None
    missing: bool
    external: bool
    authority: bool


def certificates(host: Host) -> list[CertState] | str:
    """`kubeadm certs check-expiration -o json` on a control-plane node (its certificates and its
    authorities), or why it could not be read."""
    argv = ["kubeadm", "certs", "check-expiration", "-o", "json"]
    res = host.run(argv, step="read certificate expiry", check=False, timeout=60)
    if res.rc != 0:  # it reads kubeadm's configuration from the cluster: without an API, from the node's file
        from bmctl.render.kubeadm import KUBEADM_CONFIG
        res = host.run([*argv, "--config", KUBEADM_CONFIG], step="read certificate expiry", check=False, timeout=60)
    data = _json(" ".join(res.stdout.split()) if res.stdout.lstrip().startswith("{") else res.stdout)
    if res.rc != 0 or not isinstance(data, dict):
        return (res.stderr.strip() or res.stdout.strip())[-300:] or f"kubeadm exited {res.rc}"
    now = datetime.datetime.now(datetime.timezone.utc)
    found = []
    for key, authority in (("certificates", False), ("certificateAuthorities", True)):
        for c in data.get(key) or []:
            expires = None
            try:
                expires = datetime.datetime.fromisoformat(str(c.get("expirationDate", "")).replace("Z", "+00:00"))
            except ValueError:
                pass
            found.append(CertState(name=c.get("name", "?"), expires=expires,
                                   days=(expires - now).total_seconds() / 86400 if expires else None,
                                   missing=bool(c.get("missing")), external=bool(c.get("externallyManaged")),
                                   authority=authority))
    return found


def holds(host: Host, address: str) -> bool:
    """The node has `address` on one of its interfaces."""
    res = host.run(["ip", "-j", "addr", "show"], step="read addresses", sudo=False)
    return any(a.get("local") == address for link in json.loads(res.stdout or "[]") for a in link.get("addr_info", []))


def http_code(host: Host, url: str) -> str | None:
    """The HTTP status `url` answers with, asked from the node (None: no answer)."""
    res = host.run(["curl", "-sg", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "3", url],
                   step="HTTP request", sudo=False, check=False)
    code = res.stdout.strip()
    return code if code.isdigit() and code != "000" else None
