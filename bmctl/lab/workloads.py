"""The lab's kubelet stand-in, cluster side (lab-only): what a kubelet, the scheduler and the
controller-manager would do for the few workloads bmctl relies on.

Once kubeadm (the lab stand-in) has joined the node, this agent, running in the node's namespaces:
- registers the Node (InternalIP = the node IP, Ready, labels as a kubelet sets them) and renews it;
- runs kube-proxy (the real binary) with the cluster's kube-proxy ConfigMap;
- for every DaemonSet whose pod nodeSelector matches this Node's labels (as read from the API: a
  missing lbnode label means no speaker), and for every Deployment whose pod the stand-in places on
  this node (the first matching node by name), runs the container as a process (images map to the
  binaries built from their Go modules) with its env, args and volumes, and keeps a Pod object with
  its status (Running, Ready, podIP = hostIP: these are hostNetwork or host-run processes);
- on the first control-plane node, keeps an EndpointSlice for every Service with a selector, from
  the Ready pods that match it, and a `default` ServiceAccount in every namespace (the parts of the
  controller-manager the tests rely on).
"""
from __future__ import annotations

import base64
import datetime
import hashlib
import json
import threading
import time
import urllib.request
from pathlib import Path

import yaml

from bmctl.lab.kubelet import Container, Runner

ETC = Path("/etc/kubernetes")
NODE_INFO = ETC / "bmctl-lab-node.json"
# Image -> the binary built from its Go module, under the name the image runs it as.
IMAGES = {"quay.io/metallb/controller": "/usr/local/bin/controller",
          "quay.io/metallb/speaker": "/usr/local/bin/speaker"}
MANAGED_BY = "bmctl-lab-standin"


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _binary(image: str) -> str | None:
    return IMAGES.get(image.rsplit(":", 1)[0])


def _matches(selector: dict | None, labels: dict) -> bool:
    return all(labels.get(k) == v for k, v in (selector or {}).items())


class ClusterAgent:
    def __init__(self, runner: Runner, state_dir: Path) -> None:
        self.runner = runner
        self.state_dir = state_dir
        self.core = None
        self.apps = None
        self.discovery = None
        self.info: dict = {}
        self.last_heartbeat = 0.0

    # -- API -------------------------------------------------------------------------------------
    def connect(self) -> bool:
        if self.core is not None:
            return True
        if not NODE_INFO.exists() or not (ETC / "kubelet.conf").exists():
            return False
        from kubernetes import client, config as kconfig

        from bmctl.kube import with_default_timeout
        api = with_default_timeout(kconfig.new_client_from_config(config_file=str(ETC / "kubelet.conf")), (5, 10))
        self.core, self.apps, self.discovery = client.CoreV1Api(api), client.AppsV1Api(api), client.DiscoveryV1Api(api)
        self.info = json.loads(NODE_INFO.read_text())
        return True

    def register(self) -> dict:
        from kubernetes.client import ApiException
        name, ip = self.info["name"], self.info["ip"]
        labels = {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64"}
        if (ETC / "manifests" / "kube-apiserver.yaml").exists():
            labels["node-role.kubernetes.io/control-plane"] = ""
        try:
            node = self.core.read_node(name)
        except ApiException as exc:
            if exc.status != 404:
                raise
            node = self.core.create_node({"apiVersion": "v1", "kind": "Node",
                                          "metadata": {"name": name, "labels": labels}})
        missing = {k: v for k, v in labels.items() if (node.metadata.labels or {}).get(k) != v}
        if missing:
            node = self.core.patch_node(name, {"metadata": {"labels": missing}})
        if time.monotonic() - self.last_heartbeat > 10:
            now = _now()
            self.core.patch_node_status(name, {"status": {
                "addresses": [{"type": "InternalIP", "address": ip}, {"type": "Hostname", "address": name}],
                "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                                "message": "lab kubelet stand-in", "lastHeartbeatTime": now,
                                "lastTransitionTime": now}],
                "nodeInfo": {"kubeletVersion": "lab-standin", "operatingSystem": "linux", "architecture": "amd64",
                             "machineID": "", "systemUUID": "", "bootID": "", "kernelVersion": "",
                             "osImage": "", "containerRuntimeVersion": "", "kubeProxyVersion": ""}}})
            self.last_heartbeat = time.monotonic()
        return node.metadata.labels or {}

    # -- workloads -------------------------------------------------------------------------------
    def desired(self, labels: dict) -> dict[str, tuple[str, dict, dict]]:
        """pod name -> (namespace, pod template, owner) for what should run on this node."""
        name = self.info["name"]
        out = {}
        for ds in self.apps.list_daemon_set_for_all_namespaces().items:
            tmpl = self.apps.api_client.sanitize_for_serialization(ds.spec.template)
            if _matches(tmpl["spec"].get("nodeSelector"), labels):
                out[f"{ds.metadata.name}-{name}"] = (ds.metadata.namespace, tmpl, {"kind": "DaemonSet", "name": ds.metadata.name})
        nodes = None
        for dep in self.apps.list_deployment_for_all_namespaces().items:
            tmpl = self.apps.api_client.sanitize_for_serialization(dep.spec.template)
            if not any(_binary(c["image"]) for c in tmpl["spec"]["containers"]):
                continue
            if nodes is None:
                nodes = sorted((n.metadata.name, n.metadata.labels or {}) for n in self.core.list_node().items)
            chosen = next((n for n, l in nodes if _matches(tmpl["spec"].get("nodeSelector"), l)), None)
            if chosen == name:
                digest = hashlib.sha256(json.dumps(tmpl, sort_keys=True).encode()).hexdigest()[:10]
                out[f"{dep.metadata.name}-{digest}"] = (dep.metadata.namespace, tmpl,
                                                         {"kind": "Deployment", "name": dep.metadata.name})
        return out

    def container(self, pod_name: str, namespace: str, tmpl: dict) -> list[Container]:
        out = []
        spec = tmpl["spec"]
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for c in spec["containers"]:
            binary = _binary(c["image"])
            if binary is None:
                continue
            env = {}
            for e in c.get("env", []):
                if "value" in e:
                    env[e["name"]] = e["value"]
                elif "valueFrom" in e and "fieldRef" in e["valueFrom"]:
                    field = e["valueFrom"]["fieldRef"]["fieldPath"]
                    env[e["name"]] = {"spec.nodeName": self.info["name"], "metadata.name": pod_name,
                                      "metadata.namespace": namespace, "status.podIP": self.info["ip"],
                                      "status.hostIP": self.info["ip"]}.get(field, "")
            mounts = []
            args = list(c.get("args", []))
            for m in c.get("volumeMounts", []):
                vol = volumes.get(m["name"], {})
                if "secret" in vol:
                    # Secret volumes are written to a folder of the node's state, and paths in env and
                    # args that point into the mountPath are rewritten to it (no mount over /etc).
                    folder = self.state_dir / "volumes" / pod_name / m["name"]
                    folder.mkdir(parents=True, exist_ok=True)
                    secret = self.core.read_namespaced_secret(vol["secret"]["secretName"], namespace)
                    for k, v in (secret.data or {}).items():
                        (folder / k).write_bytes(base64.b64decode(v))
                    env = {k: v.replace(m["mountPath"], str(folder)) for k, v in env.items()}
                    args = [a.replace(m["mountPath"], str(folder)) for a in args]
                elif "hostPath" in vol:
                    mounts.append((vol["hostPath"]["path"], m["mountPath"], bool(m.get("readOnly"))))
            argv = [binary, *args, f"--kubeconfig={ETC / 'kubelet.conf'}"]
            digest = hashlib.sha256(json.dumps([argv, env, mounts]).encode()).hexdigest()
            out.append(Container(pod_name, c["name"], argv, mounts, digest, env=env))
        return out

    def ready(self, pod_name: str, tmpl: dict) -> bool:
        """Every container runs, and answers its readinessProbe (httpGet) when it has one."""
        for c in tmpl["spec"]["containers"]:
            if _binary(c["image"]) is None:
                continue
            running = self.runner.containers.get(f"{pod_name}_{c['name']}")
            if running is None or running.proc is None or running.proc.poll() is not None:
                return False
            probe = (c.get("readinessProbe") or {}).get("httpGet")
            if probe:
                port = probe["port"]
                if isinstance(port, str):
                    port = next(p["containerPort"] for p in c.get("ports", []) if p.get("name") == port)
                try:
                    with urllib.request.urlopen(f"http://{self.info['ip']}:{port}{probe.get('path', '/')}",
                                                timeout=1) as resp:
                        if resp.status >= 400:
                            return False
                except OSError:
                    return False
        return True

    def ensure_pod(self, pod_name: str, namespace: str, tmpl: dict, owner: dict) -> None:
        from kubernetes.client import ApiException
        ip = self.info["ip"]
        ready = "True" if self.ready(pod_name, tmpl) else "False"
        body = {"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": pod_name, "namespace": namespace, "labels": tmpl["metadata"].get("labels", {}),
                             "annotations": {"bmctl.io/lab-standin-owner": f"{owner['kind']}/{owner['name']}"}},
                "spec": {**tmpl["spec"], "nodeName": self.info["name"]}}
        try:
            self.core.read_namespaced_pod(pod_name, namespace)
        except ApiException as exc:
            if exc.status != 404:
                raise
            self.core.create_namespaced_pod(namespace, body)
        now = _now()
        self.core.patch_namespaced_pod_status(pod_name, namespace, {"status": {
            "phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}], "hostIP": ip, "startTime": now,
            "conditions": [{"type": t, "status": "True" if t in ("PodScheduled", "Initialized") else ready,
                            "lastTransitionTime": now}
                           for t in ("PodScheduled", "Initialized", "ContainersReady", "Ready")]}})

    def delete_pod(self, pod_name: str, namespace: str) -> None:
        from kubernetes.client import ApiException
        try:
            self.core.delete_namespaced_pod(pod_name, namespace, grace_period_seconds=0)
        except ApiException as exc:
            if exc.status != 404:
                raise

    # -- endpoints -------------------------------------------------------------------------------
    def endpoint_slices(self) -> None:
        for svc in self.core.list_service_for_all_namespaces().items:
            if not svc.spec.selector or svc.metadata.name == "kubernetes":
                continue
            sel = ",".join(f"{k}={v}" for k, v in svc.spec.selector.items())
            pods = self.core.list_namespaced_pod(svc.metadata.namespace, label_selector=sel).items
            endpoints = [{"addresses": [p.status.pod_ip], "conditions": {"ready": True},
                          "nodeName": p.spec.node_name}
                         for p in pods if p.status and p.status.pod_ip and any(
                             c.type == "Ready" and c.status == "True" for c in (p.status.conditions or []))]
            ports = [{"name": p.name or "", "protocol": p.protocol,
                      "port": p.target_port if isinstance(p.target_port, int) else p.port}
                     for p in svc.spec.ports or []]
            body = {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
                    "metadata": {"name": f"{svc.metadata.name}-lab", "namespace": svc.metadata.namespace,
                                 "labels": {"kubernetes.io/service-name": svc.metadata.name,
                                            "endpointslice.kubernetes.io/managed-by": MANAGED_BY}},
                    "endpoints": endpoints, "ports": ports}
            from kubernetes.client import ApiException
            try:
                current = self.discovery.read_namespaced_endpoint_slice(body["metadata"]["name"], svc.metadata.namespace)
                old = self.discovery.api_client.sanitize_for_serialization(current)
                if old.get("endpoints") != endpoints or old.get("ports") != ports:
                    self.discovery.replace_namespaced_endpoint_slice(body["metadata"]["name"], svc.metadata.namespace, body)
            except ApiException as exc:
                if exc.status != 404:
                    raise
                self.discovery.create_namespaced_endpoint_slice(svc.metadata.namespace, body)

    def default_service_accounts(self) -> None:
        """The controller-manager's ServiceAccount controller: a `default` account per namespace."""
        from kubernetes.client import ApiException
        have = {sa.metadata.namespace for sa in self.core.list_service_account_for_all_namespaces(
            field_selector="metadata.name=default").items}
        for ns in self.core.list_namespace().items:
            if ns.metadata.name not in have and ns.status.phase == "Active":
                try:
                    self.core.create_namespaced_service_account(ns.metadata.name, {"metadata": {"name": "default"}})
                except ApiException as exc:
                    if exc.status != 409:
                        raise

    # -- loop ------------------------------------------------------------------------------------
    def kube_proxy(self) -> list[Container]:
        try:
            cm = self.core.read_namespaced_config_map("kube-proxy", "kube-system")
        except Exception:  # noqa: BLE001 - not there yet
            return []
        cfg = yaml.safe_load(cm.data["config.conf"]) or {}
        cfg.setdefault("clientConnection", {})["kubeconfig"] = str(ETC / "kubelet.conf")
        cfg["hostnameOverride"] = self.info["name"]
        cfg.setdefault("conntrack", {})["maxPerCore"] = 0
        path = self.state_dir / "kube-proxy.yaml"
        text = yaml.safe_dump(cfg)
        if not path.exists() or path.read_text() != text:
            path.write_text(text)
        argv = ["/usr/local/bin/kube-proxy", f"--config={path}"]
        return [Container("kube-proxy", "kube-proxy", argv, [], hashlib.sha256(text.encode()).hexdigest())]

    def sync_once(self) -> list[Container]:
        if self.core is not None and not (ETC / "kubelet.conf").exists():
            self.core = None  # kubeadm reset: this node left the cluster; stop what ran for it
        if not self.connect():
            return []
        labels = self.register()
        containers = self.kube_proxy()
        wanted = self.desired(labels)
        mine = {p.metadata.name: p.metadata.namespace for p in self.core.list_pod_for_all_namespaces(
            field_selector=f"spec.nodeName={self.info['name']}").items
            if (p.metadata.annotations or {}).get("bmctl.io/lab-standin-owner")}
        for pod_name, (ns, tmpl, owner) in wanted.items():
            self.ensure_pod(pod_name, ns, tmpl, owner)
            containers += self.container(pod_name, ns, tmpl)
        for pod_name, ns in mine.items():
            if pod_name not in wanted:
                self.delete_pod(pod_name, ns)
        leader = sorted(n.metadata.name for n in self.core.list_node().items
                        if "node-role.kubernetes.io/control-plane" in (n.metadata.labels or {}))
        if leader and leader[0] == self.info["name"]:
            self.endpoint_slices()
            self.default_service_accounts()
        return containers

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                self.runner.cluster_containers = {c.key: c for c in self.sync_once()}
            except Exception as exc:  # noqa: BLE001 - the API may be down (that is a test case); retry
                with open(self.state_dir / "cluster-agent.log", "a") as fh:
                    fh.write(f"{time.strftime('%H:%M:%S')} {type(exc).__name__}: {str(exc)[:500]}\n")
            stop.wait(1.0)
